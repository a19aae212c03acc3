"""`merino-edge eval`: zero-shot accuracy of a bundle with lm-evaluation-harness.

`evaluate` runs the tasks of `merino_edge.evaluation.tasks` on the runtime
backend through the `merino-edge` lm-eval model and returns an `EvalReport`:
one row per (task, metric) with its stderr and, for the paper's nine tasks,
MeRino-61M's figure from Table 2 beside it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from merino_edge.errors import InputError
from merino_edge.evaluation.tasks import PAPER_61M_AVERAGE, PAPER_TASKS, TASKS, resolve, task_names
from merino_edge.fileio import check_schema

SCHEMA_VERSION = 1
DEFAULT_BOOTSTRAP_ITERS = 1000  # lm-eval's default is 100000: minutes of CPU for lambada's perplexity on a board


@dataclass(frozen=True)
class ScoreRow:
    """One metric of one task."""

    task: str
    metric: str
    value: float
    stderr: float | None
    samples: int
    paper_61m: float | None = None


@dataclass
class EvalReport:
    """What `merino-edge eval` measured, and on what."""

    bundle: str
    backend: str
    precision: str
    source: str  # "local:DIR" or "hub"
    limit: int | None
    rows: list[ScoreRow] = field(default_factory=list)
    lm_eval_version: str = ""
    schema_version: int = SCHEMA_VERSION

    def value(self, task: str, metric: str = "acc") -> float:
        for row in self.rows:
            if row.task == task and row.metric == metric:
                return row.value
        raise KeyError(f"{task}/{metric}")

    def paper_average(self) -> float | None:
        """Mean accuracy over the paper's nine tasks, when all of them were run."""
        accs = {r.task: r.value for r in self.rows if r.metric == "acc" and r.task in PAPER_TASKS}
        return sum(accs.values()) / len(accs) if len(accs) == len(PAPER_TASKS) else None

    def table(self) -> str:
        """A Table-2-like text table: task, metric, value, stderr, samples, the paper's MeRino-61M."""

        def num(x: float | None) -> str:
            if x is None or math.isnan(x):
                return "-"
            return f"{x:.4f}" if abs(x) < 1e4 else f"{x:.3e}"  # a perplexity can be huge

        lines = [f"{'task':<16} {'metric':<11} {'value':>9} {'stderr':>8} {'n':>6}   {'paper MeRino-61M':>16}"]
        for r in self.rows:
            lines.append(f"{r.task:<16} {r.metric:<11} {num(r.value):>9} {num(r.stderr):>8} {r.samples:>6}   {num(r.paper_61m):>16}")
        average = self.paper_average()
        if average is not None:
            lines.append(f"{'average (9)':<16} {'acc':<11} {num(average):>9} {'':>8} {'':>6}   {num(PAPER_61M_AVERAGE):>16}")
        limit = f", first {self.limit} items per task" if self.limit else ""
        lines.append(f"({self.backend} {self.precision}, data {self.source}{limit}; lm-eval {self.lm_eval_version})")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> EvalReport:
        check_schema(data, "eval report", SCHEMA_VERSION)
        fields = {k: v for k, v in data.items() if k != "rows"}
        return cls(**fields, rows=[ScoreRow(**r) for r in data["rows"]])


def _rows(results: dict, names: list[str], hub_names: dict[str, str]) -> list[ScoreRow]:
    """lm-eval's results dict -> rows in the order the tasks were asked for."""
    rows = []
    for name in names:
        key = hub_names.get(name, name)
        metrics = results["results"][key]
        samples = int(results["n-samples"][key]["effective"])
        for label, value in metrics.items():
            metric, _, _ = label.partition(",")
            if metric in ("alias", "name", "sample_len") or metric.endswith("_stderr"):
                continue
            stderr = metrics.get(label.replace(",", "_stderr,", 1))
            paper = TASKS[name].paper_61m if metric == "acc" else None
            rows.append(ScoreRow(name, metric, float(value), float(stderr) if isinstance(stderr, (int, float)) else None, samples, paper))
    return rows


def evaluate(
    bundle_dir: str | Path,
    tasks: str | list[str] = "paper",
    backend: str = "auto",
    limit: int | None = None,
    data_dir: str | Path | None = None,
    *,
    batch_size: int = 8,
    threads: int | None = None,
    provider: str | None = None,
    precision: str | None = None,
    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
) -> EvalReport:
    """Zero-shot scores of the bundle at `bundle_dir` on `tasks` (names or groups, see `task_names`).

    Data comes from `data_dir` (else $MERINO_EDGE_EVAL_DATA), or from the
    Hugging Face hub through lm-eval's own tasks when neither is set and the
    hub is reachable; otherwise InputError says where data is expected.
    `limit` keeps the first N items of each task.
    """
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be a positive number of items, got {limit}")
    names = task_names(tasks)
    configs, source = resolve(names, data_dir)  # before loading the model: fail fast on missing data

    from importlib.metadata import version

    from lm_eval.evaluator import evaluate as lm_eval_evaluate
    from lm_eval.tasks import TaskManager

    from merino_edge.runtime.lm_eval_adapter import MerinoEdgeLM

    lm = MerinoEdgeLM(bundle_dir, backend, batch_size=batch_size, threads=threads, provider=provider, precision=precision)
    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        # lm-eval's `evaluate`, not `simple_evaluate`: the latter imports torch and transformers
        # (when installed) just to record their versions, and the runtime needs neither.
        loaded = TaskManager(include_defaults=source == "hub").load(configs)
        for task in loaded["tasks"].values():
            task.set_config(key="num_fewshot", value=0)  # zero-shot, as in the paper
            task.set_fewshot_seed(seed=1234)
        with contextlib.redirect_stdout(sys.stderr):  # lm-eval prints progress notes to stdout
            results = lm_eval_evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=bootstrap_iters, log_samples=False)
    finally:
        quiet.setLevel(level)
    hub_names = {n: TASKS[n].hub_task for n in names} if source == "hub" else {}
    return EvalReport(
        bundle=str(bundle_dir),
        backend=lm.runtime.name,
        precision=lm.runtime.precision,
        source=source,
        limit=limit,
        rows=_rows(results, names, hub_names),
        lm_eval_version=version("lm_eval"),
    )

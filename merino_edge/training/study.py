"""The proxy study: does the entropy rank architectures the way training does?

`run_study(StudyConfig)` samples N distinct architectures of the search space
under one budget (each using at least `min_fraction` of it, so they compete at
that budget), scores each with the training-free proxies (the entropy of
Eq. 15 at the configured eps, alpha, beta; unique parameters; non-embedding
parameters, LiteTransformerSearch's proxy; forward FLOPs), trains each with
the same recipe, seed, data and token budget (`merino_edge.training.trainer`),
and reports Spearman rho and Kendall tau of every proxy against -validation
loss, a scatter plot per proxy and the entropy's sensitivity to eps and alpha
(with and without the effectiveness term beta).

Output folder:

    study.json          config and the sampled architectures (fixed at the start)
    data/               tokenizer and token shards shared by every run
    models/aNNN/        each architecture's checkpoint (kept; a killed run resumes from it)
    results.jsonl       one line per finished architecture, appended atomically
    report.json, report.md, scatter_<proxy>.png

A killed study resumes with `resume=True`: finished architectures are read
back from results.jsonl and not trained again; the one in progress continues
from its last checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from merino_edge.arch import MAX_POSITIONS, PROJ_DIM, TABLE5, VOCAB_SIZE, ArchSpec, Axes
from merino_edge.errors import IncompatibleError, InputError
from merino_edge.fileio import check_schema, write_json_atomic
from merino_edge.rank_correlation import kendall_tau, spearman
from merino_edge.search.budgets import Budget, Costs
from merino_edge.search.objective import Objective
from merino_edge.search.space import SearchSpace
from merino_edge.training.study_report import Correlation, Sensitivity, StudyReport, scatter_plot
from merino_edge.units import parse_count

SCHEMA_VERSION = 1
CONFIG_FILE = "study.json"
RESULTS_FILE = "results.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
MODELS_DIR = "models"
DATA_DIR = "data"
PROXIES = ("entropy", "params", "non_embedding_params", "flops")
# Settings that do not change what is measured: a study may resume with other values.
_RUN_ONLY = ("out", "device", "progress")


def parse_budget(text: str) -> Budget:
    """`flops=110G`, `params=61M` or both, comma-separated, into a Budget."""
    limits = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in ("flops", "params"):
            raise InputError(f"--budget: {part!r} is not flops=N or params=N (e.g. flops=110G)")
        limits[name] = parse_count(value, f"--budget {name}")
    if not limits:
        raise InputError("--budget: give flops=N and/or params=N (e.g. flops=110G)")
    return Budget(**limits)


@dataclass
class StudyConfig:
    """One study: the architectures to sample, the shared training recipe, the proxy settings."""

    archs: int
    budget: Budget
    tokens: int  # training tokens per architecture
    data: tuple[str, ...]
    out: str
    device: str = "auto"
    # the space the architectures come from
    axes: Axes = TABLE5
    blocks: int = 4
    vocab_size: int = VOCAB_SIZE
    proj_dim: int = PROJ_DIM
    max_positions: int = MAX_POSITIONS
    min_fraction: float = 0.5
    # the training recipe, the same for every architecture
    tokenizer: str | None = None
    text_unit: str = "file"
    val_fraction: float = 0.02
    seq_len: int = 512
    batch_tokens: int = 32768
    micro_batch: int = 16
    lr: float = 6e-4
    eval_tokens: int = 262144
    amp: bool = True
    seed: int = 0
    # the entropy proxy and its sensitivity grid
    eps: float = Objective.eps
    alpha: tuple[float, float] = Objective.alpha
    beta: float = Objective.beta
    sensitivity_eps: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    sensitivity_alpha1: tuple[float, ...] = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
    progress: bool = True
    schema_version: int = field(default=SCHEMA_VERSION)

    def check(self) -> None:
        if self.archs < 3:
            raise InputError(f"study: --archs must be at least 3 to rank anything, got {self.archs}")
        if self.tokens < self.batch_tokens:
            raise InputError(f"study: --tokens {self.tokens} is less than one batch of {self.batch_tokens} tokens")
        if not 0.0 <= self.min_fraction < 1.0:
            raise InputError(f"study: --min-fraction must be in [0, 1), got {self.min_fraction}")
        if self.seq_len > self.max_positions:
            raise InputError(f"study: --seq-len {self.seq_len} exceeds max positions {self.max_positions}")
        Objective(self.alpha, self.beta, self.eps)  # validates the proxy settings

    def objective(self, eps: float | None = None, alpha1: float | None = None, beta: float | None = None) -> Objective:
        alpha = self.alpha if alpha1 is None else (alpha1, 1.0 - alpha1)
        return Objective(alpha, self.beta if beta is None else beta, self.eps if eps is None else eps)

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(budget=self.budget.to_json(), axes=self.axes.to_json(), data=list(self.data))
        return data

    @classmethod
    def from_json(cls, data: dict) -> StudyConfig:
        check_schema(data, "study config", SCHEMA_VERSION)
        tuples = {"data", "alpha", "sensitivity_eps", "sensitivity_alpha1"}
        fields_ = {k: tuple(v) if k in tuples else v for k, v in data.items()}
        fields_.update(budget=Budget.from_json(data["budget"]), axes=Axes.from_json(data["axes"]))
        return cls(**fields_)


# ------------------------------------------------------------- sampling


def sample_archs(cfg: StudyConfig, *, rounds: int = 64, per_round: int = 4096) -> list[ArchSpec]:
    """`cfg.archs` distinct architectures drawn uniformly from the space, each within [min_fraction, 1] of every budget."""
    space = SearchSpace(cfg.axes, cfg.blocks, cfg.vocab_size, cfg.proj_dim, cfg.max_positions)
    costs = Costs(space, cfg.budget)
    rng = np.random.default_rng(cfg.seed)
    found: dict[bytes, ArchSpec] = {}
    for _ in range(rounds):
        genomes = space.sample(rng, per_round)
        values = costs.evaluate(genomes)
        inside = np.ones(len(genomes), dtype=bool)
        for name, limit in costs.limits.items():
            inside &= (cfg.min_fraction * limit <= values[name]) & (values[name] <= limit)
        for genome in genomes[inside]:
            found.setdefault(genome.tobytes(), space.to_arch(genome))
            if len(found) == cfg.archs:
                return list(found.values())
    raise InputError(
        f"study: only {len(found)} distinct architectures of the space use between {cfg.min_fraction:g} and 1 of the budget "
        f"({cfg.budget.describe()}); ask for fewer --archs, lower --min-fraction or change the budget"
    )


def proxies(arch: ArchSpec, cfg: StudyConfig) -> dict[str, float]:
    """The training-free scores of `arch`, one per name in PROXIES."""
    return {
        "entropy": float(cfg.objective()(arch)),
        "params": float(arch.params()),
        "non_embedding_params": float(arch.non_embedding_params()),
        "flops": float(arch.flops(cfg.budget.flops_seq_len).total),
    }


# --------------------------------------------------------------- files


def append_result(path: Path, record: dict) -> None:
    """Append one JSON line with a single write and fsync; a line torn by an earlier kill is closed first."""
    torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (("\n" if torn else "") + json.dumps(record) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_results(path: Path) -> dict[str, dict]:
    """Finished architectures by id; a torn last line (a kill mid-write) is ignored."""
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            done[record["id"]] = record
    return done




def _start_or_resume(cfg: StudyConfig, out: Path, resume: bool) -> list[ArchSpec]:
    """The study's architectures: sampled and saved now, or read back on resume."""
    path = out / CONFIG_FILE
    if not path.is_file():
        archs = sample_archs(cfg)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"schema_version": SCHEMA_VERSION, "config": cfg.to_json(), "archs": [a.to_json() for a in archs]})
        return archs
    if not resume:
        raise InputError(f"study: {out} already holds a study; pass --resume to continue it or choose another --out")
    saved = json.loads(path.read_text())
    ours = json.loads(json.dumps(cfg.to_json()))
    changed = sorted(k for k, v in saved["config"].items() if k not in _RUN_ONLY and ours.get(k) != v)
    if changed:
        raise IncompatibleError(f"study: {out} was started with other settings ({', '.join(changed)}); use the same flags to resume")
    return [ArchSpec.from_json(a) for a in saved["archs"]]


# ---------------------------------------------------------------- run


def _tokenizer_path(cfg: StudyConfig, out: Path) -> Path:
    """The tokenizer every run shares: given, beside prepared shards, or trained once now."""
    from merino_edge.token_shards import MANIFEST
    from merino_edge.tokenizer import FILE_NAME, train_tokenizer
    from merino_edge.training.data import Corpus

    if cfg.tokenizer:
        return Path(cfg.tokenizer)
    if len(cfg.data) == 1 and (Path(cfg.data[0]) / MANIFEST).is_file():
        return Path(cfg.data[0]) / FILE_NAME
    path = out / DATA_DIR / FILE_NAME
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        train_tokenizer(Corpus(cfg.data, cfg.text_unit), path, vocab_size=cfg.vocab_size, seed=cfg.seed)
    return path


def _train_one(cfg: StudyConfig, arch: ArchSpec, model_dir: Path, tokenizer: Path, shards: Path):
    from merino_edge.training import checkpoint
    from merino_edge.training.trainer import TrainConfig, train

    steps = -(-cfg.tokens // cfg.batch_tokens)
    return train(
        TrainConfig(
            arch=arch,
            data=cfg.data,
            out=model_dir,
            tokenizer=tokenizer,
            text_unit=cfg.text_unit,
            val_fraction=cfg.val_fraction,
            shards_dir=shards,
            seq_len=cfg.seq_len,
            batch_tokens=cfg.batch_tokens,
            micro_batch=cfg.micro_batch,
            max_steps=steps,
            lr=cfg.lr,
            eval_every=steps,  # validation once, at the end, on the same windows for every arch
            eval_tokens=cfg.eval_tokens,
            save_every=max(1, steps // 4),
            seed=cfg.seed,
            device=cfg.device,
            amp=cfg.amp,
            resume=checkpoint.has_checkpoint(model_dir),
            progress=cfg.progress,
        )
    )


def run_study(cfg: StudyConfig, *, resume: bool = False) -> StudyReport:
    """Sample, score, train and rank (see the module docstring); returns the report it also writes."""
    from tqdm import tqdm

    cfg.check()
    out = Path(cfg.out)
    archs = _start_or_resume(cfg, out, resume)
    results = read_results(out / RESULTS_FILE)
    todo = [(f"a{i:03d}", arch) for i, arch in enumerate(archs) if f"a{i:03d}" not in results]
    if todo:
        tokenizer = _tokenizer_path(cfg, out)
        for aid, arch in tqdm(todo, desc="proxy study", unit="arch", disable=not cfg.progress):
            result = _train_one(cfg, arch, out / MODELS_DIR / aid, tokenizer, out / DATA_DIR)
            if result.interrupted:
                raise KeyboardInterrupt
            val_loss = next((r["val_loss"] for r in reversed(result.history) if "val_loss" in r), None)
            if val_loss is None:
                raise InputError(f"study: {aid} has no validation loss: the validation split is empty (raise --val-fraction)")
            record = {"id": aid, "arch": arch.to_json(), "proxies": proxies(arch, cfg), "val_loss": val_loss, "steps": result.steps, "tokens": result.tokens}
            append_result(out / RESULTS_FILE, record)
            results[aid] = record
    return write_report(cfg, [results[f"a{i:03d}"] for i in range(len(archs))], out)


def write_report(cfg: StudyConfig, records: list[dict], out: Path) -> StudyReport:
    """Correlations, sensitivity grid, scatter plots, report.json and report.md from finished records."""
    quality = np.array([-r["val_loss"] for r in records])
    archs = [ArchSpec.from_json(r["arch"]) for r in records]
    correlations = []
    for name in PROXIES:
        x = np.array([r["proxies"][name] for r in records])
        c = Correlation(name, spearman(x, quality), kendall_tau(x, quality))
        correlations.append(c)
        scatter_plot(name, x, quality, c, out / f"scatter_{name}.png")
    sensitivity = []
    for beta in dict.fromkeys((cfg.beta, 0.0)):
        for eps in cfg.sensitivity_eps:
            for alpha1 in cfg.sensitivity_alpha1:
                objective = cfg.objective(eps, alpha1, beta)
                x = np.array([objective(a) for a in archs])
                sensitivity.append(Sensitivity(eps, alpha1, beta, spearman(x, quality), kendall_tau(x, quality)))
    report = StudyReport(len(records), cfg.budget.describe(), cfg.tokens, correlations, sensitivity)
    write_json_atomic(out / REPORT_JSON, report.to_json())
    (out / REPORT_MD).write_text(report.tables() + "\n")
    return report

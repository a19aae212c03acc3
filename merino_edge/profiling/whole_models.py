"""Whole models timed exactly as the profiler times its parts.

Random architectures from the search space, exported as real model graphs
(`profiling.export.export_validation_models`, where torch is installed) into
folders of arch.json + model.onnx, then timed torch-free on ONNX Runtime: the
same threads, session options, IOBinding and repetition rule as the parts.
Any other graph of an architecture (e.g. a bundle's) is timed the same way.
The profiler calibrates its latency model on a few of them (`profiling.run`);
`profile validate` checks the model on others (`profiling.validate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from merino_edge.arch import TABLE5, ArchSpec, Axes, Block, load_arch
from merino_edge.device_profile import Measurement
from merino_edge.errors import InputError
from merino_edge.profiling.parts import ARCH_FILE, GRAPH_FILE, MicroGraphs
from merino_edge.profiling.timing import measure, ort_runner, ort_session
from merino_edge.runtime.backends.ort import cache_form

CALIBRATION_DIR = "calibration"  # whole models a profile calibrates on, exported beside its micro-graphs
CALIBRATION_SEED = 1  # profile validate draws with seed 0 by default, and leaves these out anyway


@dataclass(frozen=True)
class WholeModel:
    """A model graph to time and the architecture it was exported from."""

    arch: ArchSpec
    graph: Path


def random_archs(n: int, axes: Axes = TABLE5, blocks: int = 4, seed: int = 0, exclude=(), **model) -> list[ArchSpec]:
    """`n` distinct random architectures of `blocks` blocks over `axes` (widths non-decreasing).

    Architectures whose short name is in `exclude` are skipped (e.g. the profile's calibration set).
    `model` sets the other ArchSpec fields (vocab_size, proj_dim, ...), e.g. from the profile.
    """
    if n < 1:
        raise InputError(f"--archs must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    out: list[ArchSpec] = []
    seen = set(exclude)
    while len(out) < n:
        widths = sorted(int(w) for w in rng.choice(axes.widths, size=blocks))
        arch = ArchSpec(tuple(Block(w, float(rng.choice(axes.ratios)), int(rng.choice(axes.depths))) for w in widths), **model)
        if arch.short() not in seen:
            seen.add(arch.short())
            out.append(arch)
    return out


def calibration_archs(graphs: MicroGraphs, n: int) -> list[ArchSpec]:
    """The `n` random whole models a profile of the parts in `graphs` calibrates on (the parts' space and model dims)."""
    model = {k: graphs.model[k] for k in ("vocab_size", "proj_dim", "head_dim", "max_positions")}
    return random_archs(n, graphs.axes, seed=CALIBRATION_SEED, **model)


def graph_shapes(arch: ArchSpec, appends: bool = False) -> tuple[dict, dict]:
    """Shape templates (as in graphs.json) of the whole model graph's inputs and outputs.

    `appends`: the graph's presents are the new columns alone (the CPU graphs of a bundle, export/onnx.py).
    """
    # One kept logits column, as generation asks for (example_input gives it column 0).
    inputs = {"input_ids": [1, "s"], "position_ids": [1, "s"], "attention_mask": [1, "t"], "logits_to_keep": [1]}
    outputs = {"logits": [1, 1, arch.vocab_size]}
    for i, heads in enumerate(arch.layer_heads()):
        for kv in ("key", "value"):
            inputs[f"past.{i}.{kv}"] = [1, heads, "c", arch.head_dim]
            outputs[f"present.{i}.{kv}"] = [1, heads, "s" if appends else "t", arch.head_dim]
    return inputs, outputs


def model_dir(folder: Path) -> WholeModel:
    """The model exported into `folder` (arch.json and model.onnx)."""
    return WholeModel(load_arch(folder / ARCH_FILE), folder / GRAPH_FILE)


def model_dirs(models_dir: str | Path) -> list[WholeModel]:
    """The exported architectures under `models_dir` (each a folder with arch.json and model.onnx)."""
    dirs = sorted(d for d in Path(models_dir).glob("*") if (d / ARCH_FILE).exists() and (d / GRAPH_FILE).exists())
    if not dirs:
        raise InputError(f"no exported architectures under {models_dir} (folders with {ARCH_FILE} and {GRAPH_FILE})")
    return [model_dir(d) for d in dirs]


def _time_model(
    model: WholeModel, threads: int | None, how: Measurement, decode_contexts: tuple[int, ...], prefill_lengths: tuple[int, ...]
) -> list[tuple[str, int, float, float]]:
    """(phase, tokens, median ms, IQR ms) of `model` at every decode context and prompt length."""
    arch = model.arch
    session = ort_session(model.graph, threads)
    inputs, outputs = graph_shapes(arch, appends=cache_form(session) == "append")
    grid = [("decode", 1, c) for c in decode_contexts] + [("prefill", s, 0) for s in prefill_lengths]
    out = []
    for phase, seq_len, past_len in grid:
        run = ort_runner(session, inputs, outputs, seq_len, past_len, arch.vocab_size)
        median, spread, _ = measure(run, how)
        out.append((phase, past_len if phase == "decode" else seq_len, median, spread))
    return out


ROUNDS = 3  # whole models are timed in rounds over all of them; a point keeps the median of its rounds


def time_models(
    models: list[WholeModel],
    threads: int | None,
    how: Measurement,
    decode_contexts: tuple[int, ...],
    prefill_lengths: tuple[int, ...],
    *,
    rounds: int = ROUNDS,
    record: dict[str, list] | None = None,
    on_update: Callable[[], None] | None = None,
    progress: bool = True,
    desc: str = "time models",
) -> list[tuple[ArchSpec, list[tuple[str, int, float, float]]]]:
    """(arch, [(phase, tokens, median ms, IQR ms), ...]) of every model, timed round-robin `rounds` times.

    A point keeps the median of its rounds' medians (and of their IQRs): on a
    shared machine a disturbance of a few seconds then touches one round of a
    point, not its result.  `record` ({arch short name: [one round's timings,
    ...]}) keeps what was timed; rounds already in it are not timed again, and
    `on_update` is called after every model of every round (to save it).
    """
    from tqdm import tqdm

    record = {} if record is None else record
    todo = [(r, model) for r in range(rounds) for model in models if len(record.get(model.arch.short(), [])) <= r]
    for _, model in tqdm(todo, desc=desc, disable=not progress):
        timings = _time_model(model, threads, how, decode_contexts, prefill_lengths)
        record.setdefault(model.arch.short(), []).append([list(t) for t in timings])
        if on_update is not None:
            on_update()
    out = []
    for arch in (model.arch for model in models):
        runs = record[arch.short()][:rounds]
        points = [(phase, int(tokens)) for phase, tokens, _, _ in runs[0]]
        medians = np.median([[t[2] for t in run] for run in runs], axis=0)
        spreads = np.median([[t[3] for t in run] for run in runs], axis=0)
        out.append((arch, [(phase, tokens, float(m), float(s)) for (phase, tokens), m, s in zip(points, medians, spreads, strict=True)]))
    return out

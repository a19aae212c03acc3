"""Timing one graph on the device: the repetition rule, cache flushes, ONNX Runtime sessions bound once.

Shared by the profiler (`profiling.run`), its calibration and `profile validate`
(`profiling.whole_models`), so parts and whole models are timed the same way.
A `Run` is one graph bound at one grid point: calling it runs the graph once,
synchronously.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from merino_edge.device_profile import Measurement
from merino_edge.profiling.parts import dims, example_input
from merino_edge.runtime.backends.ort import ORT_DTYPES, ort_module

Run = Callable[[], None]
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


# ------------------------------------------------------------------ timing


SLOW_RUN_REPETITIONS = 3  # the fewest repetitions of a run slower than the time target


def measure(run: Run, how: Measurement, before: Callable[[], None] | None = None) -> tuple[float, float, int]:
    """Median and IQR (ms) of `run` on `how.clock`, and the repetitions used.

    `before` (e.g. a cache flush) runs before every run, outside the timing.
    Runs slower than `how.seconds_per_point` get one warm-up and
    SLOW_RUN_REPETITIONS repetitions instead of `how.warmup` and `how.repetitions`.
    """
    clock = CLOCKS[how.clock]
    before = before or (lambda: None)
    seconds = how.seconds_per_point or 0.0
    warmup, min_reps, max_reps = how.warmup, how.repetitions, how.max_repetitions or how.repetitions
    start = time.perf_counter()
    run()
    if time.perf_counter() - start > seconds > 0:
        warmup, min_reps = 1, min(min_reps, SLOW_RUN_REPETITIONS)
    for _ in range(warmup - 1):
        before()
        run()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() < deadline):
        before()
        start = clock()
        run()
        times.append((clock() - start) * 1e3)
    q25, q50, q75 = np.percentile(times, [25, 50, 75])
    return float(q50), float(q75 - q25), len(times)


class CacheFlush:
    """Evicts the CPU caches by writing a buffer of `nbytes` (a callable, for `measure(before=...)`)."""

    def __init__(self, nbytes: int):
        self.buffer = np.zeros(max(nbytes, 1) // 8, np.float64)

    def __call__(self) -> None:
        self.buffer += 1.0


# ------------------------------------------------------------ ONNX Runtime


def ort_session(path: Path, threads: int | None, provider: str = "CPUExecutionProvider"):
    """A session configured as the runtime's ORT backend configures its own."""
    ort = ort_module()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=[provider])


def ort_runner(session, inputs: dict, outputs: dict, seq_len: int, past_len: int, vocab_size: int) -> Run:
    """Bind every input and output of `session` once to buffers shaped for one grid point."""
    rng = np.random.default_rng(0)
    io = session.io_binding()
    keep = []  # buffers must outlive the binding
    for arg in session.get_inputs():
        shape = dims(inputs[arg.name], seq_len, past_len)
        value = example_input(arg.name, shape, ORT_DTYPES[arg.type], vocab_size, past_len, rng)
        keep.append(value)
        io.bind_cpu_input(arg.name, value)
    for arg in session.get_outputs():
        buffer = np.empty(dims(outputs[arg.name], seq_len, past_len), ORT_DTYPES[arg.type])
        keep.append(buffer)
        io.bind_output(arg.name, "cpu", 0, buffer.dtype, list(buffer.shape), buffer.ctypes.data)

    def run() -> None:
        session.run_with_iobinding(io)

    run.buffers = keep  # type: ignore[attr-defined]
    return run

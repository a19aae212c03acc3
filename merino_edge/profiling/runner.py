"""What the profiler times parts on: the `Runner` interface and its ONNX Runtime implementation.

A runner holds the micro-graph index it times (`graphs`), describes its backend
for the profile (`backend_info`, `gpu`), binds one part at one grid point to a
`Run`, and makes the cache flush that precedes a cold run.  Other runners:
`profiling.export.TorchRunner` (the torch modules themselves) and
`profiling.tensorrt.TensorRTRunner` (TensorRT engines on a GPU).
"""

from __future__ import annotations

import platform
from abc import ABC, abstractmethod
from pathlib import Path

from merino_edge.device_profile import BackendInfo
from merino_edge.profiling.parts import MicroGraphs, Part, read_graphs
from merino_edge.profiling.timing import CacheFlush, Run, ort_runner, ort_session
from merino_edge.runtime.backends.ort import ort_module


class Runner(ABC):
    """Runs the parts of `graphs` on one backend, one grid point at a time."""

    graphs: MicroGraphs
    backend_info: BackendInfo
    gpu: str | None = None  # the GPU's name, None when the parts run on the CPU

    @abstractmethod
    def bind(self, part: Part, seq_len: int, past_len: int) -> Run:
        """`part` with inputs and outputs bound for `seq_len` new tokens after `past_len` cached ones."""

    def flush(self, nbytes: int) -> Run:
        """A callable that evicts the caches this backend reads through, by writing `nbytes`."""
        return CacheFlush(nbytes)


class OrtRunner(Runner):
    """The ONNX micro-graphs of a work directory on ONNX Runtime's CPU provider."""

    def __init__(self, workdir: str | Path, threads: int | None):
        self.workdir, self.threads = Path(workdir), threads
        self.graphs = read_graphs(self.workdir)
        self.backend_info = BackendInfo(
            name="ort",
            precision=self.graphs.precision,
            provider="CPUExecutionProvider",
            versions={"onnxruntime": ort_module().__version__, "python": platform.python_version(), **self.graphs.exporter},
        )
        self._sessions: dict[str, object] = {}

    def bind(self, part: Part, seq_len: int, past_len: int) -> Run:
        if part.name not in self._sessions:
            self._sessions.clear()  # one part at a time keeps memory flat
            self._sessions[part.name] = ort_session(self.workdir / part.file, self.threads)
        session = self._sessions[part.name]
        return ort_runner(session, part.inputs, part.outputs, seq_len, past_len, self.graphs.model["vocab_size"])

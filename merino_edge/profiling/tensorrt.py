"""`merino-edge profile --backend tensorrt`: the FP16 micro-graphs as TensorRT engines, timed on the GPU.

Thin on purpose, and shaped like the runtime's engine (`engine_record`):
each part's FP16 graph (`profile --precision fp16`) is built once into an engine
with the same two optimization profiles, ``context`` (a prompt, empty past) and
``generation`` (one token after a past of 1..max_positions-1), and kept in the
work dir (`engines/`, with one shared timing cache and `host.json`, what they
were built on), so a resumed profile does not build them again; engines from
another TensorRT, GPU or board are refused, not timed.  A prefill point and a
decode point at context 0 run on the context profile, every other decode point
on the generation profile, as the runtime runs them.  Every tensor lives in
one device arena allocated up front (large enough for any part at any point);
inputs are uploaded once per grid point; a run is one execute_async_v3 on the
stream and a synchronize.  A cold run follows a copy of `flush_bytes` into
device memory, which evicts the GPU's L2.

Never run in this workplace (no TensorRT can be installed here): the shapes are
tested on the CPU (`part_profiles`), the rest on a board (tests/gpu).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from merino_edge.device_profile import BackendInfo
from merino_edge.engine_record import CONTEXT, GENERATION, HostInfo, Profile, TensorRange, host_differences
from merino_edge.errors import IncompatibleError, InputError
from merino_edge.fileio import read_json, write_bytes_atomic, write_json_atomic
from merino_edge.profiling.parts import MicroGraphs, Part, dims, example_input, read_graphs
from merino_edge.profiling.runner import Runner
from merino_edge.profiling.timing import Run

ENGINES_DIR = "engines"
TIMING_CACHE = "timing.cache"
ENGINES_HOST = "host.json"  # the HostInfo the engines were built on
WORKSPACE_MIB = 512
_DTYPES = {"INT64": np.int64, "INT32": np.int32, "FLOAT": np.float32, "HALF": np.float16}
_ALIGN = 256  # bytes between tensors in the arena


def arena_bytes(graphs: MicroGraphs) -> int:
    """Device bytes for every tensor of the largest part at the largest shapes (8 bytes a value, aligned)."""
    p = graphs.model["max_positions"]

    def size(template) -> int:
        return -(-int(np.prod(dims(template, p, p - 1))) * 8 // _ALIGN) * _ALIGN

    return max(sum(size(t) for t in (*part.inputs.values(), *part.outputs.values())) for part in graphs.parts)


def part_profiles(part: Part, max_positions: int) -> tuple[Profile, Profile]:
    """The context and generation profiles of one part, over its graphs.json shape templates ('s', 'c', 't')."""
    top = max_positions - 1
    ranges = {CONTEXT: ((1, max(1, max_positions // 2), max_positions), (0, 0, 0)), GENERATION: ((1, 1, 1), (1, max(1, top // 2), top))}
    profiles = []
    for name in (CONTEXT, GENERATION):
        seq, past = ranges[name]
        inputs = tuple(TensorRange(tensor, *(tuple(dims(template, seq[k], past[k])) for k in range(3))) for tensor, template in part.inputs.items())
        profiles.append(Profile(name, inputs))
    return profiles[0], profiles[1]


def check_engines_host(engines: Path, host: HostInfo) -> None:
    """Record `host` beside the work dir's engines, or raise IncompatibleError if they were built on another.

    Engines without that record (from an older merino-edge) are refused too:
    nothing says which TensorRT or GPU built them.
    """
    record, built = engines / ENGINES_HOST, list(engines.glob("*.engine"))
    if record.is_file():
        try:
            problems = host_differences(HostInfo.from_json(read_json(record, "engine host record")), host)
        except (KeyError, TypeError, AttributeError):
            problems = [f"{record} is damaged"]
    else:
        problems = ["nothing records what built them"] if built else []
    if problems:
        raise IncompatibleError(f"the engines in {engines} cannot be timed here: {'; '.join(problems)}; delete {engines} to build them again on this machine")
    if not record.is_file():
        engines.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, host.to_json())


def profile_for(seq_len: int, past_len: int) -> str:
    """The optimization profile a grid point runs on: generation for one token after a past, else context."""
    return GENERATION if seq_len == 1 and past_len > 0 else CONTEXT


class TensorRTRunner(Runner):
    """The FP16 micro-graphs of a work dir as TensorRT engines."""

    def __init__(self, workdir: str | Path, device: int = 0):
        from merino_edge.runtime.backends.cuda_memory import open_cuda
        from merino_edge.runtime.backends.tensorrt import host_info, import_tensorrt

        self.trt = import_tensorrt()
        self.workdir = Path(workdir)
        self.graphs = read_graphs(self.workdir)
        if self.graphs.precision != "fp16":
            raise InputError(f"profile --backend tensorrt times FP16 engines; {self.workdir} holds {self.graphs.precision} graphs: use --precision fp16")
        self.cuda = open_cuda(device)
        check_engines_host(self.workdir / ENGINES_DIR, host_info(self.trt, self.cuda))
        name, capability = self.cuda.gpu()
        self.gpu = name
        self.backend_info = BackendInfo(
            name="tensorrt", precision="fp16", provider=f"{name} (compute {capability})", versions={"tensorrt": self.trt.__version__, **self.graphs.exporter}
        )
        self._runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self._arena = self.cuda.alloc(arena_bytes(self.graphs))
        self._part: tuple[str, object, dict] | None = None  # (name, engine, {profile: context}) of the part being timed

    def flush(self, nbytes: int) -> Run:
        """A callable that writes `nbytes` into device memory (through the L2), for cold runs."""
        target, source = self.cuda.alloc(nbytes), self.cuda.pinned((max(nbytes, 1),), np.uint8)

        def run() -> None:
            self.cuda.to_device(target, source)
            self.cuda.synchronize()

        return run

    def _engine_path(self, part: Part) -> Path:
        return self.workdir / ENGINES_DIR / f"{part.name}.engine"

    def _engine(self, part: Part) -> bytes:
        """The part's serialized engine, built once into the work dir."""
        from merino_edge.export.tensorrt import build_plan

        path = self._engine_path(part)
        if not path.exists():
            cache_path = self.workdir / ENGINES_DIR / TIMING_CACHE
            profiles = part_profiles(part, self.graphs.model["max_positions"])
            cache = cache_path.read_bytes() if cache_path.exists() else b""
            plan, cache, _ = build_plan(self.trt, self.workdir / part.file, profiles, workspace_mib=WORKSPACE_MIB, timing_cache=cache)
            path.parent.mkdir(exist_ok=True)
            write_bytes_atomic(cache_path, cache)
            write_bytes_atomic(path, plan)
        return path.read_bytes()

    def _contexts(self, part: Part) -> dict:
        """One execution context per optimization profile of the part (the previous part's are dropped)."""
        if self._part is None or self._part[0] != part.name:
            self._part = None  # free the previous engine first
            engine = self._runtime.deserialize_cuda_engine(self._engine(part))
            if engine is None or engine.num_optimization_profiles != 2:
                raise IncompatibleError(
                    f"TensorRT could not load {self._engine_path(part)} as a two-profile engine (its log above says why); delete it to build it again"
                )
            contexts = {}
            for index, name in enumerate((CONTEXT, GENERATION)):
                context = engine.create_execution_context()
                context.set_optimization_profile_async(index, self.cuda.stream)
                contexts[name] = context
            self._part = (part.name, engine, contexts)
        return self._part[2]

    def bind(self, part: Part, seq_len: int, past_len: int) -> Run:
        context = self._contexts(part)[profile_for(seq_len, past_len)]
        engine, rng, offset = self._part[1], np.random.default_rng(0), 0

        def place(tensor: str, nbytes: int) -> int:
            """The next aligned slot of the arena, bound to `tensor`."""
            nonlocal offset
            pointer = self._arena + offset
            context.set_tensor_address(tensor, pointer)
            offset += -(-nbytes // _ALIGN) * _ALIGN
            return pointer

        for tensor, template in part.inputs.items():
            shape = dims(template, seq_len, past_len)
            value = example_input(tensor, shape, _DTYPES[engine.get_tensor_dtype(tensor).name], self.graphs.model["vocab_size"], past_len, rng)
            if not context.set_input_shape(tensor, shape):
                raise InputError(f"{part.name}: {tensor} shape {shape} is outside its engine's profile")
            self.cuda.to_device(place(tensor, value.nbytes), value)
        for tensor in part.outputs:
            itemsize = np.dtype(_DTYPES[engine.get_tensor_dtype(tensor).name]).itemsize
            place(tensor, int(np.prod(tuple(context.get_tensor_shape(tensor)))) * itemsize)
        self.cuda.synchronize()

        def run() -> None:
            if not context.execute_async_v3(self.cuda.stream):
                raise RuntimeError(f"TensorRT failed to run {part.name} (seq {seq_len}, past {past_len}); see its log above")
            self.cuda.synchronize()

        return run

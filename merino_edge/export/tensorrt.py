"""`merino-edge build`: the bundle's FP16 ONNX graph compiled into one TensorRT engine, on the board.

The network is strongly typed (the FP16 graph carries its own casts), which
works on TensorRT 10.3 (JetPack 6.1) as on 10.12+ and 11, where the FP16
builder flag is deprecated or gone.  One engine holds both optimization
profiles of `engine_record.profile_shapes`, so the weights sit in GPU memory
once.  The timing cache is kept beside the engine and reused by the next build.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from merino_edge.engine_record import ENGINE_FILE, ENGINE_NAME, TIMING_CACHE_FILE, EngineRecord, manifest_profiles
from merino_edge.errors import InputError, MerinoError
from merino_edge.fileio import write_bytes_atomic

DEFAULT_WORKSPACE_MIB = 1024


def parser_error_message(onnx_path: str | Path, errors) -> str:
    """One line naming every error the ONNX parser reported, with node names and operators.

    `errors` are TensorRT `IParserError`s (anything with desc(), node_name(), node_operator()).
    """
    parts = []
    for err in errors:
        where = f"node {err.node_name() or '?'} ({err.node_operator() or '?'})"
        parts.append(f"{where}: {err.desc()}")
    return f"TensorRT cannot parse {onnx_path}: " + "; ".join(parts)


def network_flags(trt) -> int:
    """`create_network` flags for a strongly typed network.

    TensorRT 10 asks for it with the STRONGLY_TYPED flag; TensorRT 11 always
    builds strongly typed networks and ignores that (deprecated) flag.
    """
    if int(trt.__version__.split(".")[0]) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def attach_timing_cache(config, serialized: bytes) -> bool:
    """Give the builder `config` the timing cache in `serialized`, or a new one; True when `serialized` was used.

    A cache from another TensorRT version or GPU, or a damaged file, is refused
    by TensorRT (`create_timing_cache` returns None or `set_timing_cache` False).
    """
    cache = config.create_timing_cache(serialized) if serialized else None
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return True
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, ignore_mismatch=False):
        raise MerinoError("TensorRT could not create a timing cache (its log above says why)")
    return False


def _progress_monitor(trt):
    """A TensorRT IProgressMonitor drawing one tqdm bar per build phase (nested phases indented)."""
    from tqdm import tqdm

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, tuple[tqdm, int]] = {}  # phase -> (bar, nesting depth)
            self._lock = threading.Lock()

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                depth = self._bars[parent_phase][1] + 1 if parent_phase in self._bars else 0
                bar = tqdm(total=num_steps, desc=phase_name, position=depth, leave=depth == 0, file=sys.stderr)
                self._bars[phase_name] = (bar, depth)

        def step_complete(self, phase_name, step):
            with self._lock:
                if phase_name in self._bars:
                    self._bars[phase_name][0].update(1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            with self._lock:
                bar, _ = self._bars.pop(phase_name, (None, 0))
                if bar is not None:
                    bar.close()

    return Progress()


def build_plan(trt, onnx_path: Path, profiles, *, workspace_mib: int, timing_cache: bytes = b"", progress: bool = False) -> tuple[bytes, bytes, float]:
    """Build a strongly typed ONNX graph with these optimization profiles: (serialized engine, timing cache, seconds).

    `profiles` are `engine_record.Profile`s, added in order; `timing_cache` is a
    serialized cache to start from (one from another TensorRT or GPU, or a
    damaged one, is dropped with a notice and replaced).
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise InputError(parser_error_message(onnx_path, [parser.get_error(i) for i in range(parser.num_errors)]))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    for prof in profiles:
        opt_profile = builder.create_optimization_profile()
        for rng in prof.inputs:
            opt_profile.set_shape(rng.name, rng.min, rng.opt, rng.max)
        if config.add_optimization_profile(opt_profile) < 0:
            raise InputError(
                f"TensorRT refused the {prof.name} optimization profile for {onnx_path} (its log above names the input); "
                "the graph does not match the bundle's limits: export the bundle again with `merino-edge export`"
            )

    if not attach_timing_cache(config, timing_cache) and timing_cache:
        print("merino-edge: the timing cache is from another TensorRT or GPU, or damaged; starting a new one", file=sys.stderr)
    if progress:
        monitor = _progress_monitor(trt)  # must outlive the build
        config.progress_monitor = monitor

    started = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if plan is None:
        raise MerinoError(
            f"TensorRT could not build an engine from {onnx_path} (its log above says why); "
            f"if it ran out of memory, try a smaller --workspace than {workspace_mib} MiB or a smaller --max-batch"
        )
    return bytes(plan), bytes(config.get_timing_cache().serialize()), seconds


def build_engine(
    bundle_dir: str | Path,
    *,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    max_batch: int | None = None,
    timing_cache: str | Path | None = None,
    progress: bool = True,
    device: int = 0,
) -> EngineRecord:
    """Build the FP16 engine of the bundle at `bundle_dir`, store it there and record it in the manifest."""
    from merino_edge.bundle import Bundle
    from merino_edge.runtime.backends.cuda_memory import open_cuda
    from merino_edge.runtime.backends.tensorrt import host_info, import_tensorrt

    trt = import_tensorrt()
    if not isinstance(workspace_mib, int) or workspace_mib < 16:
        raise InputError(f"--workspace must be at least 16 MiB, got {workspace_mib!r}")
    bundle = Bundle.load(bundle_dir)
    onnx_path = bundle.onnx_path("fp16")
    manifest = bundle.manifest
    profiles = manifest_profiles(manifest, max_batch)

    cache_path = Path(timing_cache) if timing_cache else bundle.path / TIMING_CACHE_FILE
    cuda = open_cuda(device)  # the build runs on this device, the one the record names
    try:
        host = host_info(trt, cuda)
        with cuda.active():
            plan, cache, seconds = build_plan(
                trt, onnx_path, profiles, workspace_mib=workspace_mib, timing_cache=cache_path.read_bytes() if cache_path.is_file() else b"", progress=progress
            )
    finally:
        cuda.close()
    engine_path = bundle.path / ENGINE_FILE
    engine_path.parent.mkdir(exist_ok=True)
    write_bytes_atomic(engine_path, plan)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(cache_path, cache)

    context = profiles[0]["input_ids"]
    record = EngineRecord(
        onnx_file=onnx_path.name,
        onnx_sha256=manifest.files[onnx_path.name],
        host=host,
        workspace_mib=workspace_mib,
        max_batch=context.max[0],
        max_prompt=context.max[1],
        max_context=manifest.max_context,
        profiles=profiles,
        build_seconds=round(seconds, 3),
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        timing_cache=str(cache_path),
    )
    bundle.add_engine(ENGINE_FILE, record.to_json(), name=ENGINE_NAME, precision=record.precision)
    return record

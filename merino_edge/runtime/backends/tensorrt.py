"""The TensorRT backend: the bundle's FP16 engine on the board's GPU.

The engine is deserialized once and gets one execution context per
optimization profile (``context`` for the prompt, ``generation`` for one token
per step).  All device memory is allocated once, at the engine's limits; every
tensor is addressed by name.  Each KV-cache tensor has two buffers of the full
context length: a step reads `past` from one and writes `present` (past plus
the new token) into the other, and the next step swaps their roles, so the
cache is never copied on the host side.  The engine computes logits only at
the columns asked for (the graph's `logits_to_keep`: each row's last token
while generating, at most one column per row, so that buffer is [b, b, V]);
only those rows come back to the host.  The [b, max_prompt, V] buffer that
scoring needs is allocated the first time `score` runs.

A prompt longer than the engine's max_prompt is fed in two parts: the first
max_prompt tokens through the context profile, the rest one token at a time.
`Backend` (runtime/backend.py) keeps the attention mask, positions and limits.

Continuous batching: the batch pairs hold max_batch rows (the engine's
profiles take batch 1..max_batch, so `--parallel` is at most the max batch it
was built with) and a one-row side pair takes a joining sequence's prefill
through the context profile (batch 1, past 0).  A join or leave writes the
batch cache's new or moved rows in place, or the whole cache into its spare
buffer when the columns change, on the device: a zero fill and one 2-D copy
(`row_copies`: heads x the row's tokens) per row written and cache tensor.
Prefix reuse is off here: the context profile has no past, so the rest of a
prompt after a cached prefix would run one token per call.
"""

from __future__ import annotations

import numpy as np

from merino_edge.engine_record import (
    CONTEXT,
    ENGINE_NAME,
    GENERATION,
    EngineRecord,
    HostInfo,
    cache_tensor_names,
    check_compatible,
)
from merino_edge.errors import IncompatibleError, InputError, MissingDependencyError
from merino_edge.runtime.backend import Backend, logits_columns, positions_from_mask
from merino_edge.runtime.backends.cuda_memory import CudaMemory, open_cuda

INSTALL_HINT = (
    "TensorRT is not installed: on a Jetson (JetPack 6.1 or newer) `sudo apt install python3-libnvinfer` "
    "(a venv needs --system-site-packages) plus `pip install pycuda`; on x86 `pip install tensorrt pycuda`"
)


MIN_TENSORRT_MAJOR = 10  # strongly typed networks and execute_async_v3 by tensor name


def version_problem(version: str) -> str | None:
    """Why merino-edge cannot use TensorRT `version` (e.g. JetPack 6.0's 8.6), or None when it can."""
    major = version.split(".")[0]
    if major.isdigit() and int(major) >= MIN_TENSORRT_MAJOR:
        return None
    return (
        f"TensorRT {version} is too old: merino-edge builds strongly typed networks, which need "
        f"TensorRT {MIN_TENSORRT_MAJOR}.x or newer (JetPack 6.1 or newer; on x86 `pip install tensorrt`)"
    )


def import_tensorrt():
    """The `tensorrt` module, or MissingDependencyError saying what to install."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError(INSTALL_HINT) from None
    problem = version_problem(tensorrt.__version__)
    if problem:
        raise MissingDependencyError(problem)
    return tensorrt


def host_info(trt, cuda: CudaMemory) -> HostInfo:
    """What an engine built or loaded here is tied to: TensorRT version, GPU, Jetson board model and L4T/JetPack."""
    from merino_edge.jetson.board import detect_board

    gpu_name, capability = cuda.gpu()
    board = detect_board()
    return HostInfo(
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=capability,
        l4t=board.l4t if board else None,
        jetpack=board.jetpack if board else None,
        board=board.model if board else None,
    )


def usable_engine(bundle, trt, cuda: CudaMemory) -> EngineRecord:
    """The record of the bundle's engine if this machine may load it; else InputError or IncompatibleError saying why."""
    data = bundle.engine_record
    if data is None:
        raise InputError(f"bundle {bundle.path} has no TensorRT engine: run `merino-edge build {bundle.path}` on this machine first")
    record = EngineRecord.from_json(data)
    check_compatible(record, host_info(trt, cuda), bundle.manifest.files.get(record.onnx_file), bundle=str(bundle.path))
    return record


class _KVPairs:
    """Two device buffers per cache tensor, rows x heads x max_context x head_dim; `current` says which holds the past."""

    def __init__(self, buffers: list[tuple[int, int]]):
        self.buffers = buffers
        self.current = 0

    def past(self, tensor: int) -> int:
        return self.buffers[tensor][self.current]

    def spare(self, tensor: int) -> int:
        return self.buffers[tensor][1 - self.current]

    def swap(self) -> None:
        self.current = 1 - self.current


def row_copies(placements: list[tuple[int, int, int, int]], heads: int, past: int, head_dim: int, itemsize: int) -> list[tuple[int, int, int, int, int, int]]:
    """The 2-D copies that lay out rows right-aligned in a [rows, heads, past, head_dim] cache.

    For each (k, source row, source past, n) the last n columns of that row of
    a [*, heads, source past, head_dim] cache become row k's last n columns.
    Each copy is (dst offset, dst pitch, src offset, src pitch, width, height)
    in bytes: `heads` runs of n * head_dim values, one per head.
    """
    token = head_dim * itemsize
    return [
        (((k * heads) * past + past - n) * token, past * token, ((row * heads) * src_past + src_past - n) * token, src_past * token, n * token, heads)
        for k, row, src_past, n in placements
    ]


class TensorRTBackend(Backend):
    """Backend over the bundle's TensorRT engine (see the module docstring)."""

    name = "tensorrt"
    precision = "fp16"
    kv_value_bytes = 2
    prefix_reuse = False

    def __init__(self, bundle, *, threads: int | None = None, provider: str | None = None, precision: str | None = None, device: int = 0):
        """`threads` and `provider` are ONNX Runtime settings and are ignored; the engine is FP16."""
        if precision not in (None, "fp16"):
            raise InputError(f"the TensorRT backend runs the FP16 engine; precision {precision!r} is not available (use --backend ort)")
        trt = import_tensorrt()
        self._cuda = open_cuda(device)
        try:
            self.record = usable_engine(bundle, trt, self._cuda)
            with self._cuda.active():
                self._load(trt, bundle)
        except BaseException:
            self._cuda.close()
            raise

    def _load(self, trt, bundle) -> None:
        record, cuda = self.record, self._cuda
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(bundle.engine_path(ENGINE_NAME).read_bytes())
        if self._engine is None:
            raise IncompatibleError(f"TensorRT could not load the engine of {bundle.path} (its log above says why); run `merino-edge build {bundle.path}` again")
        if self._engine.num_optimization_profiles != len(record.profiles):
            raise IncompatibleError(
                f"the engine of {bundle.path} has {self._engine.num_optimization_profiles} optimization profiles, its record "
                f"{len(record.profiles)}; run `merino-edge build {bundle.path}` again"
            )
        self.max_batch, self.max_prompt, self.max_context = record.max_batch, record.max_prompt, record.max_context
        self.vocab_size = bundle.arch.vocab_size
        self._head_dim = bundle.arch.head_dim
        self._caches = cache_tensor_names(bundle.arch)

        def dtype(tensor: str) -> np.dtype:
            return np.dtype(trt.nptype(self._engine.get_tensor_dtype(tensor)))

        b, s, t, v = self.max_batch, self.max_prompt, self.max_context, self.vocab_size
        self._ptr, self._stage = {}, {}
        for tensor, count in (("input_ids", b * s), ("position_ids", b * s), ("attention_mask", b * t), ("logits_to_keep", s)):
            kind = dtype(tensor)  # int64 from merino-edge's export; another exporter may say int32
            if kind.kind != "i":
                raise IncompatibleError(f"the engine of {bundle.path} takes {tensor} as {kind}, not integers; export the bundle with `merino-edge export`")
            self._ptr[tensor] = cuda.alloc(count * kind.itemsize)
            self._stage[tensor] = cuda.pinned((count,), kind)
        self._logits_dtype = dtype("logits")
        self._row_bytes = v * self._logits_dtype.itemsize
        self._logits = cuda.alloc(b * b * self._row_bytes)  # generation: at most one kept column per row
        self._score_logits: int | None = None  # [b, max_prompt, V], allocated by the first score()
        self._itemsizes = [dtype(past).itemsize for past, _, _ in self._caches]
        self._batch = self._pairs(b)
        self._side = self._pairs(1)
        self._last_logits = cuda.pinned((b, v), self._logits_dtype)

        self._contexts = {}
        for name in (CONTEXT, GENERATION):
            ctx = self._engine.create_execution_context(trt.ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE)
            ctx.set_optimization_profile_async(record.profile_index(name), cuda.stream)
            for tensor, ptr in self._ptr.items():
                ctx.set_tensor_address(tensor, ptr)
            self._contexts[name] = ctx
        cuda.synchronize()

    def _pairs(self, rows: int) -> _KVPairs:
        t, d = self.max_context, self._head_dim
        return _KVPairs([(self._cuda.alloc(rows * heads * t * d * size), self._cuda.alloc(rows * heads * t * d * size))
                         for (_, _, heads), size in zip(self._caches, self._itemsizes, strict=True)])

    # -------------------------------------------------------------- running

    def _run(self, profile: str, input_ids, position_ids, attention_mask, keep, logits: int, kv: _KVPairs, *, keep_cache: bool = True) -> None:
        """Enqueue one engine call on input_ids [b, seq] after the cached past in `kv`, logits [b, len(keep), V] to `logits`.

        present goes to the other buffer of each pair.
        """
        b, seq = input_ids.shape
        past = attention_mask.shape[1] - seq
        ctx = self._contexts[profile]
        self._cuda.synchronize()  # the previous call's uploads are done before the staging buffers are rewritten
        inputs = (("input_ids", input_ids), ("position_ids", position_ids), ("attention_mask", attention_mask), ("logits_to_keep", keep))
        for tensor, values in inputs:
            stage = self._stage[tensor][: values.size]
            stage[:] = values.ravel()
            self._cuda.to_device(self._ptr[tensor], stage)
            self._shape(ctx, profile, tensor, values.shape)
        ctx.set_tensor_address("logits", logits)
        for t, (past_name, present_name, heads) in enumerate(self._caches):
            self._shape(ctx, profile, past_name, (b, heads, past, self._head_dim))
            ctx.set_tensor_address(past_name, kv.past(t))
            ctx.set_tensor_address(present_name, kv.spare(t))
        if not ctx.execute_async_v3(self._cuda.stream):
            raise RuntimeError(f"TensorRT execution failed ({profile} profile, batch {b}, seq {seq}, past {past}); see its log above")
        if keep_cache:
            kv.swap()

    @staticmethod
    def _shape(ctx, profile: str, tensor: str, shape: tuple[int, ...]) -> None:
        if not ctx.set_input_shape(tensor, shape):
            raise InputError(f"{tensor} shape {tuple(shape)} is outside the engine's {profile} profile (see `merino-edge build --help` for its limits)")

    def _run_to_last(self, profile: str, input_ids, position_ids, attention_mask, last: np.ndarray, offset: int, kv: _KVPairs) -> None:
        """`_run` on columns offset.. of the batch, keeping the logits of the rows whose last token is among them.

        Those rows' logits are copied (enqueued) into `_last_logits`; a call
        where no row ends keeps one column, unused.
        """
        seq = input_ids.shape[1]
        rows = np.flatnonzero((last >= offset) & (last < offset + seq))
        keep, where = logits_columns(last[rows] - offset) if rows.size else (np.zeros(1, np.int64), ())
        self._run(profile, input_ids, position_ids, attention_mask, keep, self._logits, kv)
        for r, k in zip(rows, where, strict=True):
            self._cuda.to_host(self._last_logits[r], self._logits + (int(r) * len(keep) + int(k)) * self._row_bytes)

    def _forward(self, input_ids, position_ids, attention_mask, last, side=False):
        b, s = input_ids.shape
        past = attention_mask.shape[1] - s
        kv = self._side if side else self._batch
        with self._cuda.active():
            start = 0
            if past == 0:  # the prompt: as much as the context profile takes
                start = min(s, self.max_prompt)
                self._run_to_last(CONTEXT, input_ids[:, :start], position_ids[:, :start], attention_mask[:, :start], last, 0, kv)
            for t in range(start, s):  # then one token per call
                self._run_to_last(GENERATION, input_ids[:, t : t + 1], position_ids[:, t : t + 1], attention_mask[:, : past + t + 1], last, t, kv)
            self._cuda.synchronize()
        return np.array(self._last_logits[:b], dtype=np.float32)

    def _reset(self) -> None:
        pass  # the past length is the attention mask's; a prefill starts from an empty past

    def _allocate(self, rows: int) -> None:
        pass  # allocated at load, for the engine's max batch

    def _relayout(self, placements, rows, past, in_place):
        src_past = {True: self._side_length, False: self.past_length}
        with self._cuda.active():
            for t, ((_, _, heads), size) in enumerate(zip(self._caches, self._itemsizes, strict=True)):
                dst = self._batch.past(t) if in_place else self._batch.spare(t)
                row_bytes = heads * past * self._head_dim * size
                if in_place:
                    for k, *_ in placements:
                        self._cuda.zero(dst + k * row_bytes, row_bytes)
                else:
                    self._cuda.zero(dst, rows * row_bytes)
                plan = row_copies([(k, r, src_past[from_side], n) for k, from_side, r, n in placements], heads, past, self._head_dim, size)
                for (_, from_side, _, _), (dst_off, dst_pitch, src_off, src_pitch, width, height) in zip(placements, plan, strict=True):
                    src = self._side.past(t) if from_side else self._batch.past(t)
                    self._cuda.copy_2d(dst + dst_off, dst_pitch, src + src_off, src_pitch, width, height)
            self._cuda.synchronize()
        if not in_place:
            self._batch.swap()

    def score(self, input_ids, attention_mask=None) -> np.ndarray:
        ids, mask = self._check_inputs(input_ids, attention_mask)
        b, s = ids.shape
        if s > self.max_prompt:
            raise InputError(f"score: {s} tokens exceed the engine's max prompt of {self.max_prompt} (export the bundle with a larger --max-prompt and build again)")
        out = np.empty((b, s, self.vocab_size), dtype=self._logits_dtype)
        with self._cuda.active():
            if self._score_logits is None:
                self._score_logits = self._cuda.alloc(self.max_batch * self.max_prompt * self._row_bytes)
            self._run(CONTEXT, ids, positions_from_mask(mask), mask, np.arange(s, dtype=np.int64), self._score_logits, self._batch, keep_cache=False)
            self._cuda.to_host(out, self._score_logits)
            self._cuda.synchronize()
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        """Free the GPU memory now, from any thread (the backend is unusable afterwards)."""
        with self._cuda.active():  # TensorRT and pinned memory free into this device's context
            self._contexts, self._stage, self._last_logits, self._engine = {}, {}, None, None
        self._cuda.close()

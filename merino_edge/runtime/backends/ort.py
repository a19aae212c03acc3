"""ONNX Runtime backend: the bundle's graph on any installed execution provider.

The KV cache lives in buffers allocated once, at the bundle's max context:
per cache tensor (`past.{i}.key`, `past.{i}.value`) a pair of them (one in
the append form below) sized for the slots (or the largest padded batch),
and a one-row pair for the side cache where continuous batching prefills a
joining sequence.  A buffer holds
[rows, heads, capacity, head_dim] at its front; each step binds (IO binding,
by pointer) `past.{i}.*` to that, so nothing is allocated per token.

The graph hands back the cache in one of three forms (`cache_form`):

- concat (the FP16 graph, export/onnx.py): `present.{i}.*` = past + new is
  bound to the other buffer of the pair, shaped for past + seq, and the next
  step swaps them; the capacity is always the past length.
- append (the FP32 graph, export/onnx.py): `present.{i}.*` is the new
  columns alone; they are written into the buffer after the past, and the
  past stays where it is.  The capacity runs ahead of the past
  (`_capacity_for`); the columns beyond the past are hidden by the mask, and
  only when the past outgrows the capacity is the cache laid out again, in
  place, with room for a sixteenth more.  So a decode step reads the cache
  once and writes one column, where the concat form rewrites it all, and
  there is one buffer per cache tensor instead of two.
- shared (the int8 / int4 graphs, export/quantize.py): as append, but
  `present.{i}.*` is bound to the past's own buffer, [rows, heads, capacity,
  head_dim], and the graph's fused attention writes the new columns into it
  and reads only the first past + seq of them.

A join or leave writes the new or moved rows in place, or, when the columns
change, the whole batch cache into the spare buffer (`place_rows`; in the
append form into the same buffer, from a copy of the old rows).  On the
CPU the buffers are numpy arrays; on a GPU provider they are device
OrtValues, and a join, a leave, or an append goes through a host copy (the
FP16 graph, the one for GPUs, needs no appends).  Decode logits go to a
preallocated [max_batch, V] buffer as well.

A prompt runs in chunks of `prefill_chunk` tokens, each against the cache the
ones before it left, so that the activations of a 1,500-token prompt (its
attention scores above all, and ONNX Runtime's memory arena keeps its peak)
stay a few MB; in the append and shared forms the layout at least doubles from one chunk
to the next, so that its copies add up to one cache.  Measured on the 50M
arch at int4, a 1,500-token prompt: chunks of 64 tokens peak at 375 MiB RSS
and 4.1 s to the first token; 256 tokens, 536 MiB and 5.3 s; the whole
prompt at once, 1,205 MiB and 5.0 s.
"""

from __future__ import annotations

import numpy as np

from merino_edge.bundle import APPEND_AXIS, SHARED_AXIS, Bundle
from merino_edge.errors import IncompatibleError, InputError, MissingDependencyError
from merino_edge.runtime.backend import Backend, log, logits_columns, place_rows, positions_from_mask

_SHORT_PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_DEVICE_OF_PROVIDER = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def ort_module():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)") from None
    return onnxruntime


def cache_form(session) -> str:
    """How a model graph's session hands back the cache: "concat", "append" (export/onnx.py) or "shared" (export/quantize.py)."""
    axis = next(o for o in session.get_outputs() if o.name.startswith("present.")).shape[2]
    return {APPEND_AXIS: "append", SHARED_AXIS: "shared"}.get(axis, "concat")


def resolve_provider(provider: str | None) -> str:
    """Full ONNX Runtime provider name for `provider` ("cpu", "cuda", or a full name); CPU by default."""
    ort = ort_module()
    name = _SHORT_PROVIDER_NAMES.get((provider or "cpu").lower(), provider)
    available = ort.get_available_providers()
    if name not in available:
        raise MissingDependencyError(f"execution provider {provider!r} is not available in this onnxruntime (available: {', '.join(available)})")
    return name


class _KVBuffers:
    """Flat buffers per cache tensor, rows x heads x max_context x head_dim: the graph reads `past[t]`.

    `past[t]` holds [rows, heads, capacity, head_dim] at its front; the concat form writes `spare[t]`
    (`spare`: whether there is one).
    """

    def __init__(self, ort, rows: int, tensor_heads: list[int], max_context: int, head_dim: int, dtype, device: str, spare: bool):
        self.rows = rows
        self.capacity = 0

        def alloc(heads: int):
            size = rows * heads * max_context * head_dim
            return np.zeros(size, dtype) if device == "cpu" else ort.OrtValue.ortvalue_from_shape_and_type([size], dtype, device, 0)

        self.past = [alloc(h) for h in tensor_heads]
        self.spare = [alloc(h) for h in tensor_heads] if spare else []

    def swap(self) -> None:
        self.past, self.spare = self.spare, self.past


def _pointer(buffer) -> int:
    return buffer.ctypes.data if isinstance(buffer, np.ndarray) else buffer.data_ptr()


def _host(buffer) -> np.ndarray:
    """The buffer's contents on the host: itself on the CPU, a copy of a device OrtValue."""
    return buffer if isinstance(buffer, np.ndarray) else buffer.numpy()


def _commit(buffer, contents: np.ndarray) -> None:
    """Write back what `_host` gave (nothing to do on the CPU)."""
    if not isinstance(buffer, np.ndarray):
        buffer.update_inplace(contents)


class OrtBackend(Backend):
    name = "ort"
    prefill_chunk = 64  # prompt tokens per graph call: a long prompt's attention scores are heads x 64 x its length, not x its length squared

    def __init__(self, bundle: Bundle, *, threads: int | None = None, provider: str | None = None, precision: str | None = None):
        ort = ort_module()
        self.provider = resolve_provider(provider)
        self.device = _DEVICE_OF_PROVIDER.get(self.provider, "cpu")
        if precision is None:
            precision = self._auto_precision(bundle)
        self.precision = precision
        if threads is not None and threads < 1:
            raise InputError(f"threads: must be at least 1, got {threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(bundle.onnx_path(precision)), options, providers=[self.provider])
        self.threads = threads

        arch = bundle.arch
        self.heads = arch.layer_heads()
        self.head_dim = arch.head_dim
        self.vocab_size = arch.vocab_size
        self.max_context = bundle.max_context
        self.max_batch = bundle.max_batch
        self._check_graph()
        self._io = self.session.io_binding()
        self._tensor_heads = [h for h in self.heads for _ in ("key", "value")]  # per cache tensor, graph order
        self._batch: _KVBuffers | None = None
        self._side: _KVBuffers | None = None
        self._decode_logits = np.empty((self.max_batch, self.vocab_size), np.float32)
        self._new_columns = [np.empty(self.max_batch * h * self.head_dim, self.kv_dtype) for h in self._tensor_heads]  # append form, decode
        self._cache_binding: tuple | None = None  # what the cache is bound to (`_run`)

    def _auto_precision(self, bundle: Bundle) -> str:
        """fp16 on a GPU where the bundle has it; on a CPU the smallest graph within its stored quality bound."""
        if self.device == "cuda":
            return "fp16" if "fp16" in bundle.precisions else bundle.precisions[0]
        precision, reason = bundle.cpu_precision()
        log.info("precision auto: %s (%s)", precision, reason)
        return precision

    def _check_graph(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        expected = {"input_ids", "position_ids", "attention_mask", "logits_to_keep"}
        expected |= {f"past.{i}.{kv}" for i in range(len(self.heads)) for kv in ("key", "value")}
        if set(inputs) != expected:
            missing, extra = sorted(expected - set(inputs)), sorted(set(inputs) - expected)
            raise IncompatibleError(
                f"graph inputs are not those of the bundle's arch for this merino-edge (missing {missing}, unexpected {extra}); export the bundle again"
            )
        self.kv_dtype = ORT_DTYPES[inputs["past.0.key"].type]
        self.cache_form = cache_form(self.session)
        self.appends = self.cache_form != "concat"  # one buffer per cache tensor, laid out ahead of the past
        self.kv_value_bytes = np.dtype(self.kv_dtype).itemsize
        self.kv_buffers = 1 if self.appends else 2

    def _capacity_for(self, columns: int) -> int:
        """Columns to lay the cache out for, to hold `columns`: exactly those (concat form), or a sixteenth more, 16 at least."""
        if not self.appends:
            return columns
        return min(self.max_context, -(-(columns + max(16, columns // 16)) // 16) * 16)

    def _buffers(self, rows: int) -> _KVBuffers:
        self._cache_binding = None  # it holds the buffers it names: let the old ones go
        return _KVBuffers(ort_module(), rows, self._tensor_heads, self.max_context, self.head_dim, self.kv_dtype, self.device, spare=not self.appends)

    def _allocate(self, rows: int) -> None:
        if self._batch is None or self._batch.rows < rows:
            self._batch = self._buffers(rows)
        if self._side is None:
            self._side = self._buffers(1)

    def _reset(self) -> None:
        pass  # the cache length is the mask's: the next prefill binds an empty past and lays the cache out afresh

    def _forward(self, input_ids, position_ids, attention_mask, last, side=False):
        b, s = input_ids.shape
        past = attention_mask.shape[1] - s
        if side:
            kv = self._side
        else:
            if self._batch is None or self._batch.rows < b:
                self._batch = self._buffers(b)
            kv = self._batch
        logits = None
        for start in range(0, s, self.prefill_chunk):
            end = min(s, start + self.prefill_chunk)
            cached = past + start  # columns in the cache before this chunk
            if cached == 0:
                kv.capacity = self._capacity_for(end) if self.appends else 0
            elif self.appends and past + end > kv.capacity:  # at least double in a long prompt, so that its copies add up to one cache
                self._grow(kv, b, cached, self._capacity_for(min(past + s, max(past + end, 2 * kv.capacity))))
            part = self._run(kv, input_ids[:, start:end], position_ids[:, start:end], attention_mask[:, : past + end], np.clip(last - start, 0, end - start - 1))
            mine = (last >= start) & (last < end)  # the rows whose last column is in this chunk
            logits = part if logits is None else np.where(mine[:, None], part, logits)
        return logits

    def _run(self, kv: _KVBuffers, input_ids, position_ids, attention_mask, last) -> np.ndarray:
        """One graph call on `kv`, whose layout already has room for the new columns."""
        b, s = input_ids.shape
        past = attention_mask.shape[1] - s
        shared = self.cache_form == "shared"
        bound = kv.capacity if past or shared else 0  # past columns bound: the layout's, masked beyond `past` (or not read: shared)
        if bound > past and not shared:
            attention_mask = np.concatenate([attention_mask[:, :past], np.zeros((b, bound - past), np.int64), attention_mask[:, past:]], axis=1)
        io = self._io
        decoding = s == 1 and past > 0
        # A decode step binds the cache as the last one did unless its layout changed (not so in the concat form,
        # whose buffers swap): 2 bindings per layer execution, ~1 ms a step in Python on the 50M arch.
        cache_binding = (kv, b, bound) if decoding and self.appends else None
        fresh = cache_binding is None or cache_binding != self._cache_binding
        if fresh:
            io.clear_binding_inputs()
            io.clear_binding_outputs()
        self._bind_logits(b, decoding)  # output 0: bound before the cache, or again in its place
        if fresh:
            self._bind_cache(kv, b, bound, past + s, decoding)
        self._cache_binding = cache_binding
        io.bind_cpu_input("input_ids", input_ids)
        io.bind_cpu_input("position_ids", position_ids)
        io.bind_cpu_input("attention_mask", attention_mask)
        keep, where = logits_columns(last)
        io.bind_cpu_input("logits_to_keep", keep)
        self.session.run_with_iobinding(io)
        if self.cache_form == "append":
            new = [c[: b * h * self.head_dim].reshape(b, h, 1, self.head_dim) for c, h in zip(self._new_columns, self._tensor_heads, strict=True)] \
                if decoding else [v.numpy() for v in io.get_outputs()[1:]]
            for buffer, columns in zip(kv.past, new, strict=True):
                contents = _host(buffer)
                self._view(contents, columns.shape[1], b, kv.capacity)[:, :, past : past + s] = columns
                _commit(buffer, contents)
        elif self.cache_form == "concat":
            kv.swap()
            kv.capacity = past + s
        if decoding:
            return self._decode_logits[:b].copy()
        logits = io.get_outputs()[0].numpy()  # [b, keep, V]
        return logits[np.arange(b), where]

    def _bind_logits(self, b: int, decoding: bool) -> None:
        if decoding:
            self._io.bind_output("logits", "cpu", 0, np.float32, [b, 1, self.vocab_size], self._decode_logits.ctypes.data)
        else:
            self._io.bind_output("logits", "cpu")

    def _bind_cache(self, kv: _KVBuffers, b: int, bound: int, total: int, decoding: bool) -> None:
        """Bind `past.*` to `kv`'s layout ([b, heads, bound, head_dim]) and `present.*` as the graph's cache form wants."""
        io = self._io
        for t, h in enumerate(self._tensor_heads):
            name = f"{t // 2}.{('key', 'value')[t % 2]}"
            io.bind_input(f"past.{name}", self.device, 0, self.kv_dtype, [b, h, bound, self.head_dim], _pointer(kv.past[t]))
            if self.cache_form == "shared":  # the graph writes the new columns into the past's buffer itself
                io.bind_output(f"present.{name}", self.device, 0, self.kv_dtype, [b, h, bound, self.head_dim], _pointer(kv.past[t]))
            elif self.cache_form == "concat":
                io.bind_output(f"present.{name}", self.device, 0, self.kv_dtype, [b, h, total, self.head_dim], _pointer(kv.spare[t]))
            elif decoding:
                io.bind_output(f"present.{name}", "cpu", 0, self.kv_dtype, [b, h, 1, self.head_dim], self._new_columns[t].ctypes.data)
            else:
                io.bind_output(f"present.{name}", "cpu")

    def _view(self, contents: np.ndarray, heads: int, rows: int, capacity: int, columns: int | None = None) -> np.ndarray:
        """[rows, heads, capacity, head_dim] at the front of a flat buffer; its first `columns` only when given."""
        view = contents[: rows * heads * capacity * self.head_dim].reshape(rows, heads, capacity, self.head_dim)
        return view if columns is None else view[:, :, :columns]

    def _grow(self, kv: _KVBuffers, rows: int, past: int, capacity: int) -> None:
        """Lay `rows` rows of `past` columns out again for `capacity` columns, in the same buffer.

        numpy sees that the old and the new layout overlap and copies through a temporary, one cache tensor at a time.
        """
        for buffer, h in zip(kv.past, self._tensor_heads, strict=True):
            contents = _host(buffer)
            self._view(contents, h, rows, capacity, past)[:] = self._view(contents, h, rows, kv.capacity, past)
            _commit(buffer, contents)
        kv.capacity = capacity

    def _relayout(self, placements, rows, past, in_place):
        old_rows, old_past = self.batch_size, self.past_length
        batch_kv, side_kv = self._batch, self._side
        capacity = batch_kv.capacity if in_place else self._capacity_for(past)
        spare = not in_place and not self.appends  # the append form rewrites its one buffer, from a copy of the old rows
        for t, h in enumerate(self._tensor_heads):
            batch = self._view(_host(batch_kv.past[t]), h, batch_kv.rows if in_place else old_rows, batch_kv.capacity, old_past)
            if not in_place and self.appends:
                batch = batch.copy()
            side = self._view(_host(side_kv.past[t]), h, 1, side_kv.capacity, self._side_length)
            buffer = batch_kv.spare[t] if spare else batch_kv.past[t]
            target = _host(buffer)  # on the CPU the buffer itself (`batch` may view it too)
            place_rows(self._view(target, h, rows, capacity, past), [(k, side if from_side else batch, r, n) for k, from_side, r, n in placements])
            _commit(buffer, target)
        if spare:
            batch_kv.swap()
        batch_kv.capacity = capacity

    def _side_kv(self) -> list[np.ndarray]:
        side = self._side
        return [self._view(_host(buf), h, 1, side.capacity, self._side_length).copy() for buf, h in zip(side.past, self._tensor_heads, strict=True)]

    def _set_side_kv(self, arrays) -> None:
        side = self._side
        side.capacity = self._capacity_for(arrays[0].shape[2])
        for buf, kv in zip(side.past, arrays, strict=True):
            contents = _host(buf)
            self._view(contents, kv.shape[1], 1, side.capacity, kv.shape[2])[:] = kv
            _commit(buf, contents)

    def score(self, input_ids, attention_mask=None) -> np.ndarray:
        ids, mask = self._check_inputs(input_ids, attention_mask)
        b = ids.shape[0]
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions_from_mask(mask), "logits_to_keep": np.arange(ids.shape[1])}
        for i, h in enumerate(self.heads):
            for kv in ("key", "value"):
                feeds[f"past.{i}.{kv}"] = np.zeros((b, h, 0, self.head_dim), self.kv_dtype)
        return self.session.run(["logits"], feeds)[0]

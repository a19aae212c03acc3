"""ONNX Runtime backend: the bundle's graph on any installed execution provider.

The KV cache lives in buffers allocated once per batch size, at the bundle's
max context: two per layer execution and K/V ("ping" and "pong").  Each step
binds `past.{i}.*` to the front of one buffer and `present.{i}.*` to the
other, shaped for this step, and the next step swaps them, so nothing is
allocated or copied per token beyond what the graph's own Concat writes.
Decode logits go to a preallocated [max_batch, V] buffer as well.
"""

from __future__ import annotations

import numpy as np

from merino_edge.bundle import Bundle
from merino_edge.errors import IncompatibleError, InputError, MissingDependencyError
from merino_edge.runtime.backend import Backend, log, logits_columns, positions_from_mask

_SHORT_PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_DEVICE_OF_PROVIDER = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)") from None
    return onnxruntime


def resolve_provider(provider: str | None) -> str:
    """Full ONNX Runtime provider name for `provider` ("cpu", "cuda", or a full name); CPU by default."""
    ort = _ort()
    name = _SHORT_PROVIDER_NAMES.get((provider or "cpu").lower(), provider)
    available = ort.get_available_providers()
    if name not in available:
        raise MissingDependencyError(f"execution provider {provider!r} is not available in this onnxruntime (available: {', '.join(available)})")
    return name


class OrtBackend(Backend):
    name = "ort"

    def __init__(self, bundle: Bundle, *, threads: int | None = None, provider: str | None = None, precision: str | None = None):
        ort = _ort()
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
        self._rows = 0  # batch size the KV buffers are allocated for
        self._buffers: list[list] = []  # per layer execution: [key ping, value ping, key pong, value pong]
        self._decode_logits = np.empty((self.max_batch, self.vocab_size), np.float32)

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
        self.kv_dtype = _DTYPES[inputs["past.0.key"].type]

    def _ensure_buffers(self, rows: int) -> None:
        if rows <= self._rows:
            return
        ort = _ort()
        self._rows = rows
        self._buffers = [
            [ort.OrtValue.ortvalue_from_shape_and_type([rows * h * self.max_context * self.head_dim], self.kv_dtype, self.device, 0) for _ in range(4)]
            for h in self.heads
        ]

    def _reset(self) -> None:
        pass  # the cache length is the mask's: the next prefill binds an empty past

    def _forward(self, input_ids, position_ids, attention_mask, last):
        b, s = input_ids.shape
        past = attention_mask.shape[1] - s
        self._ensure_buffers(b)
        io = self._io
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        io.bind_cpu_input("input_ids", input_ids)
        io.bind_cpu_input("position_ids", position_ids)
        io.bind_cpu_input("attention_mask", attention_mask)
        keep, where = logits_columns(last)
        io.bind_cpu_input("logits_to_keep", keep)
        decoding = s == 1 and past > 0
        if decoding:
            io.bind_output("logits", "cpu", 0, np.float32, [b, 1, self.vocab_size], self._decode_logits.ctypes.data)
        else:
            io.bind_output("logits", "cpu")
        for i, (h, bufs) in enumerate(zip(self.heads, self._buffers, strict=True)):
            for kv, src, dst in (("key", bufs[0], bufs[2]), ("value", bufs[1], bufs[3])):
                io.bind_input(f"past.{i}.{kv}", self.device, 0, self.kv_dtype, [b, h, past, self.head_dim], src.data_ptr())
                io.bind_output(f"present.{i}.{kv}", self.device, 0, self.kv_dtype, [b, h, past + s, self.head_dim], dst.data_ptr())
            bufs[0], bufs[1], bufs[2], bufs[3] = bufs[2], bufs[3], bufs[0], bufs[1]
        self.session.run_with_iobinding(io)
        if decoding:
            return self._decode_logits[:b].copy()
        logits = io.get_outputs()[0].numpy()  # [b, keep, V]
        return logits[np.arange(b), where]

    def score(self, input_ids, attention_mask=None) -> np.ndarray:
        ids, mask = self._check_inputs(input_ids, attention_mask)
        b = ids.shape[0]
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions_from_mask(mask), "logits_to_keep": np.arange(ids.shape[1])}
        for i, h in enumerate(self.heads):
            for kv in ("key", "value"):
                feeds[f"past.{i}.{kv}"] = np.zeros((b, h, 0, self.head_dim), self.kv_dtype)
        return self.session.run(["logits"], feeds)[0]

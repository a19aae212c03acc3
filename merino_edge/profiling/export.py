"""Micro-graphs for `merino-edge profile`: every part of a MeRino model, alone.

One graph per part (see `merino_edge.device_profile`): the call overhead (an
empty graph), the embedding (token + position lookup and the attention bias,
which the whole model computes once), one `MeRinoLayer` per (E, R) of the
search space with a past K/V of dynamic length, every projection, the final
LayerNorm per width and the tied LM head.  They are the model's own modules,
exported the way whole models are, into a work directory with `graphs.json`
(the index `merino_edge.profiling.run` reads, torch-free, on the board).
Whole models for calibration and `profile validate` are exported here too.

`TorchRunner` times the same parts as torch modules (the torch backend).
The one module of `profiling` that imports torch.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import torch
from torch import nn

from merino_edge.arch import TABLE5, ArchSpec, Axes, Block, load_arch, save_arch
from merino_edge.device_profile import BackendInfo
from merino_edge.errors import InputError
from merino_edge.export.onnx import MIN_OPSET, _ExplicitCache, export_module, export_onnx
from merino_edge.fileio import write_json_atomic
from merino_edge.model.modeling import MeRinoLayer, MeRinoLayerNorm, attention_bias
from merino_edge.profiling.parts import ARCH_FILE, GRAPH_FILE, GRAPHS_FILE, Part, dims, example_input, graphs_index, read_graphs
from merino_edge.profiling.runner import Runner
from merino_edge.profiling.timing import Run
from merino_edge.profiling.whole_models import CALIBRATION_DIR, WholeModel, calibration_archs, model_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")

EPS = 1e-5
OPSET = MIN_OPSET


class LayerStep(nn.Module):
    """One `MeRinoLayer` over a past K/V: (x, attn_bias, past_key, past_value) -> (y, present_key, present_value).

    Unlike `export.onnx.LayerGraph` it takes the attention bias, not the mask: the
    whole model builds the bias once per step (the embedding part here), not per layer.
    """

    def __init__(self, width: int, ratio: float, head_dim: int):
        super().__init__()
        self.layer = MeRinoLayer(width, Block(width, ratio, 1).ffn_dim, head_dim, EPS)

    def forward(self, x, attn_bias, past_key, past_value):
        cache = _ExplicitCache([(past_key, past_value)])
        y = self.layer(x, attn_bias, cache, 0)
        return (y, *cache.presents[0])


class Embedding(nn.Module):
    """Token + position embeddings at P and the attention bias (both computed once per model step).

    The token lookup gathers columns of a [P, vocab] matrix, as the exported model
    does after storing the tied embedding once, as the head's weight.
    """

    def __init__(self, vocab_size: int, proj_dim: int, max_positions: int):
        super().__init__()
        self.head_weight = nn.Parameter(torch.randn(proj_dim, vocab_size) * 0.02)
        self.embed_positions = nn.Embedding(max_positions, proj_dim)

    def forward(self, input_ids, position_ids, attention_mask):
        tokens = self.head_weight[:, input_ids].permute(1, 2, 0)
        hidden = tokens + self.embed_positions(position_ids)
        return hidden, attention_bias(attention_mask, input_ids.shape[1])


class Head(nn.Module):
    """The tied LM head: P -> vocab, logits in float32 as the model returns them."""

    def __init__(self, proj_dim: int, vocab_size: int):
        super().__init__()
        self.lm_head = nn.Linear(proj_dim, vocab_size, bias=False)

    def forward(self, x):
        return self.lm_head(x).float()


class Overhead(nn.Module):
    """The cheapest possible graph: what one call into the backend costs."""

    def forward(self, x):
        return x + 0


# ------------------------------------------------------------------ parts


def build_module(part: Part, model: dict) -> nn.Module:
    """The torch module of one part (random weights: latency does not depend on them)."""
    kind = part.kind
    if kind == "overhead":
        return Overhead()
    if kind == "embedding":
        return Embedding(model["vocab_size"], model["proj_dim"], model["max_positions"])
    if kind == "layer":
        return LayerStep(part.width, part.ratio, model["head_dim"])
    if kind == "projection":
        return nn.Linear(part.in_dim, part.out_dim, bias=False)
    if kind == "final_norm":
        return MeRinoLayerNorm(part.width, eps=EPS)
    if kind == "head":
        return Head(model["proj_dim"], model["vocab_size"])
    raise InputError(f"unknown part kind {kind!r}")


def _example_inputs(part: Part, model: dict, seq_len: int, past_len: int, dtype: torch.dtype, device="cpu") -> tuple:
    """Tensors for a part's inputs; float inputs in `dtype` except the float32 attention bias."""
    rng = np.random.default_rng(0)
    out = []
    for name, template in part.inputs.items():
        value = example_input(name, dims(template, seq_len, past_len), np.float32, model["vocab_size"], past_len, rng)
        tensor = torch.from_numpy(value).to(device)
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32 if name == "attn_bias" else dtype)
        out.append(tensor)
    return tuple(out)


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def export_part(part: Part, model: dict, path: Path, precision: str = "fp32") -> Path:
    """Export one part to ONNX, with the dynamic axes of its shape templates, as whole models are exported.

    FP16 casts the module and its float inputs but keeps the attention bias
    float32, as in the FP16 model graph.
    """
    dtype = _DTYPES[precision]
    module = build_module(part, model).eval().to(dtype)
    args = _example_inputs(part, model, seq_len=3, past_len=2, dtype=dtype)
    symbols = {"s": "seq", "c": "past", "t": "total"}
    dynamic = {name: {i: symbols[d] for i, d in enumerate(t) if isinstance(d, str)} for name, t in {**part.inputs, **part.outputs}.items()}
    return export_module(module, args, list(part.inputs), list(part.outputs), dynamic, path, opset=OPSET)


def export_micro_graphs(workdir: str | Path, *, precision: str = "fp32", axes: Axes = TABLE5, progress: bool = True, **model) -> Path:
    """Export every part into `workdir` (skipping graphs already there) and write graphs.json last.

    A work directory from an older merino-edge gets the parts it lacks.

    `model` overrides vocab_size, proj_dim, head_dim or max_positions (tests use small ones).
    """
    from tqdm import tqdm

    if precision not in _DTYPES:
        raise InputError(f"precision {precision!r}: choose fp32 or fp16")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    exporter = {"torch": torch.__version__.split("+")[0], "opset": str(OPSET)}
    graphs = graphs_index(precision, axes, exporter=exporter, **model)
    index, model = graphs.to_json(), graphs.model
    index_path = workdir / GRAPHS_FILE
    if index_path.exists():
        old = json.loads(index_path.read_text())
        if {k: old.get(k) for k in ("precision", "space", "model")} != {k: index[k] for k in ("precision", "space", "model")}:
            raise InputError(f"{workdir} holds micro-graphs for another precision, space or model; use another --workdir")
        if old.get("parts") == index["parts"]:
            return index_path
    with torch.no_grad():
        for part in tqdm(graphs.parts, desc="export micro-graphs", disable=not progress):
            done = workdir / f".{part.name}.done"
            if not done.exists():
                export_part(part, model, workdir / part.file, precision)
                done.touch()
    write_json_atomic(index_path, index)
    return index_path


def export_validation_models(archs: list[ArchSpec], models_dir: str | Path, *, precision: str = "fp32", progress: bool = True) -> list[WholeModel]:
    """Export each arch (random weights) as a whole model graph into `models_dir/arch_NN/` for `profile validate`.

    Folders already holding the same arch are kept, so an interrupted run continues.
    Returns the models, in the order of `archs`.
    """
    from tqdm import tqdm

    from merino_edge.model import MeRinoConfig, MeRinoForCausalLM

    if precision not in _DTYPES:
        raise InputError(f"precision {precision!r}: choose fp32 or fp16")
    folders = [Path(models_dir) / f"arch_{k:02d}" for k in range(len(archs))]
    for k, (arch, folder) in enumerate(tqdm(list(zip(archs, folders, strict=True)), desc="export models", disable=not progress)):
        if (folder / ARCH_FILE).exists() and (folder / GRAPH_FILE).exists() and load_arch(folder / ARCH_FILE) == arch:
            continue
        (folder / ARCH_FILE).unlink(missing_ok=True)
        torch.manual_seed(k)
        model = MeRinoForCausalLM(MeRinoConfig.from_arch(arch)).eval()
        export_onnx(model, folder / GRAPH_FILE, fp16=precision == "fp16")
        save_arch(folder / ARCH_FILE, arch)  # last: marks the folder complete
    return [model_dir(folder) for folder in folders]


def export_calibration_models(workdir: str | Path, n: int, *, precision: str = "fp32", progress: bool = True) -> list[WholeModel]:
    """The `n` whole models a profile of the micro-graphs in `workdir` calibrates on, exported into its calibration folder."""
    archs = calibration_archs(read_graphs(workdir), n)
    return export_validation_models(archs, Path(workdir) / CALIBRATION_DIR, precision=precision, progress=progress)


# ------------------------------------------------------------ torch backend


class TorchRunner(Runner):
    """Times the torch modules of the parts themselves (the graphs index is built, not read from a work dir).

    `model` overrides the model dims of the index (vocab_size, proj_dim, head_dim, max_positions).
    """

    def __init__(self, precision: str = "fp32", device: str | None = None, threads: int | None = None, axes: Axes = TABLE5, **model):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if precision not in _DTYPES:
            raise InputError(f"precision {precision!r}: choose fp32 or fp16")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError("--backend torch on cuda: no CUDA device is visible")
        if threads:
            torch.set_num_threads(threads)
        self.graphs = graphs_index(precision, axes, **model)
        self.model, self.dtype, self.device = self.graphs.model, _DTYPES[precision], torch.device(device)
        self.gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        self._modules: dict[str, nn.Module] = {}
        self.backend_info = BackendInfo(
            name="torch",
            precision=precision,
            provider=str(self.device),
            versions={"torch": torch.__version__.split("+")[0], "python": platform.python_version()},
        )

    def flush(self, nbytes: int) -> Run:
        """A callable that evicts the device's caches by writing `nbytes` (for cold decode timings)."""
        buffer = torch.zeros(max(nbytes, 4) // 4, device=self.device)

        def run() -> None:
            buffer.add_(1.0)
            self._sync()

        return run

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def bind(self, part: Part, seq_len: int, past_len: int) -> Run:
        if part.name not in self._modules:
            self._modules.clear()
            self._modules[part.name] = build_module(part, self.model).eval().to(self.device, self.dtype)
        module = self._modules[part.name]
        args = _example_inputs(part, self.model, seq_len, past_len, self.dtype, self.device)

        def run() -> None:
            with torch.inference_mode():
                module(*args)
            self._sync()

        return run

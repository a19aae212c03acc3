"""The PyTorch reference backend: the checkpoint's `MeRinoForCausalLM` with a `DynamicCache`.

For checking the other backends and for debugging on a workstation; never
imported unless asked for (`create_backend(bundle, "torch")`), since the board
has no torch.  A bundle holds no torch weights, so this backend loads the
checkpoint the bundle was exported from (recorded in its manifest).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from merino_edge.bundle import DEFAULT_MAX_BATCH, Bundle
from merino_edge.errors import InputError, MissingDependencyError
from merino_edge.runtime.backend import Backend, positions_from_mask


class TorchBackend(Backend):
    name = "torch"
    precision = "fp32"

    def __init__(self, bundle: Bundle, *, threads: int | None = None, provider: str | None = None, precision: str | None = None):
        checkpoint = bundle.manifest.source.get("checkpoint")
        if not checkpoint or not Path(checkpoint, "config.json").is_file():
            raise InputError(f"the torch backend needs the checkpoint bundle {bundle.path} was exported from ({checkpoint or 'not recorded'}), and it is not there")
        self._load(checkpoint, max_context=bundle.max_context, max_batch=bundle.max_batch, threads=threads, precision=precision)

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str | Path, *, max_context: int | None = None, max_batch: int = DEFAULT_MAX_BATCH, threads: int | None = None) -> TorchBackend:
        backend = cls.__new__(cls)
        backend._load(ckpt_dir, max_context=max_context, max_batch=max_batch, threads=threads, precision=None)
        return backend

    def _load(self, ckpt_dir, *, max_context, max_batch, threads, precision) -> None:
        if precision not in (None, "fp32"):
            raise InputError(f"the torch backend runs fp32 only, not {precision}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            from transformers import AutoModelForCausalLM, DynamicCache

            import merino_edge.model  # noqa: F401  (registers the Auto classes)
        except ImportError as exc:
            raise MissingDependencyError(f"the torch backend needs torch and transformers: pip install merino-edge[train] ({exc})") from None
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._cache_class = DynamicCache
        self.model = AutoModelForCausalLM.from_pretrained(str(ckpt_dir)).eval()
        self.vocab_size = self.model.config.vocab_size
        self.max_context = max_context or self.model.config.max_position_embeddings
        self.max_batch = max_batch
        self._cache = None

    def _reset(self) -> None:
        self._cache = None

    def _forward(self, input_ids, position_ids, attention_mask, last):
        torch = self._torch
        if self._cache is None:
            self._cache = self._cache_class(config=self.model.config)
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.from_numpy(input_ids),
                attention_mask=torch.from_numpy(attention_mask),
                position_ids=torch.from_numpy(position_ids),
                cache=self._cache,
                use_cache=True,
                logits_to_keep=input_ids.shape[1] - int(last.min()),  # the head runs from the first column asked for
            )
        logits = out.logits.numpy()
        return logits[np.arange(len(last)), last - last.min()]

    def score(self, input_ids, attention_mask=None) -> np.ndarray:
        torch = self._torch
        ids, mask = self._check_inputs(input_ids, attention_mask)
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                position_ids=torch.from_numpy(positions_from_mask(mask)),
                use_cache=False,
            )
        return out.logits.numpy()

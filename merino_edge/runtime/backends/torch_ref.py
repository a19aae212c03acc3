"""The PyTorch reference backend: the checkpoint's `MeRinoForCausalLM` with a `DynamicCache`.

For checking the other backends and for debugging on a workstation; never
imported unless asked for (`create_backend(bundle, "torch")`), since the board
has no torch.  A bundle holds no torch weights, so this backend loads the
checkpoint the bundle was exported from (recorded in its manifest).  Slot
mode rebuilds the `DynamicCache` from numpy copies on every join and leave
(`place_rows`); memory use is not this backend's concern.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from merino_edge.bundle import DEFAULT_MAX_BATCH, Bundle
from merino_edge.errors import InputError, MissingDependencyError
from merino_edge.runtime.backend import Backend, place_rows, positions_from_mask


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
        self._cache = self._side = None

    def _reset(self) -> None:
        self._cache = None

    def _allocate(self, rows: int) -> None:
        pass  # DynamicCache grows as it goes

    def _forward(self, input_ids, position_ids, attention_mask, last, side=False):
        torch = self._torch
        if side and attention_mask.shape[1] == input_ids.shape[1]:
            self._side = None  # a prefill from scratch
        cache = (self._side if side else self._cache) or self._cache_class(config=self.model.config)
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.from_numpy(input_ids),
                attention_mask=torch.from_numpy(attention_mask),
                position_ids=torch.from_numpy(position_ids),
                cache=cache,
                use_cache=True,
                logits_to_keep=input_ids.shape[1] - int(last.min()),  # the head runs from the first column asked for
            )
        if side:
            self._side = cache
        else:
            self._cache = cache
        logits = out.logits.numpy()
        return logits[np.arange(len(last)), last - last.min()]

    @staticmethod
    def _arrays(cache) -> list[np.ndarray]:
        """K and V of every layer execution, graph order (empty for no cache)."""
        return [] if cache is None else [t.numpy() for layer in cache.layers for t in (layer.keys, layer.values)]

    def _from_arrays(self, arrays: list[np.ndarray]):
        cache = self._cache_class(config=self.model.config)
        for i in range(0, len(arrays), 2):
            cache.update(self._torch.from_numpy(arrays[i]), self._torch.from_numpy(arrays[i + 1]), i // 2)
        return cache

    def _relayout(self, placements, rows, past, in_place):
        batch, side = self._arrays(self._cache), self._arrays(self._side)
        out = []
        for t, like in enumerate(side or batch):
            dst = np.zeros((rows, like.shape[1], past, like.shape[3]), like.dtype)
            if in_place:
                kept = min(rows, batch[t].shape[0])
                dst[:kept] = batch[t][:kept]
            place_rows(dst, [(k, (side if from_side else batch)[t], r, n) for k, from_side, r, n in placements])
            out.append(dst)
        self._cache = self._from_arrays(out)

    def _side_kv(self) -> list[np.ndarray]:
        return [a.copy() for a in self._arrays(self._side)]

    def _set_side_kv(self, arrays) -> None:
        self._side = self._from_arrays([a.copy() for a in arrays])

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

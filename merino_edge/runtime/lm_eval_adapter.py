"""lm-evaluation-harness model `merino-edge`: zero-shot scoring on the deployed runtime.

Registered with lm-eval on import, so after `import merino_edge.runtime.lm_eval_adapter`

    lm_eval.simple_evaluate(model="merino-edge", model_args="bundle=out/bundle,backend=ort", tasks=[...])

scores a bundle through the same backends `serve` uses (ONNX Runtime,
TensorRT, or the torch reference).  Tokenization follows lm-eval's
`TemplateLM`: a (context, continuation) pair is encoded whole and split, and
an empty context (and the first window of a rolling score) is conditioned on
eos, the document separator the trainer puts between documents.

lm-eval does not import torch, so this module stays inside the torch-free
runtime; it is imported only by `merino-edge eval`, as lm-eval is an optional
dependency (`pip install 'merino-edge[eval]'`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from merino_edge.errors import MissingDependencyError

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError:  # pragma: no cover - depends on the install
    raise MissingDependencyError("merino-edge eval needs lm-evaluation-harness: pip install 'merino-edge[eval]'") from None

from merino_edge.bundle import Bundle
from merino_edge.runtime.backend import Backend, create_backend
from merino_edge.tokenizer import Tokenizer

DEFAULT_BATCH = 8
# Rows of one scoring batch times their length: bounds the [b, s, vocab] logits
# (4096 tokens of a 32k vocabulary in float32 is 0.5 GB).
DEFAULT_BATCH_TOKENS = 4096
DEFAULT_MAX_GEN_TOKENS = 256


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log-probabilities over the last axis, in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@register_model("merino-edge")
class MerinoEdgeLM(TemplateLM):
    """An lm-eval model over a merino-edge bundle.

    bundle: a bundle directory (or a loaded `Bundle`); backend: "auto", "ort",
    "tensorrt", "torch", or a ready `Backend`.  Strings from lm-eval's
    `model_args` (e.g. `batch_size=8`) are accepted too.
    """

    def __init__(
        self,
        bundle: str | Path | Bundle,
        backend: str | Backend = "auto",
        batch_size: int | str = DEFAULT_BATCH,
        threads: int | str | None = None,
        precision: str | None = None,
        provider: str | None = None,
        max_batch_tokens: int | str = DEFAULT_BATCH_TOKENS,
        max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKENS,
        **_lm_eval_options,  # device, max_batch_size: lm-eval passes them to every model
    ) -> None:
        super().__init__()
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(Path(bundle))
        if isinstance(backend, Backend):
            self.runtime = backend
        else:
            self.runtime = create_backend(self.bundle, backend, threads=int(threads) if threads else None, provider=provider, precision=precision)
        self.tokenizer = Tokenizer(self.bundle.tokenizer_path)
        self.batch_size = max(1, min(int(batch_size) if str(batch_size).isdigit() else DEFAULT_BATCH, self.runtime.max_batch))
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_gen_toks = int(max_gen_toks)

    # ------------------------------------------------------------ TemplateLM

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self.runtime.max_context

    @property
    def tokenizer_name(self) -> str:
        return f"sentencepiece-{self.tokenizer.sha256[:12]}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def get_model_info(self) -> dict:
        return {"bundle": str(self.bundle.path), "backend": self.runtime.name, "precision": self.runtime.precision}

    # ------------------------------------------------------------- scoring

    def _batches(self, rows: list[tuple[list[int], int]]):
        """Indices of `rows` (input ids, continuation length), longest first, in batches under the token budget."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        batch: list[int] = []
        for i in order:
            width = len(rows[batch[0]][0]) if batch else len(rows[i][0])
            if batch and (len(batch) >= self.batch_size or (len(batch) + 1) * width > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding gives it) per request.

        requests: (cache key, context ids, continuation ids); a sequence longer
        than the context window keeps its last `max_length` + 1 tokens.
        """
        rows = []
        for _, context, continuation in requests:
            whole = (list(context) + list(continuation))[-(self.max_length + 1) :]
            rows.append((whole[:-1], whole[-min(len(continuation), len(whole) - 1) :]))
        results: list[tuple[float, bool] | None] = [None] * len(rows)
        pad = self.tokenizer.pad_id
        with tqdm(total=len(rows), desc="merino-edge scoring", disable=disable_tqdm) as bar:
            for batch in self._batches(rows):
                width = len(rows[batch[0]][0])
                ids = np.full((len(batch), width), pad, np.int64)
                mask = np.zeros((len(batch), width), np.int64)
                for r, i in enumerate(batch):
                    n = len(rows[i][0])
                    ids[r, :n], mask[r, :n] = rows[i][0], 1
                logits = self.runtime.score(ids, mask)
                for r, i in enumerate(batch):
                    inp, target = rows[i]
                    logp = log_softmax(logits[r, len(inp) - len(target) : len(inp)])
                    target_arr = np.asarray(target)
                    answer = (float(logp[np.arange(len(target)), target_arr].sum()), bool((logp.argmax(axis=-1) == target_arr).all()))
                    results[i] = answer
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
                bar.update(len(batch))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts: disjoint windows of the context length, every token scored once."""
        windows, owner = [], []
        for k, (text,) in enumerate(req.args for req in requests):
            for context, continuation in map(
                make_disjoint_window,
                get_rolling_token_windows(self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1),
            ):
                windows.append((None, context, continuation))
                owner.append(k)
        totals = [0.0] * len(requests)
        for k, (ll, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm), strict=True):
            totals[k] += ll
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ----------------------------------------------------------- generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, each stopped at the first of its `until` strings or eos."""
        from merino_edge.runtime import Generator, SamplingParams

        generator = Generator(self.runtime, self.tokenizer)
        out = []
        for req in tqdm(requests, desc="merino-edge generating", disable=disable_tqdm):
            context, options = req.args
            until = options.get("until") or []
            stop = (until,) if isinstance(until, str) else tuple(until)
            max_tokens = min(int(options.get("max_gen_toks", self.max_gen_toks)), self.max_length - 1)
            prompt = self.tok_encode(context)[-(self.max_length - max_tokens) :] or [self.prefix_token_id]
            completion = generator.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=stop))
            out.append(completion.text)
            self.cache_hook.add_partial("generate_until", req.args, completion.text)
        return out

"""Sampling parameters and the token sampler (numpy only).

Order of operations on one row of logits, as in `transformers`: repetition
penalty (CTRL: a seen token's positive logit is divided by the penalty, a
negative one multiplied), then temperature, top-k, top-p (nucleus: the
smallest set of tokens whose probability reaches p), then one draw from a
seeded `numpy.random.Generator`.  Temperature 0 is greedy (argmax; ties go to
the lowest id), and so is any temperature below MIN_TEMPERATURE: dividing by
less would overflow float64 for large logits.  The repetition penalty lies in
[MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY], so that the scaled logits of
any float32 model (|x| < 3.4e38) stay finite: no NaN can reach the draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from merino_edge.errors import InputError

MIN_TEMPERATURE = 1e-6
MIN_REPETITION_PENALTY = 1e-3
MAX_REPETITION_PENALTY = 10.0


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop.

    `stop` strings are cut from the text (never emitted); `stop_token_ids` (and
    the tokenizer's eos, unless `ignore_eos`) end generation too.
    `should_stop`, if given, is polled before every token: returning True
    ends generation with finish_reason "cancelled".
    """

    max_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    should_stop: Callable[[], bool] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        checks = [
            ("max_tokens", isinstance(self.max_tokens, int) and not isinstance(self.max_tokens, bool) and self.max_tokens >= 1, "an integer >= 1"),
            ("temperature", _finite(self.temperature) and self.temperature >= 0, "a number >= 0"),
            ("top_k", isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 0, "an integer >= 0 (0 = off)"),
            ("top_p", _finite(self.top_p) and 0 < self.top_p <= 1, "a number in (0, 1]"),
            ("repetition_penalty", _finite(self.repetition_penalty) and MIN_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY,
             f"a number in [{MIN_REPETITION_PENALTY}, {MAX_REPETITION_PENALTY}]"),
            ("seed", self.seed is None or (isinstance(self.seed, int) and self.seed >= 0), "a non-negative integer"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "non-empty strings"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise InputError(f"{name}: must be {what}, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class Sampler:
    """Picks the next token of one sequence; holds its rng and its seen-token set."""

    def __init__(self, params: SamplingParams, vocab_size: int):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.seen = np.zeros(vocab_size, dtype=bool) if params.repetition_penalty != 1.0 else None

    def observe(self, token_ids) -> None:
        """Mark tokens (prompt or generated) as seen for the repetition penalty."""
        if self.seen is not None:
            self.seen[np.asarray(token_ids, dtype=np.int64)] = True

    def __call__(self, logits: np.ndarray) -> int:
        """One token id from logits [vocab]."""
        p = self.params
        x = logits.astype(np.float64, copy=True)
        if self.seen is not None:
            seen = self.seen[: x.shape[0]]
            x[seen] = np.where(x[seen] > 0, x[seen] / p.repetition_penalty, x[seen] * p.repetition_penalty)
        if p.greedy:
            return int(np.argmax(x))
        x /= p.temperature
        if 0 < p.top_k < x.shape[0]:
            kth = np.partition(x, -p.top_k)[-p.top_k]
            x[x < kth] = -np.inf
        probs = np.exp(x - x.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cumulative, p.top_p)) + 1]
            nucleus = np.zeros_like(probs)
            nucleus[keep] = probs[keep]
            probs = nucleus / nucleus.sum()
        return int(np.searchsorted(np.cumsum(probs), self.rng.random() * probs.sum(), side="right").clip(0, probs.shape[0] - 1))

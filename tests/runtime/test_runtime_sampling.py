"""The sampler on hand-made logits: greedy, top-k, top-p, temperature, repetition penalty, seeds."""

from __future__ import annotations

import numpy as np

from merino_edge.runtime.sampling import Sampler, SamplingParams

LOGITS = np.log(np.array([0.05, 0.4, 0.3, 0.15, 0.1]))


def draws(n=2000, **kwargs) -> np.ndarray:
    sampler = Sampler(SamplingParams(seed=0, **kwargs), vocab_size=len(LOGITS))
    return np.array([sampler(LOGITS) for _ in range(n)])


def test_greedy_is_argmax():
    assert set(draws(50, temperature=0)) == {1}


def test_full_distribution_is_sampled_in_proportion():
    freq = np.bincount(draws(), minlength=5) / 2000
    np.testing.assert_allclose(freq, np.exp(LOGITS), atol=0.04)


def test_top_k_keeps_only_the_k_best():
    assert set(draws(top_k=2)) == {1, 2}


def test_top_p_keeps_the_nucleus():
    assert set(draws(top_p=0.75)) == {1, 2, 3}  # 0.4 + 0.3 < 0.75 <= 0.4 + 0.3 + 0.15
    assert set(draws(top_p=0.3)) == {1}


def test_low_temperature_sharpens():
    assert np.mean(draws(temperature=0.2) == 1) > 0.75


def test_repetition_penalty_demotes_seen_tokens():
    sampler = Sampler(SamplingParams(temperature=0, repetition_penalty=3.0), vocab_size=5)
    assert sampler(np.array([0.0, 3.0, 2.0, -1.0, 0.5])) == 1
    sampler.observe([1])
    assert sampler(np.array([0.0, 3.0, 2.0, -1.0, 0.5])) == 2  # 3.0 / 3 = 1.0 < 2.0
    sampler.observe([2])
    assert sampler(np.array([0.0, 3.0, 2.0, -1.0, 0.5])) == 1  # 1.0 > 2.0 / 3 and 0.5


def test_same_seed_same_draws_other_seed_other_draws():
    a = Sampler(SamplingParams(seed=11), vocab_size=5)
    b = Sampler(SamplingParams(seed=11), vocab_size=5)
    c = Sampler(SamplingParams(seed=12), vocab_size=5)
    first = [a(LOGITS) for _ in range(50)]
    assert first == [b(LOGITS) for _ in range(50)]
    assert first != [c(LOGITS) for _ in range(50)]

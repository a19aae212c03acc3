"""The sampler on hand-made logits: greedy, top-k, top-p, temperature, repetition penalty, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from merino_edge.errors import InputError
from merino_edge.runtime.sampling import MAX_REPETITION_PENALTY, MIN_REPETITION_PENALTY, MIN_TEMPERATURE, Sampler, SamplingParams

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


def test_a_temperature_below_the_minimum_is_greedy_and_never_nan():
    huge = np.array([3.0e38, -3.0e38, 2.9e38, 0.0], np.float32)  # float32 extremes
    for t in (5e-324, 1e-300, 1e-7):
        sampler = Sampler(SamplingParams(temperature=t, seed=0), vocab_size=4)
        assert sampler(LOGITS) == 1 and sampler(huge) == 0
    sampler = Sampler(SamplingParams(temperature=MIN_TEMPERATURE, repetition_penalty=MIN_REPETITION_PENALTY, seed=0), vocab_size=4)
    sampler.observe([2])
    assert all(sampler(huge) in (0, 2) for _ in range(20))  # finite scaled logits: a real draw, not an index from NaN


@pytest.mark.parametrize("penalty", [1e-300, MIN_REPETITION_PENALTY / 2, MAX_REPETITION_PENALTY * 1.01, 0.0])
def test_a_repetition_penalty_that_could_overflow_is_refused(penalty):
    with pytest.raises(InputError, match="repetition_penalty"):
        SamplingParams(repetition_penalty=penalty)

import json
from pathlib import Path

import numpy as np
import pytest
from cache_profiles import calibrated

from merino_edge.arch import Axes
from merino_edge.errors import InputError
from merino_edge.search.budgets import Budget, Costs
from merino_edge.search.latency import LatencyModel
from merino_edge.search.space import SearchSpace

PROFILE = Path(__file__).parent / "data" / "search_profile.json"  # hand-made: widths 64-256, ratios 1-2, depths 1-2
SMALL = SearchSpace(Axes(widths=(64, 128, 256), ratios=(1.0, 2.0), depths=(1, 2)), blocks=3)


def test_tabulated_costs_equal_the_cost_model_on_random_archs():
    space = SearchSpace()
    budget = Budget(params=10**12, flops=10**15, memory=10**13, flops_seq_len=512, memory_context=1000, memory_bytes_per_value=4)
    costs = Costs(space, budget)
    genomes = space.sample(np.random.default_rng(0), 200)
    values = costs.evaluate(genomes)
    for i, genome in enumerate(genomes):
        arch = space.to_arch(genome)
        assert values["params"][i] == arch.params()
        assert values["flops"][i] == arch.flops(512).total
        assert values["memory"][i] == arch.memory_bytes(1000, 4)


def test_tabulated_paper_flops_equal_the_cost_model_in_that_convention():
    space = SearchSpace(vocab_size=50272)
    costs = Costs(space, Budget(flops=10**15, flops_convention="paper"))
    genomes = space.sample(np.random.default_rng(3), 200)
    values = costs.evaluate(genomes)["flops"]
    for genome, value in zip(genomes, values, strict=True):
        flops = space.to_arch(genome).flops()
        assert value == flops.count("paper") == (flops.total - flops.head) // 2


def test_a_budget_without_a_flops_convention_reads_as_full():
    paper = Budget(flops=110 * 10**9, flops_convention="paper")
    assert Budget.from_json(paper.to_json()).flops_convention == "paper"
    old = {k: v for k, v in paper.to_json().items() if k != "flops_convention"}
    assert Budget.from_json(old).flops_convention == "full"
    with pytest.raises(InputError, match="flops_convention"):
        Budget(flops=1, flops_convention="macs")


def test_tabulated_latency_equals_the_latency_model():
    latency = LatencyModel.from_file(PROFILE, axes=SMALL.axes)
    costs = Costs(SMALL, Budget(latency_ms=100.0, latency_context=300), latency)
    genomes = SMALL.sample(np.random.default_rng(1), 100)
    predicted = costs.evaluate(genomes)["latency_ms"]
    for genome, value in zip(genomes, predicted, strict=True):
        assert value == pytest.approx(latency.decode_ms(SMALL.to_arch(genome), 300), rel=1e-12)


def test_feasible_applies_every_budget():
    space = SearchSpace()
    genomes = space.sample(np.random.default_rng(2), 500)
    loose = Costs(space, Budget(params=60 * 10**6))
    both = Costs(space, Budget(params=60 * 10**6, flops=100 * 10**9))
    p, f = loose.evaluate(genomes)["params"], both.evaluate(genomes)["flops"]
    assert np.array_equal(loose.feasible(genomes), p <= 60e6)
    assert np.array_equal(both.feasible(genomes), (p <= 60e6) & (f <= 100e9))
    assert 0 < both.feasible(genomes).sum() < loose.feasible(genomes).sum()


def test_budget_json_round_trip_and_description():
    budget = Budget(params=64 * 10**6, flops=60 * 10**9, memory=2**30, latency_ms=30.0, latency_context=256)
    assert Budget.from_json(budget.to_json()) == budget
    text = budget.describe()
    assert "params <= 64M" in text and "FLOPs <= 60G" in text and "30 ms" in text
    assert list(budget.limits()) == ["params", "flops", "memory", "latency_ms"]


@pytest.mark.parametrize("kw, word", [({"params": -1}, "params"), ({"flops": 0}, "flops"), ({"latency_ms": float("nan")}, "latency_ms"), ({"memory_context": -5}, "memory_context")])
def test_bad_budgets_are_input_errors(kw, word):
    with pytest.raises(InputError, match=word):
        Budget(**kw)


def test_the_latency_limit_is_the_budget_less_its_margin():
    assert Budget(latency_ms=20.0, latency_margin=0.05).limits()["latency_ms"] == pytest.approx(19.0)
    assert Budget(latency_ms=20.0).limits()["latency_ms"] == 20.0
    assert "5 % below it" in Budget(latency_ms=20.0, latency_margin=0.05).describe()
    with pytest.raises(InputError, match="latency_margin"):
        Budget(latency_ms=20.0, latency_margin=1.0)


def test_latency_budget_needs_a_profile():
    with pytest.raises(InputError, match="profile"):
        Costs(SMALL, Budget(latency_ms=10.0))


def test_a_calibrated_latency_is_combined_from_its_tabulated_terms():
    """warm + mu(traffic) * penalty is not additive; its three terms are, and evaluate combines them."""
    profile = calibrated(json.loads(PROFILE.read_text()), SMALL, context=300)
    latency = LatencyModel(profile)
    costs = Costs(SMALL, Budget(latency_ms=100.0, latency_context=300), latency)
    genomes = SMALL.sample(np.random.default_rng(1), 100)
    predicted = costs.evaluate(genomes)["latency_ms"]
    for genome, value in zip(genomes, predicted, strict=True):
        assert value == pytest.approx(latency.decode_ms(SMALL.to_arch(genome), 300), rel=1e-12)
    shares = latency.miss_fraction(np.array([latency.decode_terms(SMALL.to_arch(g), 300).traffic for g in genomes]))
    assert shares.min() < 0.3 and shares.max() > 0.7  # the share really varies over these archs

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merino_edge.arch import Axes
from merino_edge.errors import InputError
from merino_edge.search.budgets import Budget, Costs
from merino_edge.search.evolution import evolve
from merino_edge.search.exact import solve_exact
from merino_edge.search.latency import LatencyModel
from merino_edge.search.objective import Objective
from merino_edge.search.space import SearchSpace

PROFILE = Path(__file__).parent / "data" / "search_profile.json"
AXES = Axes(widths=(64, 128, 256), ratios=(1.0, 2.0), depths=(1, 2))
SMALL = SearchSpace(AXES, 3)
LATENCY = LatencyModel.from_file(PROFILE, axes=AXES)
OBJECTIVE = Objective()


@settings(max_examples=25, deadline=None)
@given(
    params=st.one_of(st.none(), st.integers(26_330_000, 28_200_000)),
    flops=st.one_of(st.none(), st.integers(51_500_000_000, 64_100_000_000)),
    memory=st.one_of(st.none(), st.integers(53_450_000, 62_600_000)),
    latency_ms=st.one_of(st.none(), st.floats(25.01, 28.6)),
    seed=st.integers(0, 1000),
)
def test_every_ea_result_meets_every_budget(params, flops, memory, latency_ms, seed):
    budget = Budget(params=params, flops=flops, memory=memory, latency_ms=latency_ms, memory_context=1024)
    costs = Costs(SMALL, budget, LATENCY)
    try:
        result = evolve(SMALL, OBJECTIVE, costs, iterations=600, population=32, parents=8, seed=seed, init_draws=2000)
    except InputError:
        with pytest.raises(InputError):  # nothing fits: the exact solver agrees
            solve_exact(SMALL, OBJECTIVE, costs)
        return
    arch = SMALL.to_arch(result.genome)
    assert params is None or arch.params() <= params
    assert flops is None or arch.flops().total <= flops
    assert memory is None or arch.memory_bytes(1024) <= memory
    assert latency_ms is None or LATENCY.decode_ms(arch, 512) <= latency_ms + 1e-9
    assert result.objective == pytest.approx(OBJECTIVE(arch), rel=1e-12)
    assert result.objective <= solve_exact(SMALL, OBJECTIVE, costs).objective * (1 + 1e-12)


def test_ea_is_deterministic_under_a_seed_and_counts_mutations():
    space = SearchSpace()
    costs = Costs(space, Budget(flops=110 * 10**9))
    a = evolve(space, OBJECTIVE, costs, iterations=5000, population=128, parents=16, seed=3)
    b = evolve(space, OBJECTIVE, costs, iterations=5000, population=128, parents=16, seed=3)
    c = evolve(space, OBJECTIVE, costs, iterations=5000, population=128, parents=16, seed=4)
    assert np.array_equal(a.genome, b.genome) and a.best_per_generation == b.best_per_generation
    assert a.best_per_generation != c.best_per_generation
    assert a.mutations == 5000 and 0 < a.accepted <= 5000
    assert list(a.best_per_generation) == sorted(a.best_per_generation)  # elitist: the best never gets worse


def test_ea_finds_the_exact_optimum_at_the_paper_settings():
    space = SearchSpace()
    costs = Costs(space, Budget(flops=160 * 10**9))
    result = evolve(space, OBJECTIVE, costs, seed=0)
    assert result.objective == pytest.approx(solve_exact(space, OBJECTIVE, costs).objective, rel=1e-12)
    assert result.mutations == 100_000


def test_nothing_fits_is_an_input_error():
    with pytest.raises(InputError, match="no architecture met the budgets"):
        evolve(SMALL, OBJECTIVE, Costs(SMALL, Budget(flops=10**9)), iterations=100, population=8, parents=2)


@pytest.mark.parametrize("kw", [{"parents": 0}, {"parents": 512}, {"iterations": 0}])
def test_bad_settings_are_input_errors(kw):
    with pytest.raises(InputError):
        evolve(SMALL, OBJECTIVE, Costs(SMALL, Budget()), **kw)

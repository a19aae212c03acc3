import itertools
import json
from pathlib import Path

import pytest
from cache_profiles import calibrated

from merino_edge.arch import ArchSpec, Axes, Block
from merino_edge.errors import InputError
from merino_edge.search.budgets import Budget, Costs
from merino_edge.search.exact import solve_exact
from merino_edge.search.latency import LatencyModel
from merino_edge.search.objective import Objective
from merino_edge.search.space import SearchSpace

PROFILE = Path(__file__).parent / "data" / "search_profile.json"
AXES = Axes(widths=(64, 128, 256), ratios=(1.0, 2.0), depths=(1, 2))


def brute_force(space, objective, budget, latency=None):
    """Every architecture of the space priced with ArchSpec / LatencyModel directly."""
    a = space.axes
    options = list(itertools.product(a.ratios, a.depths))
    best = None
    for widths in itertools.combinations_with_replacement(a.widths, space.blocks):
        for choice in itertools.product(options, repeat=space.blocks):
            arch = ArchSpec(blocks=tuple(Block(e, r, d) for e, (r, d) in zip(widths, choice, strict=True)))
            if budget.params is not None and arch.params() > budget.params:
                continue
            if budget.flops is not None and arch.flops(budget.flops_seq_len).total > budget.flops:
                continue
            if budget.memory is not None and arch.memory_bytes(budget.memory_context) > budget.memory:
                continue
            if budget.latency_ms is not None and latency.decode_ms(arch, budget.latency_context) > budget.latency_ms:
                continue
            value = objective(arch)
            if best is None or value > best:
                best = value
    return best


@pytest.mark.parametrize(
    "blocks, budget",
    [
        (3, Budget(flops=55 * 10**9)),
        (3, Budget(params=26_900_000)),
        (2, Budget(params=27_000_000, memory=55_000_000, memory_context=1024)),
        (3, Budget(flops=60 * 10**9, latency_ms=25.9, latency_context=512)),
        (4, Budget(flops=10**13)),  # loose: the widest architecture wins
    ],
)
def test_exact_equals_brute_force_on_a_reduced_space(blocks, budget):
    space = SearchSpace(AXES, blocks)
    objective = Objective()
    latency = LatencyModel.from_file(PROFILE, axes=AXES) if budget.latency_ms else None
    result = solve_exact(space, objective, Costs(space, budget, latency))
    assert result.objective == pytest.approx(brute_force(space, objective, budget, latency), rel=1e-12)
    assert objective(space.to_arch(result.genome)) == pytest.approx(result.objective, rel=1e-12)


@pytest.mark.parametrize("budget_ms", [32.0, 40.0, 48.0])
def test_exact_equals_brute_force_under_a_calibrated_latency(budget_ms):
    """warm + mu(traffic) * penalty is not additive; the solver still finds the true optimum."""
    space = SearchSpace(AXES, 3)
    objective = Objective()
    latency = LatencyModel(calibrated(json.loads(PROFILE.read_text()), space, context=512))
    budget = Budget(latency_ms=budget_ms, flops=60 * 10**9, latency_context=512)
    result = solve_exact(space, objective, Costs(space, budget, latency))
    assert result.objective == pytest.approx(brute_force(space, objective, budget, latency), rel=1e-12)
    assert latency.decode_ms(space.to_arch(result.genome), 512) <= budget_ms


def test_exact_bounds_out_most_width_tuples_on_table5():
    space = SearchSpace()
    result = solve_exact(space, Objective(), Costs(space, Budget(flops=60 * 10**9)))
    arch = space.to_arch(result.genome)
    assert arch.flops().total <= 60 * 10**9
    assert result.tuples == 495 and result.solved < 100


def test_unsatisfiable_budgets_say_which_metric():
    space = SearchSpace(AXES, 3)
    with pytest.raises(InputError, match=r"smallest needs flops .* > 1G"):
        solve_exact(space, Objective(), Costs(space, Budget(flops=10**9)))


def test_budgets_satisfiable_alone_but_not_together(tmp_path):
    # A device where width-64 layers are slow: the fewest params need E=64, the lowest latency E>=128.
    profile = json.loads(PROFILE.read_text())
    for layer in profile["layers"]:
        if layer["width"] == 64:
            layer["decode"]["median_ms"] = [50.0, 50.0]
    path = tmp_path / "slow64.json"
    path.write_text(json.dumps(profile))
    space = SearchSpace(AXES, 1)
    latency = LatencyModel.from_file(path, axes=AXES)
    few_params = ArchSpec(blocks=(Block(64, 2.0, 2),)).params()
    for budget in (Budget(params=few_params), Budget(latency_ms=45.0)):
        solve_exact(space, Objective(), Costs(space, budget, latency))
    with pytest.raises(InputError, match="not all of them together"):
        solve_exact(space, Objective(), Costs(space, Budget(params=few_params, latency_ms=45.0), latency))

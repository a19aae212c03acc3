import math

import pytest

from merino_edge.arch import ArchSpec, Block
from merino_edge.errors import InputError
from merino_edge.search.entropy import entropy
from merino_edge.search.objective import Objective


def test_effectiveness_reproduces_table1_gamma():
    # The paper's Table 1: 'Wide' (L=1, E=256) gamma 0.008, 'Deep' (L=24, E=64) gamma 0.25.
    objective = Objective()
    assert round(objective.block_terms(Block(256, 1.0, 1)).gamma_mha, 3) == 0.008
    assert objective.block_terms(Block(64, 1.0, 24)).gamma_mha == pytest.approx(0.25)


def test_objective_is_eq15_by_hand():
    arch = ArchSpec(blocks=(Block(128, 2.0, 3), Block(256, 1.5, 2)))
    alpha, beta = (0.7, 0.3), 0.1
    expected = 0.0
    for e, f, depth in ((128, 256, 3), (256, 384, 2)):
        expected += alpha[0] * depth * (1 - beta * depth / math.log2(e)) * 4 * entropy(e, e)
        expected += alpha[1] * depth * (1 - beta * depth / math.log2(f)) * 2 * entropy(e, f)
    objective = Objective(alpha=alpha, beta=beta)
    assert objective(arch) == pytest.approx(expected, rel=1e-12)
    terms = objective.breakdown(arch)
    assert sum(t.score for t in terms) == pytest.approx(expected, rel=1e-12)
    assert terms[0].entropy_mha == 3 * 4 * entropy(128, 128)


def test_beta_zero_is_plain_weighted_entropy_and_beta_penalises_depth():
    deep, shallow = Block(64, 1.0, 4), Block(64, 1.0, 1)
    plain = Objective(beta=0.0)
    assert plain.block_score(64, 1.0, 4) == pytest.approx(4 * plain.block_score(64, 1.0, 1))
    penalised = Objective()
    assert penalised.block_terms(deep).score / penalised.block_terms(shallow).score < 4


def test_eps_reaches_the_entropy():
    arch = ArchSpec(blocks=(Block(64, 1.0, 1),))
    assert Objective(eps=1e-2)(arch) < Objective(eps=1e-3)(arch)


@pytest.mark.parametrize("kw, word", [({"alpha": (0.5,)}, "alpha"), ({"alpha": (-1, 1)}, "alpha"), ({"beta": -0.1}, "beta"), ({"eps": 0.0}, "eps")])
def test_bad_settings_are_input_errors(kw, word):
    with pytest.raises(InputError, match=word):
        Objective(**kw)

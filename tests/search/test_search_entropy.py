import math

import numpy as np
import pytest
from scipy.special import digamma

from merino_edge.arch import TABLE5
from merino_edge.errors import IncompatibleError, InputError
from merino_edge.search.entropy import (
    EntropyTable,
    build_table,
    entropy,
    entropy_closed_form,
    entropy_mc,
    expected_logdet,
    search_shapes,
    shipped_table,
)


@pytest.mark.parametrize("a, b", [(1, 1), (1, 5), (3, 3), (4, 9), (64, 64), (64, 256), (1024, 4096)])
def test_expected_logdet_matches_scipy_digamma(a, b):
    reference = sum(digamma((b - i) / 2) for i in range(a)) + a * math.log(2)
    assert expected_logdet(a, b) == pytest.approx(reference, rel=1e-12, abs=1e-9)


def test_plain_and_control_variate_monte_carlo_agree():
    plain, plain_se = entropy_mc(64, 96, samples=400, seed=1, control_variate=False)
    cv, cv_se = entropy_mc(64, 96, samples=400, seed=2)
    assert abs(plain - cv) < 4 * math.hypot(plain_se, cv_se)
    assert cv_se < plain_se / 10  # the exact log-det part removes most of the variance


def test_gram_and_svd_solvers_give_the_same_estimate():
    for control_variate in (True, False):
        svd = entropy_mc(64, 160, samples=4, seed=5, control_variate=control_variate, solver="svd")
        gram = entropy_mc(160, 64, samples=4, seed=5, control_variate=control_variate, solver="gram")
        assert gram == pytest.approx(svd, rel=1e-9)
    with pytest.raises(InputError, match="solver"):
        entropy_mc(8, 8, samples=2, solver="qr")


def test_monte_carlo_is_deterministic_per_shape_and_symmetric():
    assert entropy_mc(64, 128, samples=8, seed=3) == entropy_mc(128, 64, samples=8, seed=3)
    assert entropy_mc(64, 128, samples=8, seed=3) != entropy_mc(64, 128, samples=8, seed=4)


@pytest.mark.parametrize("m, n, tolerance", [(64, 64, 4e-3), (64, 192, 1e-3), (128, 128, 2e-3), (64, 256, 5e-4)])
def test_closed_form_matches_monte_carlo_on_small_shapes(m, n, tolerance):
    mc, se = entropy_mc(m, n, samples=4, seed=0)
    assert se / mc < 1e-4
    assert entropy_closed_form(m, n) == pytest.approx(mc, rel=tolerance)


def test_closed_form_depends_on_eps_like_the_definition():
    # log(1 + s^2/eps^2) ~ log s^2 - 2 log eps: halving eps adds about 2 a log 2.
    a, b = 64, 128
    assert entropy_closed_form(a, b, 5e-4) - entropy_closed_form(a, b, 1e-3) == pytest.approx(2 * a * math.log(2), rel=1e-3)
    mc, _ = entropy_mc(a, b, eps=0.5, samples=8, control_variate=False)
    assert entropy_closed_form(a, b, eps=0.5) == pytest.approx(mc, rel=2e-3)


def test_closed_form_is_elementwise():
    values = entropy_closed_form(np.array([64, 128]), np.array([128, 128]))
    assert values.shape == (2,)
    assert values[1] == entropy_closed_form(128, 128)


def test_search_shapes_cover_attention_and_ffn_matrices():
    shapes = search_shapes(TABLE5)
    assert len(shapes) == 63  # 9 square (E, E) + 9 x 7 (E, R E), R = 1 counted once
    assert (64, 96) in shapes and (1024, 4096) in shapes and (640, 1600) in shapes
    assert all(a <= b for a, b in shapes)


def test_table_round_trip_and_lookup(tmp_path):
    table = build_table([(64, 64), (96, 64)], samples=4, seed=7, progress=False)
    assert set(table.entries) == {(64, 64), (64, 96)}
    loaded = EntropyTable.load(table.save(tmp_path / "t.json"))
    assert loaded == table
    assert loaded.lookup(96, 64) == table.entries[(64, 96)][0]
    assert loaded.lookup(64, 128) is None


def test_table_rejects_a_wrong_schema(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"schema_version": 99, "entries": []}')
    with pytest.raises(IncompatibleError, match="schema_version"):
        EntropyTable.load(path)


def test_shipped_table_covers_the_space_and_agrees_with_closed_form():
    table = shipped_table()
    assert table is not None, "merino_edge/data/entropy_table.json is missing: run merino-edge search build-table"
    assert table.eps == 1e-3 and table.samples >= 64
    assert set(search_shapes(TABLE5)) <= set(table.entries)
    for (a, b), (mean, se) in table.entries.items():
        assert se / mean < 1e-4
        assert entropy_closed_form(a, b) == pytest.approx(mean, rel=4e-3)
        assert entropy(a, b) == mean


def test_another_eps_falls_back_to_the_closed_form():
    assert entropy(64, 128, eps=2e-3) == entropy_closed_form(64, 128, 2e-3)
    assert entropy(64, 200) == entropy_closed_form(64, 200)  # not a shape of the space


def test_bad_shape_is_an_input_error():
    with pytest.raises(InputError, match="shape"):
        entropy_mc(0, 5)

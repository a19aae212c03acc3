import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merino_edge.arch import TABLE5, ArchSpec, Axes, Block
from merino_edge.errors import InputError
from merino_edge.search.space import DEPTH, RATIO, WIDTH, SearchSpace

SPACE = SearchSpace()


@st.composite
def genomes(draw, space=SPACE):
    w, r, d = space.shape
    widths = sorted(draw(st.lists(st.integers(0, w - 1), min_size=space.blocks, max_size=space.blocks)))
    ratios = draw(st.lists(st.integers(0, r - 1), min_size=space.blocks, max_size=space.blocks))
    depths = draw(st.lists(st.integers(0, d - 1), min_size=space.blocks, max_size=space.blocks))
    return np.array([widths, ratios, depths]).T


@settings(max_examples=300, deadline=None)
@given(genome=genomes(), seed=st.integers(0, 2**32 - 1), step=st.integers(1, 4))
def test_mutation_stays_in_the_space_changes_one_block_within_step(genome, seed, step):
    child = SPACE.mutate(genome[None], np.random.default_rng(seed), step)[0]
    assert SPACE.contains(child[None])[0]
    assert np.all(np.diff(child[:, WIDTH]) >= 0)
    changed = np.flatnonzero((child != genome).any(axis=1))
    assert len(changed) <= 1
    assert np.abs(child - genome).max() <= step
    arch = SPACE.to_arch(child)  # a valid ArchSpec: widths do not decrease
    arch.check_axes(TABLE5)


@settings(max_examples=100, deadline=None)
@given(genome=genomes(), seed=st.integers(0, 2**32 - 1))
def test_mutation_respects_the_neighbours_widths(genome, seed):
    children = SPACE.mutate(np.repeat(genome[None], 64, axis=0), np.random.default_rng(seed), 8)
    for child in children:
        j = np.flatnonzero((child != genome).any(axis=1))
        if len(j):
            j = j[0]
            lo = genome[j - 1, WIDTH] if j > 0 else 0
            hi = genome[j + 1, WIDTH] if j < SPACE.blocks - 1 else SPACE.shape[0] - 1
            assert lo <= child[j, WIDTH] <= hi


def test_mutation_explores_every_axis():
    rng = np.random.default_rng(0)
    parent = np.array([[4, 3, 1]] * 4)
    children = SPACE.mutate(np.repeat(parent[None], 2000, axis=0), rng)
    moved = (children != parent).any(axis=1)  # (n, 3): which axis moved in some block
    assert moved[:, WIDTH].any() and moved[:, RATIO].any() and moved[:, DEPTH].any()
    assert set(np.flatnonzero((children != parent).any(axis=2).any(axis=0))) == {0, 1, 2, 3}


def test_sampling_is_inside_and_deterministic():
    a = SPACE.sample(np.random.default_rng(5), 500)
    assert SPACE.contains(a).all()
    assert np.array_equal(a, SPACE.sample(np.random.default_rng(5), 500))


def test_space_size_and_width_tuples():
    tuples = SPACE.width_tuples()
    assert tuples.shape == (495, 4)  # non-decreasing 4-tuples of 9 widths
    assert (np.diff(tuples, axis=1) >= 0).all()
    assert len({tuple(t) for t in tuples}) == 495
    assert SPACE.size() == 495 * 28**4


def test_genome_arch_round_trip():
    arch = ArchSpec(blocks=(Block(64, 1.5, 2), Block(256, 4.0, 1), Block(256, 1.0, 4), Block(1024, 2.5, 3)))
    genome = SPACE.from_arch(arch)
    assert SPACE.to_arch(genome) == arch
    with pytest.raises(InputError, match="blocks"):
        SearchSpace(blocks=2).from_arch(arch)


def test_narrowed_and_widened_axes():
    narrow = SearchSpace(Axes(widths=(128, 256), ratios=(2.0,), depths=(1, 2)), blocks=3)
    assert narrow.shape == (2, 1, 2)
    assert narrow.size() == 4 * 2**3
    wide = SearchSpace(Axes(widths=(64, 1152), ratios=(1.0, 6.0), depths=(1, 8)), blocks=2)
    assert wide.to_arch(np.array([[0, 1, 1], [1, 0, 0]])).short() == "E64xR6xL8 | E1152xR1xL1"


@pytest.mark.parametrize(
    "axes, blocks, word",
    [
        (Axes(widths=(100,)), 4, "multiple"),
        (Axes(widths=(128, 64)), 4, "increasing"),
        (Axes(ratios=()), 4, "ratios is empty"),
        (Axes(ratios=(1.3,)), 4, "ratio"),
        (TABLE5, 0, "blocks"),
    ],
)
def test_bad_spaces_are_input_errors(axes, blocks, word):
    with pytest.raises(InputError, match=word):
        SearchSpace(axes, blocks)

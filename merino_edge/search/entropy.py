"""Subspace entropy of a random Gaussian matrix (Eq. 7), three ways.

For W in R^{m x n} with N(0, 1) entries,
    H(m, n) = E[ sum_j log(1 + s_j^2 / eps^2) ]     (natural log, eps = 1e-3 by default)
where s_j are the singular values.  H is symmetric in (m, n), so every shape
is keyed as (a, b) = (min, max).

- `entropy_mc`: Monte-Carlo SVD, the reference (mean and standard error).
  By default it uses an exact control variate: log(1 + s^2/eps^2) =
  log s^2 - 2 log eps + log(1 + eps^2/s^2), and E[sum log s^2] = E[log det W W^T]
  is known in closed form for a Wishart matrix (a sum of digammas), so only the
  small last term is sampled.  Same expectation, a standard error 3 to 1000
  times smaller than plain sampling (`control_variate=False`).
- `entropy_closed_form`: the Marchenko-Pastur Shannon transform (docs/search-method.md),
  exact as the matrix grows; a few tenths of a percent off at 64 x 64.
- `EntropyTable`: Monte-Carlo means for every shape the search space produces
  ((E, E) for attention, (E, R*E) for the FFN), built once by
  `merino-edge search build-table` and shipped as `merino_edge/data/entropy_table.json`.

`entropy(m, n, eps)` is what the objective calls: the shipped table when it
was built with the same eps and holds the shape, otherwise the closed form
(a table is only valid for the eps it was sampled at).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from merino_edge.arch import TABLE5, Axes
from merino_edge.errors import InputError
from merino_edge.fileio import check_schema, read_json, write_json_atomic

SCHEMA_VERSION = 1
DEFAULT_EPS = 1e-3
TABLE_PATH = Path(__file__).resolve().parents[1] / "data" / "entropy_table.json"

_BATCH_BYTES = 256 * 2**20  # matrices sampled at once in entropy_mc


def _shape(m: int, n: int) -> tuple[int, int]:
    if int(m) < 1 or int(n) < 1:
        raise InputError(f"entropy: matrix shape ({m}, {n}) must be positive")
    return (min(int(m), int(n)), max(int(m), int(n)))


def _digamma_half_integer(x: float) -> float:
    """digamma(x) for x a positive multiple of 1/2 (numpy has no digamma)."""
    start = 0.5 if x % 1 else 1.0
    base = -0.5772156649015329 - (2 * math.log(2) if start == 0.5 else 0.0)
    return base + float(np.sum(1.0 / np.arange(start, x - 0.25)))


def expected_logdet(a: int, b: int) -> float:
    """E[log det W W^T] for W (a x b, a <= b) with N(0, 1) entries (Wishart, exact)."""
    return sum(_digamma_half_integer((b - i) / 2) for i in range(a)) + a * math.log(2)


def _squared_singular_values(w: np.ndarray, solver: str) -> np.ndarray:
    if solver == "svd":
        return np.linalg.svd(w, compute_uv=False) ** 2
    if solver == "gram":  # eigenvalues of W W^T (a x a, a <= b): 3-5x faster than the SVD, same s^2
        return np.linalg.eigvalsh(w @ np.swapaxes(w, -1, -2))
    raise InputError(f"entropy: solver must be 'svd' or 'gram', got {solver!r}")


def entropy_mc(
    m: int, n: int, eps: float = DEFAULT_EPS, samples: int = 64, seed: int = 0, *, control_variate: bool = True, solver: str = "svd"
) -> tuple[float, float]:
    """Monte-Carlo estimate of H(m, n): (mean, standard error of the mean).

    The random stream depends only on (seed, shape), so one shape's value does
    not depend on which other shapes were sampled before it.  `solver` "svd"
    takes the singular values with np.linalg.svd; "gram" takes the eigenvalues
    of W W^T instead (what the table build uses: the same s^2, several times faster).
    """
    a, b = _shape(m, n)
    if samples < 2:
        raise InputError(f"entropy: samples must be >= 2 for a standard error, got {samples}")
    rng = np.random.default_rng([seed, a, b])
    batch = max(1, min(samples, _BATCH_BYTES // (8 * a * b)))
    values = []
    for start in range(0, samples, batch):
        s2 = _squared_singular_values(rng.standard_normal((min(batch, samples - start), a, b)), solver)
        terms = np.log1p(eps**2 / s2) if control_variate else np.log1p(s2 / eps**2)
        values.append(terms.sum(axis=-1))
    h = np.concatenate(values)
    offset = expected_logdet(a, b) - 2 * a * math.log(eps) if control_variate else 0.0
    return offset + float(h.mean()), float(h.std(ddof=1) / math.sqrt(samples))


def entropy_closed_form(m, n, eps: float = DEFAULT_EPS):
    """Marchenko-Pastur closed form of H(m, n); works elementwise on arrays."""
    m, n = np.asarray(m, dtype=float), np.asarray(n, dtype=float)
    a, b = np.minimum(m, n), np.maximum(m, n)
    lam = a / b
    gamma = b / eps**2
    f = (np.sqrt(gamma * (1 + np.sqrt(lam)) ** 2 + 1) - np.sqrt(gamma * (1 - np.sqrt(lam)) ** 2 + 1)) ** 2
    h = a * (np.log1p(gamma - f / 4) + np.log1p(gamma * lam - f / 4) / lam - f / (4 * gamma * lam))
    return float(h) if h.ndim == 0 else h


def search_shapes(axes: Axes = TABLE5) -> list[tuple[int, int]]:
    """Every distinct (min, max) matrix shape of the space: (E, E) and (E, R*E)."""
    shapes = {_shape(e, e) for e in axes.widths}
    for e in axes.widths:
        for r in axes.ratios:
            f = r * e
            if abs(f - round(f)) < 1e-9:
                shapes.add(_shape(e, round(f)))
    return sorted(shapes)


@dataclass(frozen=True)
class EntropyTable:
    """Monte-Carlo H(a, b) for a set of shapes, with how it was sampled."""

    eps: float
    samples: int
    seed: int
    entries: dict[tuple[int, int], tuple[float, float]] = field(default_factory=dict)  # (a, b) -> (mean, stderr)

    def lookup(self, m: int, n: int) -> float | None:
        entry = self.entries.get(_shape(m, n))
        return None if entry is None else entry[0]

    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "eps": self.eps,
            "samples": self.samples,
            "seed": self.seed,
            "entries": [{"rows": a, "cols": b, "mean": mean, "stderr": se} for (a, b), (mean, se) in sorted(self.entries.items())],
        }

    @classmethod
    def from_json(cls, data: dict) -> EntropyTable:
        check_schema(data, "entropy table", SCHEMA_VERSION, fix="run `merino-edge search build-table`")
        try:
            entries = {_shape(e["rows"], e["cols"]): (float(e["mean"]), float(e["stderr"])) for e in data["entries"]}
            return cls(eps=float(data["eps"]), samples=int(data["samples"]), seed=int(data["seed"]), entries=entries)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"entropy table: malformed ({exc})") from None

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_json(), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> EntropyTable:
        return cls.from_json(read_json(path, "entropy table"))


def build_table(
    shapes: Iterable[tuple[int, int]] | None = None,
    *,
    eps: float = DEFAULT_EPS,
    samples: int = 64,
    seed: int = 0,
    solver: str = "gram",
    progress: bool = True,
) -> EntropyTable:
    """Monte-Carlo every shape (default: all of Table 5's); a tqdm bar weighted by the work per shape."""
    from tqdm import tqdm

    shapes = sorted({_shape(m, n) for m, n in (search_shapes() if shapes is None else shapes)})
    entries = {}
    with tqdm(total=sum(a * a * b for a, b in shapes), disable=not progress, desc="entropy table", unit="flop", unit_scale=True) as bar:
        for a, b in shapes:
            entries[(a, b)] = entropy_mc(a, b, eps=eps, samples=samples, seed=seed, solver=solver)
            bar.update(a * a * b)
    return EntropyTable(eps=eps, samples=samples, seed=seed, entries=entries)


@functools.cache
def shipped_table() -> EntropyTable | None:
    """The table shipped with the package (read once), or None if it is missing."""
    return EntropyTable.load(TABLE_PATH) if TABLE_PATH.exists() else None


def entropy(m: int, n: int, eps: float = DEFAULT_EPS) -> float:
    """H(m, n): the shipped table if it was built at this eps and has the shape, else the closed form."""
    table = shipped_table()
    if table is not None and math.isclose(table.eps, eps, rel_tol=1e-12):
        value = table.lookup(m, n)
        if value is not None:
            return value
    return entropy_closed_form(m, n, eps)


def entropy_source(eps: float = DEFAULT_EPS) -> str:
    """Where `entropy(..., eps)` gets its values, for reports."""
    table = shipped_table()
    if table is not None and math.isclose(table.eps, eps, rel_tol=1e-12):
        return f"Monte-Carlo table ({table.samples} samples/shape, seed {table.seed}); closed form for shapes it lacks"
    return "Marchenko-Pastur closed form" + (f" (the shipped table is for eps {table.eps:g})" if table is not None else " (no table shipped)")

"""What the column masses must be: the label-side constraint of the transport problem.

Masses are in *counts*: every point carries mass 1, so the row masses sum to N and a
label's target is the number of points it should receive (N/K for an equipartition).

A marginal is a user-facing, immutable specification (``Uniform``, ``Counts``, ``Prior``).
The solver never reads it directly: it calls ``spec.bind(n_rows, n_labels)`` once, which
validates the specification against the problem and returns a ``ColumnConstraint``. The
constraint owns the two things the driver needs from the label side of the problem:

* ``update(g, log_mass)``: the new column dual from the current column masses
  (the Sinkhorn / Bregman-projection step, in the log domain), and
* ``error(log_mass)``: the scale-free convergence error of the current masses,

plus ``count_bounds()``, the integer label sizes that hard roundings must respect.
New kinds of marginal (bands, KL-relaxed targets) add a spec and a constraint here; the
driver and the backends stay untouched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

__all__ = [
    "ColumnConstraint",
    "Counts",
    "EqualityConstraint",
    "Marginal",
    "Prior",
    "Uniform",
    "as_marginal",
]


class ColumnConstraint(Protocol):
    """The label-side constraint bound to a problem of ``n_rows`` points and K labels."""

    n_rows: int

    def update(self, g: np.ndarray, log_mass: np.ndarray) -> np.ndarray:
        """Return the next column dual (K,) given the current dual and log column masses."""
        ...

    def error(self, log_mass: np.ndarray) -> float:
        """Return the convergence error of the current column masses (0 at the target)."""
        ...

    def count_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Integer (lo, hi) label sizes, int64 (K,), that hard roundings must respect."""
        ...


@dataclass(frozen=True)
class EqualityConstraint:
    """Column masses equal to ``target`` (float64 counts, (K,), summing to ``n_rows``).

    ``update`` is the exact Sinkhorn column step
        g_j <- g_j + log b_j - log m_j,
    which makes every column mass equal to its target for the current row dual.
    Labels with a zero target keep ``g_j = -inf`` and so never receive mass.
    ``error`` is max_j |m_j / b_j - 1| over labels with b_j > 0: the largest relative
    deviation of a label's mass from its target, independent of N and K.
    """

    target: np.ndarray
    n_rows: int
    lo: np.ndarray = field(repr=False)
    hi: np.ndarray = field(repr=False)

    def update(self, g: np.ndarray, log_mass: np.ndarray) -> np.ndarray:
        positive = self.target > 0
        new = np.full_like(g, -np.inf)
        new[positive] = g[positive] + np.log(self.target[positive]) - log_mass[positive]
        return new

    def error(self, log_mass: np.ndarray) -> float:
        positive = self.target > 0
        ratio = np.exp(log_mass[positive] - np.log(self.target[positive]))
        return float(np.max(np.abs(ratio - 1.0))) if ratio.size else 0.0

    def count_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lo, self.hi


def _equality(target: np.ndarray, n_rows: int) -> EqualityConstraint:
    """Bind a real-valued target; integer sizes are its floor and ceiling (summing to N)."""
    lo = np.floor(target + 1e-9).astype(np.int64)
    hi = np.ceil(target - 1e-9).astype(np.int64)
    hi = np.maximum(hi, lo)
    return EqualityConstraint(target=target, n_rows=n_rows, lo=lo, hi=hi)


class Marginal(ABC):
    """A specification of the label (column) masses; see the module docstring."""

    @abstractmethod
    def bind(self, n_rows: int, n_labels: int) -> ColumnConstraint:
        """Validate against an (n_rows, n_labels) problem and return its constraint."""


@dataclass(frozen=True)
class Uniform(Marginal):
    """An equipartition: every label receives N/K points (the SeLa default).

    N need not be divisible by K: the entropic solve targets N/K exactly, and hard
    roundings give every label floor(N/K) or ceil(N/K) points.
    """

    def bind(self, n_rows: int, n_labels: int) -> EqualityConstraint:
        return _equality(np.full(n_labels, n_rows / n_labels, dtype=np.float64), n_rows)


@dataclass(frozen=True, eq=False)
class Counts(Marginal):
    """Prescribed integer label sizes, ``sizes[j]`` points for label j, summing to N.

    A zero size is allowed: that label is never assigned.
    """

    sizes: np.ndarray

    def __post_init__(self) -> None:
        sizes = np.asarray(self.sizes)
        if sizes.ndim != 1 or sizes.size == 0:
            raise ValueError(
                f"marginals: Counts(sizes) needs a non-empty 1-D array, got shape {sizes.shape}"
            )
        if sizes.dtype.kind not in "iuf" or (
            sizes.dtype.kind == "f" and not np.all(np.isfinite(sizes))
        ):
            raise TypeError(
                f"marginals: Counts(sizes) needs integer sizes, got dtype {sizes.dtype}"
            )
        if sizes.dtype.kind == "f" and np.any(sizes != np.round(sizes)):
            raise TypeError("marginals: Counts(sizes) needs whole-number sizes")
        if np.any(sizes < 0):
            raise ValueError(
                f"marginals: Counts(sizes) must be non-negative, got a minimum of {sizes.min()}"
            )
        if sizes.sum() == 0:
            raise ValueError("marginals: Counts(sizes) must give at least one label a point")
        frozen = sizes.astype(np.int64)
        frozen.setflags(write=False)
        object.__setattr__(self, "sizes", frozen)

    def bind(self, n_rows: int, n_labels: int) -> EqualityConstraint:
        if self.sizes.size != n_labels:
            raise ValueError(
                f"marginals: Counts has {self.sizes.size} sizes but scores have "
                f"K={n_labels} labels; give one size per label"
            )
        total = int(self.sizes.sum())
        if total != n_rows:
            raise ValueError(
                f"marginals: Counts sizes sum to {total} but scores have N={n_rows} rows; "
                "the sizes must sum to N (or use Prior(p) for proportions)"
            )
        sizes = self.sizes.copy()
        return EqualityConstraint(
            target=sizes.astype(np.float64), n_rows=n_rows, lo=sizes, hi=sizes.copy()
        )

    def __repr__(self) -> str:
        return f"Counts(sizes={self.sizes.tolist()!r})"


@dataclass(frozen=True, eq=False)
class Prior(Marginal):
    """Label proportions ``p`` (a probability vector): label j receives N * p_j points.

    The imbalanced-target setting of SeLa's appendix and SeLaVi. Hard roundings give
    label j floor(N p_j) or ceil(N p_j) points, summing to N.
    """

    p: np.ndarray

    def __post_init__(self) -> None:
        p = np.asarray(self.p, dtype=np.float64) if _is_real(self.p) else None
        if p is None:
            raise TypeError("marginals: Prior(p) needs a real-valued probability vector")
        if p.ndim != 1 or p.size == 0:
            raise ValueError(f"marginals: Prior(p) needs a non-empty 1-D array, got {p.shape}")
        if not np.all(np.isfinite(p)) or np.any(p < 0):
            raise ValueError("marginals: Prior(p) must be finite and non-negative")
        if abs(p.sum() - 1.0) > 1e-6:
            raise ValueError(
                f"marginals: Prior(p) must sum to 1, got {p.sum():.8g}; "
                "normalise it with p / p.sum()"
            )
        frozen = p / p.sum()
        frozen.setflags(write=False)
        object.__setattr__(self, "p", frozen)

    def bind(self, n_rows: int, n_labels: int) -> EqualityConstraint:
        if self.p.size != n_labels:
            raise ValueError(
                f"marginals: Prior has {self.p.size} proportions but scores have "
                f"K={n_labels} labels"
            )
        return _equality(n_rows * self.p, n_rows)

    def __repr__(self) -> str:
        return f"Prior(p={self.p.tolist()!r})"


def _is_real(values: object) -> bool:
    return np.asarray(values).dtype.kind in "iuf"


def as_marginal(marginals: Marginal | None) -> Marginal:
    """Return the marginal spec to use: ``Uniform()`` for None; refuse anything else."""
    if marginals is None:
        return Uniform()
    if isinstance(marginals, Marginal):
        return marginals
    raise TypeError(
        "marginals: expected None, Uniform(), Counts(sizes), Prior(p) or another "
        f"equipart.Marginal, got {type(marginals).__name__}; wrap an array of sizes in "
        "Counts(...) or of proportions in Prior(...)"
    )

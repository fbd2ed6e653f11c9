"""Hard labels from a solved dual g: the roundings, and the check of their label counts.

Every rounder has one signature,

    rounder(source, backend, head, kind, lam, g, constraint) -> labels of that head

``argmax`` gives labels_i = argmax_j (lam * L_ij + g_j), the SeLa reference rounding (the
first index on ties). Its counts are near the targets when the rows of Q are decided,
but tied or near-tied rows (an untrained network's constant output, integer-valued
scores) all go to the first of their tied labels: 2,000 x 20 zeros give every point
label 0 from a converged Q.

``balanced`` gives every label a count within its integer bounds (``count_bounds``) and
is a certified exact optimum of the hard-assignment LP; see ``equipart.balanced``.

``round_head`` applies a ``rounding=`` choice to one head and checks argmax's counts:

* ``"auto"`` (the default): argmax, unless a label's count lies outside its sizes by
  more than the rounding noise (``count_slack``); then the balanced rounding, for every
  marginal with hard sizes (all but ``Relaxed``, whose argmax counts are checked against
  Q's own column masses and warned about);
* ``"argmax"``: argmax, with a :class:`RoundingWarning` where the counts miss that way;
* ``"balanced"``: the balanced rounding.

The noise: were every row's label drawn from its row of Q (randomised rounding), label
j's count would have mean m_j (its mass) and variance sum_i Q_ij (1 - Q_ij) <= m_j. A
count is called a miss beyond error * m_j + z sqrt(m_j) + 1 from its sizes, ``error``
being the solve's own relative error on the masses and z the normal quantile at which
all K labels of a randomised rounding pass together with probability 1 - 1e-3
(z = 4.06 at K = 20, 4.89 at K = 1,000). docs/rounding.md has the measurements.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from .backends.base import Backend, ScoreKind
from .balanced import balanced_labels
from .marginals import ColumnConstraint, RelaxedConstraint
from .problem import Problem
from .solver import RowSource, StatsReducer, column_stats

__all__ = ["ROUNDERS", "CountCheck", "RoundingWarning", "count_slack", "round_head"]

Rounder = Callable[[RowSource, Backend, int, ScoreKind, float, np.ndarray, ColumnConstraint], Any]

FALSE_ALARM = 1e-3
"""The chance that a randomised rounding of a converged Q has some label's count outside
``count_slack``: the check's false-alarm rate, over all K labels together."""


class RoundingWarning(UserWarning):
    """Hard labels whose counts miss their sizes by more than rounding noise."""


def argmax_labels(
    source: RowSource,
    backend: Backend,
    head: int,
    kind: ScoreKind,
    lam: float,
    g: np.ndarray,
    constraint: ColumnConstraint,
) -> Any:
    """labels_i = argmax_j (lam * L_ij + g_j) (first index on ties)."""
    parts = [backend.labels(block, kind, lam, g) for block in source.blocks(head)]
    return backend.concat(parts)


ROUNDERS: dict[str, Rounder] = {"argmax": argmax_labels, "balanced": balanced_labels}


def count_slack(mass: np.ndarray, error: float, n_labels: int) -> np.ndarray:
    """How far (in points) a label's count may lie outside its sizes before argmax's
    rounding is called a miss: error * m + z sqrt(m) + 1 for masses m (float64, (K,);
    see the module docstring)."""
    z = NormalDist().inv_cdf(1.0 - FALSE_ALARM / (2.0 * max(n_labels, 1)))
    mass = np.maximum(np.asarray(mass, dtype=np.float64), 0.0)
    return error * mass + z * np.sqrt(mass) + 1.0


@dataclass(frozen=True)
class CountCheck:
    """What ``round_head`` needs beyond a rounder's arguments.

    Attributes
    ----------
    error : float
        The solve's final error (relative, on the column masses).
    balanced : Rounder
        The exact-count rounder (a distributed solve's own across ranks).
    total : callable
        ``total(local, K)`` calls ``local()`` for this process's label counts (int64,
        (K,)) and returns the counts over every rank (``local()`` in one process).
    reduce : callable or None
        Merges column statistics across ranks (for Q's masses under ``Relaxed``).
    """

    error: float
    balanced: Rounder
    total: Callable[[Callable[[], np.ndarray], int], np.ndarray]
    reduce: StatsReducer | None = None


def _expected_counts(
    source: RowSource,
    backend: Backend,
    head: int,
    kind: ScoreKind,
    lam: float,
    g: np.ndarray,
    constraint: ColumnConstraint,
    reduce: StatsReducer | None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(lo, hi, hard): the sizes argmax's counts are held to, float64 (K,), and whether
    they are hard sizes (else Q's column masses, one more sweep: ``Relaxed``)."""
    if isinstance(constraint, RelaxedConstraint):
        mass = column_stats(source, backend, head, kind, lam, g, reduce).colsum
        return mass, mass, False
    lo, hi = constraint.count_bounds()
    return lo.astype(np.float64), hi.astype(np.float64), True


def round_head(
    rounding: str, problem: Problem, head: int, g: np.ndarray, check: CountCheck
) -> tuple[Any, str]:
    """The labels of one head of ``problem`` at dual g under ``rounding`` ("auto",
    "argmax" or "balanced"), and the rounding that made them ("argmax" or "balanced"; see
    the module docstring)."""
    source, backend, constraint = problem.source, problem.backend, problem.constraint
    assert constraint is not None
    arguments = (source, backend, head, problem.kind, problem.lam, g, constraint)
    if rounding == "balanced":
        return check.balanced(*arguments), "balanced"
    n_labels = source.n_labels
    made: list[Any] = []

    def local_counts() -> np.ndarray:
        made.append(argmax_labels(*arguments))
        host = backend.to_numpy(made[0]).astype(np.int64, copy=False)
        return np.bincount(host, minlength=n_labels)

    counts = check.total(local_counts, n_labels)
    lo, hi, hard = _expected_counts(*arguments, check.reduce)
    below = lo - count_slack(lo, check.error, n_labels)
    above = hi + count_slack(hi, check.error, n_labels)
    missed = np.flatnonzero((counts < below) | (counts > above))
    if missed.size == 0:
        return made[0], "argmax"
    if rounding == "auto" and hard:
        return check.balanced(*arguments), "balanced"
    _warn_missed(missed, counts, lo, hi, check.error, hard, head if source.n_heads > 1 else None)
    return made[0], "argmax"


def _warn_missed(
    missed: np.ndarray,
    counts: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    error: float,
    hard: bool,
    head: int | None,
) -> None:
    """The RoundingWarning for argmax counts outside their sizes beyond the noise, naming
    the label that misses most."""
    n_labels = counts.shape[0]
    over = counts[missed] - hi[missed]
    under = lo[missed] - counts[missed]
    worst = int(missed[np.argmax(np.maximum(over, under))])
    size = f"{lo[worst]:.0f}" if lo[worst] == hi[worst] else f"{lo[worst]:.0f} to {hi[worst]:.0f}"
    bound = hi if counts[worst] > hi[worst] else lo
    slack = count_slack(bound, error, n_labels)[worst]
    fix = (
        "rounding='balanced' (or the default 'auto') gives exact sizes"
        if hard
        else "a Relaxed marginal has no hard sizes to balance; a larger lam makes Q's rows "
        "more decided"
    )
    warnings.warn(
        f"rounding: argmax labels{'' if head is None else f' of head {head}'} miss their "
        f"targets by more than rounding noise at {missed.size} of {n_labels} labels: label "
        f"{worst} has {counts[worst]} points, its {'size' if hard else 'mass in Q'} is "
        f"{size} (noise allows {slack:.0f} more or less); tied or near-tied scores (a "
        "constant or integer-valued output, as from an untrained network) put every tied "
        f"row on the first of its labels; {fix}",
        RoundingWarning,
        stacklevel=5,
    )

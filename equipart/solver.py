"""The driver: Sinkhorn iterations on the column dual g, backend-agnostic.

Each iteration is one sweep per head over that head's row blocks (see
``equipart.backends.base``). For the current g the sweep makes every row of Q sum to 1 and
measures the column masses m of that Q; the driver then

* measures the error of the current Q, ``constraint.error(log m)`` (for an equality target
  max_j |m_j / b_j - 1|: scale-free, the same meaning at every N and K),
* stops a head whose error is at most ``tol`` at a check (every ``check_every`` iterations,
  and always at the first, so a converged warm start costs one sweep), and otherwise
* replaces g by ``constraint.update(g, log m)``, normalised so that max_j g_j = 0.

The driver never touches array elements: it sees only K-dim float64 statistics, which is
what lets the same loop run in memory, streamed from disk, or sharded across ranks (the
``reduce`` hook merges statistics across ranks before they are used).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .backends.base import Backend, ColumnStats, ScoreKind
from .marginals import ColumnConstraint

__all__ = ["ConvergenceWarning", "RowSource", "SolveOutcome", "normalise_dual", "run_sinkhorn"]


class ConvergenceWarning(UserWarning):
    """A solve stopped at ``max_iter`` (or by its callback) before reaching ``tol``."""


class RowSource(Protocol):
    """Where the rows of each head come from: the whole array, or chunks of it."""

    n_heads: int
    n_rows: int
    n_labels: int

    def blocks(self, head: int) -> Iterable[Any]:
        """The row blocks of head ``head``, in order, each an (n, K) array."""
        ...


@dataclass(frozen=True)
class SolveOutcome:
    g: np.ndarray  # (H, K) float64, the dual that produced `error`
    n_iter: int
    converged: bool
    error: float
    history: tuple[float, ...]


StatsReducer = Callable[[ColumnStats], ColumnStats]


def normalise_dual(g: np.ndarray) -> np.ndarray:
    """Shift g so its largest finite entry is 0 (Q is unchanged: f absorbs the shift)."""
    finite = np.isfinite(g)
    return g - g[finite].max() if finite.any() else g


def column_stats(
    source: RowSource,
    backend: Backend,
    head: int,
    kind: ScoreKind,
    lam: float,
    g: np.ndarray,
    reduce: StatsReducer | None,
) -> ColumnStats:
    """One sweep over every block of ``head``, merged (and reduced across ranks)."""
    stats = ColumnStats.empty(source.n_labels)
    for block in source.blocks(head):
        if block.shape[0]:
            stats = stats.merge(backend.sweep(block, kind, lam, g))
    return reduce(stats) if reduce is not None else stats


def _check_feasible(constraint: ColumnConstraint, log_mass: np.ndarray) -> None:
    lo, _ = constraint.count_bounds()
    dead = np.flatnonzero((log_mass == -np.inf) & (lo > 0))
    if dead.size:
        raise ValueError(
            f"scores: label(s) {dead[:10].tolist()} have zero probability at every point but a "
            "positive target mass, so no assignment meets the marginals; give those labels a "
            "zero target (Counts) or check the scores"
        )


def run_sinkhorn(
    source: RowSource,
    backend: Backend,
    *,
    kind: ScoreKind,
    lam: float,
    constraint: ColumnConstraint,
    tol: float,
    max_iter: int,
    check_every: int,
    g0: np.ndarray,
    callback: Callable[[int, float], Any] | None = None,
    reduce: StatsReducer | None = None,
) -> SolveOutcome:
    """Iterate from ``g0`` (H, K) until every head's error is at most ``tol``.

    Returns the best dual seen per head (the last one when converged). A callback
    ``callback(iteration, error)`` runs at each check; returning True stops the solve.
    Hitting ``max_iter`` (or a callback stop) before ``tol`` warns with ConvergenceWarning.
    """
    n_heads = source.n_heads
    g = np.array(g0, dtype=np.float64, copy=True)
    best_g = g.copy()
    best_error = np.full(n_heads, np.inf)
    error = np.full(n_heads, np.inf)
    running = np.ones(n_heads, dtype=bool)
    history: list[float] = []
    n_iter = 0
    stopped_by_callback = False

    for iteration in range(1, max_iter + 1):
        n_iter = iteration
        is_check = (iteration - 1) % check_every == 0 or iteration == max_iter
        for head in np.flatnonzero(running):
            stats = column_stats(source, backend, head, kind, lam, g[head], reduce)
            log_mass = stats.log_mass()
            if iteration == 1:
                _check_feasible(constraint, log_mass)
            error[head] = constraint.error(log_mass)
            if error[head] < best_error[head]:
                best_error[head] = error[head]
                best_g[head] = g[head]
            if is_check and error[head] <= tol:
                running[head] = False
                continue
            g[head] = normalise_dual(constraint.update(g[head], log_mass))
        if is_check:
            current = float(error.max())
            history.append(current)
            if callback is not None and callback(iteration, current) is True:
                stopped_by_callback = True
                break
            if not running.any():
                break

    converged = not running.any()
    final = np.where(running[:, None], best_g, g)
    final_error = float(np.where(running, best_error, error).max())
    if not converged:
        reason = "its callback asked to stop" if stopped_by_callback else f"max_iter={max_iter}"
        warnings.warn(
            f"Sinkhorn did not converge: stopped after {n_iter} iterations ({reason}) with "
            f"error {final_error:.3g} > tol={tol:g}; returning the best state seen. Raise "
            "max_iter, loosen tol, or warm-start from this result's state.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return SolveOutcome(final, n_iter, converged, final_error, tuple(history))

r"""The exact hard-assignment LP through POT's network simplex (``ot.emd``).

SeLa's label assignment without entropy is the linear program

    max_X  sum_ij X_ij L_ij   s.t.  X 1 = 1,  lo_j <= (X^T 1)_j <= hi_j,  X >= 0,

with L the log-probabilities and [lo, hi] the integer label sizes of the marginal
(``count_bounds()``: exact sizes for ``Counts``, floor/ceil of N b_j for ``Uniform`` and
``Prior``). Its constraint matrix is totally unimodular, so a vertex optimum is integral:
one label per point. ``ot.emd`` solves a transportation problem with equality masses, so
the bands are written as one: label j gets a *base* column of mass lo_j and, where
hi_j > lo_j, an *extra* column of mass hi_j - lo_j; a dummy row of mass sum(hi) - N may
fill extra columns at cost 0 and base columns only at a cost above every other cost, so
the real points fill every base column and choose, optimally, which labels get their
larger size. Uniform with K > N is the same rule (sizes 0 or 1: every point gets its own
label, the rectangular assignment problem). Masked labels (log-probability far below the
row's best) and zero probabilities are costed in tiers (``_solve_head``).

The dense network simplex needs the whole (N + 1) x K' cost matrix in float64 and its
plan, and its time grows faster than N K, so a size guard estimates both before any work
and refuses problems beyond ``max_memory`` / ``max_seconds`` with the estimate and a
pointer to ``assign_labels(..., rounding="balanced")``, which gives the same optimum
(certified) at any scale the Sinkhorn solve handles.
"""

from __future__ import annotations

import numbers
import os
from typing import Any

import numpy as np

from .backends import Backend, get_backend
from .backends.numpy import NumpyBackend
from .marginals import Marginal, Relaxed, as_marginal
from .result import Assignment, SolverState
from .solver import MASK_DEPTH
from .sources import load_npy
from .validation import check_kind, check_shape, check_values

__all__ = ["estimate_cost", "exact_assign"]

BYTES_PER_ARC = 64
"""Memory per arc of the dense problem: cost and plan in float64 plus the network-simplex
arrays of POT (arc endpoints, flows, costs, states), rounded up."""

SECONDS_AT_4M_ARCS = 2.5
TIME_EXPONENT = 1.15
"""The guard's time model, seconds = SECONDS_AT_4M_ARCS * (arcs / 4e6) ** TIME_EXPONENT. On
the 2-core development machine ``benchmarks/bench_rounding.py exact-time`` fits 1.64 s and
an exponent of 1.14 over 2 x 10^5 to 4 x 10^6 arcs (``rounding_exact_time.json``, slowest
family per size), while the same 4 M-arc problems took 3.8-7.0 s in the earlier quality
run (``rounding_quality.json``); the guard's 2.5 s lies between the two."""


def _columns(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label of each column, mass of each column, whether it is an extra column)."""
    base = np.flatnonzero(lo > 0)
    extra = np.flatnonzero(hi > lo)
    labels = np.concatenate((base, extra))
    mass = np.concatenate((lo[base], hi[extra] - lo[extra])).astype(np.float64)
    is_extra = np.concatenate((np.zeros(base.size, bool), np.ones(extra.size, bool)))
    return labels, mass, is_extra


def estimate_cost(n_rows: int, lo: np.ndarray, hi: np.ndarray) -> tuple[float, float]:
    """Estimated (bytes, seconds) of ``ot.emd`` on the banded problem of N rows."""
    n_cols = int(np.count_nonzero(lo > 0) + np.count_nonzero(hi > lo))
    arcs = float(n_rows + 1) * n_cols
    return arcs * BYTES_PER_ARC, SECONDS_AT_4M_ARCS * (arcs / 4e6) ** TIME_EXPONENT


def _memory_limit() -> float:
    """Half the machine's physical memory, in bytes."""
    return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_budget(value: Any, name: str) -> float | None:
    """None or a positive real number (Python or NumPy; inf: no limit), as a float."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name}: expected a positive number or None, got {value!r}")
    return float(value)


# Masks (``equipart.solver.MASK_DEPTH``, the one definition the solver uses too: more
# than 1e8 below the row's best) are costed as one tier of equal cost, like zero
# probabilities: beside costs of 1e16 and more the network simplex's float64 potentials
# lose the O(1) differences between the other labels, and the optimum found would not be
# optimal for the real costs. Below the depth the costs stay regular: their potentials
# keep about 1e-8 of absolute resolution, so the LP is exact for spreads of real scores up
# to there (a label 1e6 below another is still worse by 1e6).


def _cost_matrix(x: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(C, best): C = -log P shifted so that each row's best label costs 0, float64, with
    labels of zero probability at +inf (a row of zeros stays +inf); best (N,) is each
    row's best log P (the shift; 0 where it is not finite)."""
    if kind == "probs":
        with np.errstate(divide="ignore"):
            cost = -np.log(x.astype(np.float64))
    else:
        cost = -x.astype(np.float64)
    lowest = cost.min(axis=1)
    shift = np.where(np.isfinite(lowest), lowest, 0.0)
    cost -= shift[:, None]
    return cost, -shift


def _run_emd(rows: np.ndarray, col_mass: np.ndarray, cost: np.ndarray) -> tuple:
    import ot  # imported here: POT imports torch (an optional library) when installed

    max_iter = int(min(2**62, max(100_000, 100 * cost.size)))
    plan, log = ot.emd(rows, col_mass, cost, numItermax=max_iter, log=True)
    if log.get("warning"):
        raise RuntimeError(f"exact_assign: ot.emd did not reach the optimum: {log['warning']}")
    return plan, log


def _transport_problem(
    cost: np.ndarray, col_mass: np.ndarray, col_extra: np.ndarray, spare: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row masses, column masses, costs) for ``ot.emd``: the N rows of mass 1 and, where
    the bands leave room (``spare`` > 0), a dummy row of that mass that fills extra
    columns at cost 0 and base columns only above every other cost, so that the base
    sizes are met by real points whenever the marginals allow."""
    rows = np.ones(cost.shape[0] + (spare > 0))
    if spare > 0:
        dummy = np.where(col_extra, 0.0, 2.0 * float(cost.max()) + 1.0)
        cost = np.vstack((cost, dummy[None, :]))
        rows[-1] = spare
    return rows, col_mass, cost


def _solve_head(x: np.ndarray, kind: str, lo: np.ndarray, hi: np.ndarray):
    """Labels (int64, N) and label prices (float64, K) of one head.

    Costs come in two tiers: the regular ones (within ``MASK_DEPTH`` of the row's best,
    spread over [0, span]), and masked (logits or log-probabilities, finite) or impossible
    (zero probabilities; the two never occur together: after the row shift a probability
    costs at most -log of the smallest float, 745) labels at M + (best_i - min best), with
    M = (N + 1)(span + spread + 1) and spread the range of the rows' best log P: more than
    any exchange of regular labels can save, so an optimum uses as few of them as the
    marginals allow, and among those the rows that lose least by taking one, as if every
    mask were one common value (a flat M would let the LP send any rows to masked labels,
    whatever their other labels lose). An impossible one it
    still needs means no assignment meets the marginals.
    """
    n_rows, n_labels = x.shape
    col_label, col_mass, col_extra = _columns(lo, hi)
    cost, best = _cost_matrix(x, kind)
    cost = cost[:, col_label]
    impossible = ~np.isfinite(cost)
    beyond = impossible | (cost > MASK_DEPTH)
    span = float(cost[~beyond].max()) if (~beyond).any() else 0.0
    loss = best - best.min()  # what taking a masked label costs row i, up to a constant
    tier = (n_rows + 1) * (span + float(loss.max()) + 1.0)
    cost[beyond] = (tier + np.broadcast_to(loss[:, None], cost.shape))[beyond]
    if col_label.size == 1:  # one column takes every point (ot.emd rejects 1 x 1 problems)
        columns = np.zeros(n_rows, dtype=np.int64)
        prices = np.full(n_labels, -np.inf)
        prices[col_label[0]] = 0.0
    else:
        spare = int(hi.sum()) - n_rows
        plan, log = _run_emd(*_transport_problem(cost, col_mass, col_extra, spare))
        columns = plan[:n_rows].argmax(axis=1)
        prices = _label_prices(np.asarray(log["v"]), col_label, col_extra, n_labels)
    if impossible[np.arange(n_rows), columns].any():
        raise ValueError(
            "scores: no assignment meets the marginals using labels of non-zero probability; "
            "give impossible labels a zero size (Counts) or check the scores"
        )
    return col_label[columns].astype(np.int64), prices


def _label_prices(
    column_duals: np.ndarray, col_label: np.ndarray, col_extra: np.ndarray, n_labels: int
) -> np.ndarray:
    """Each label's price from ``ot.emd``'s column duals, shifted so the largest is 0.

    With costs C = -L (shifted per row), the LP dual has u_i + v_j <= C_ij, tight where
    point i takes label j; the entropic solve has lam L_ij + f_i + g_j <= 0 there in the
    limit, so v_j is the limit of g_j / lam as lam grows."""
    prices = np.full(n_labels, -np.inf)
    prices[col_label[col_extra]] = column_duals[col_extra]
    prices[col_label[~col_extra]] = column_duals[~col_extra]  # the base column's where both
    finite_prices = np.isfinite(prices)
    if finite_prices.any():
        prices[finite_prices] -= prices[finite_prices].max()
    return prices


def exact_assign(
    scores: Any,
    marginals: Marginal | None = None,
    input: str = "logits",
    *,
    backend: str | Backend = "auto",
    max_memory: float | None = None,
    max_seconds: float | None = 600.0,
) -> Assignment:
    r"""Hard labels that solve the assignment LP exactly (POT's network simplex).

    Maximises :math:`\sum_i \log P_{i,a(i)}` over labels a with every label's count in
    its integer band: exactly ``Counts`` sizes; floor or ceil of N b_j for ``Uniform`` and
    ``Prior``, the labels that get the larger size chosen optimally. Uniform with K > N
    gives every label 0 or 1 point (the rectangular assignment problem).

    Parameters
    ----------
    scores : array, shape (N, K) or (H, N, K)
        Any array library ``assign_labels`` reads, a memmap or a ``.npy`` path (not a
        ``RowBlocks`` stream); copied once to the host as float64 (the dense LP needs every
        entry). Never modified.
    marginals : Marginal, optional
        ``Uniform()`` (default), ``Counts(sizes)``, ``Prior(p)`` or ``Bounds(lo, hi)``
        (not ``Relaxed``: it sets no hard counts).
    input : {"logits", "logprobs", "probs"}
        What ``scores`` hold; logits and log-probabilities give the same labels.
    backend : str or Backend, default "auto"
        Which backend reads the array (for the conversion and the returned labels).
    max_memory : float, optional
        Refuse problems whose estimated memory (bytes) exceeds this; default half the
        physical memory.
    max_seconds : float or None, default 600
        Refuse problems whose estimated time exceeds this; None disables the check.

    Returns
    -------
    Assignment
        ``labels`` in the input's library; ``objective`` the mean log-probability of the
        assigned labels; ``state.g`` the LP's label prices in log-probability units
        (``ot.emd``'s column duals, max 0; the lam -> infinity limit of g / lam),
        stored with ``lam=1.0``; ``converged=True``, ``error=0.0``, ``n_iter=0`` (no
        Sinkhorn sweep), ``rounding="exact"``.

    Raises
    ------
    ValueError
        When the estimated memory or time exceeds the budget; the message gives the
        estimate and points to ``rounding="balanced"``.
    """
    if isinstance(scores, (str, os.PathLike)):
        scores = load_npy(scores)
    engine = get_backend(backend, scores)
    n_heads, n_rows, n_labels, stacked = check_shape(engine, scores)
    kind = check_kind(input)
    memory_budget = _check_budget(max_memory, "max_memory") or _memory_limit()
    time_budget = _check_budget(max_seconds, "max_seconds")
    spec = as_marginal(marginals)
    if isinstance(spec, Relaxed):
        raise ValueError(
            "marginals: the exact LP needs hard label counts, and a Relaxed marginal has none "
            "(any count from 0 to N); pass Uniform(), Counts, Prior or Bounds"
        )
    lo, hi = spec.bind(n_rows, n_labels).count_bounds()
    need_bytes, need_seconds = estimate_cost(n_rows, lo, hi)
    need_bytes *= n_heads
    need_seconds *= n_heads
    if need_bytes > memory_budget or (time_budget is not None and need_seconds > time_budget):
        raise ValueError(
            f"scores: an exact LP of {n_heads} x {n_rows} x {n_labels} needs about "
            f"{need_bytes / 2**30:.3g} GiB and {need_seconds:.3g} s through ot.emd (limits: "
            f"max_memory={memory_budget / 2**30:.3g} GiB, max_seconds={time_budget}); use "
            "rounding='balanced' (assign_labels; --rounding balanced on the command line) "
            "for certified exact-count labels at this scale, or raise exact_assign's "
            "max_memory / max_seconds"
        )
    heads = [engine.head(scores, h) if stacked else scores for h in range(n_heads)]
    check_values(engine, heads, kind)
    host = NumpyBackend()
    labels, prices, total = [], [], 0.0
    for head in heads:
        x = np.asarray(engine.to_numpy(head))
        head_labels, head_prices = _solve_head(x, kind, lo, hi)
        total += host.logprob_sum(x, kind, head_labels)
        labels.append(head_labels)
        prices.append(head_prices)
    out = np.stack(labels) if stacked else labels[0]
    shape = (n_heads, n_rows, n_labels) if stacked else (n_rows, n_labels)
    return Assignment(
        labels=engine.from_numpy(out, like=scores),
        state=SolverState(g=np.stack(prices) if stacked else prices[0], lam=1.0, shape=shape),
        n_iter=0,
        converged=True,
        error=0.0,
        history=(),
        objective=total / (n_rows * n_heads),
        rounding="exact",
    )

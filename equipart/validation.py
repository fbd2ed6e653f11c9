"""Input and feasibility checks at the public boundary: every one runs before any solver
work (the first sweep's own check aside, ``equipart.solver.check_feasible``).

Each failure raises ValueError or TypeError whose message starts with the argument's name
and says what would be valid. The checked arguments become the immutable objects of
``equipart.problem`` (``solve_options`` builds the loop's).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .backends.base import Backend, BlockCheck, ScoreKind
from .problem import SolveOptions
from .result import SolverState
from .solver import RowSource, check_feasible

if TYPE_CHECKING:
    from .problem import Problem

SCORE_KINDS: tuple[ScoreKind, ...] = ("logits", "logprobs", "probs")
ROUNDINGS = ("auto", "argmax", "balanced", "exact")


def dtype_kind(dtype: Any) -> str:
    """NumPy's one-letter kind for a dtype, also for names NumPy lacks ('bfloat16')."""
    if isinstance(dtype, str):
        name = dtype.rsplit(".", 1)[-1]
        if name.startswith(("bfloat", "float")):
            return "f"
        try:
            return np.dtype(name).kind
        except TypeError:
            return "O"
    return np.dtype(dtype).kind


def check_shape(
    backend: Backend, scores: Any, name: str = "scores", *, allow_empty_rows: bool = False
) -> tuple[int, int, int, bool]:
    """(H, N, K, stacked) of a (N, K) or (H, N, K) array with a real floating/int dtype.

    ``allow_empty_rows`` admits N = 0 (a rank holding no rows of a distributed solve).
    """
    shape, dtype = backend.shape_dtype(scores)
    if len(shape) not in (2, 3):
        raise ValueError(
            f"{name}: expected an (N, K) array of scores, or (H, N, K) for H heads; "
            f"got {len(shape)} dimension(s), shape {tuple(shape)}"
        )
    sized = [s for axis, s in enumerate(shape) if not (allow_empty_rows and axis == len(shape) - 2)]
    if min(sized) == 0:
        raise ValueError(f"{name}: every dimension must be non-empty, got shape {tuple(shape)}")
    kind = dtype_kind(dtype)
    if kind == "c":
        raise TypeError(f"{name}: complex dtype {dtype} is not supported; pass real scores")
    if kind not in "fiu":
        raise TypeError(
            f"{name}: expected a real floating-point (or integer) dtype, got {dtype}; "
            "convert to float32 (x.astype(np.float32) in NumPy and CuPy, x.float() in torch)"
        )
    stacked = len(shape) == 3
    n_heads = shape[0] if stacked else 1
    return n_heads, shape[-2], shape[-1], stacked


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """One of the strings ``choices`` (a str, not an array or other look-alike)."""
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected one of {choices} (a str), got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return str(value)


def check_flag(value: Any, name: str) -> bool:
    """True or False (Python's or NumPy's)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__}")
    return bool(value)


def check_kind(kind: Any) -> ScoreKind:
    return check_choice(kind, "input", SCORE_KINDS)


def check_positive_real(value: Any, name: str, example: str) -> float:
    """A finite real number > 0 (Python or NumPy scalar), as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a positive real number, got {type(value).__name__}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0 ({example}), got {value!r}")
    return float(value)


def check_lam(lam: Any) -> float:
    return check_positive_real(lam, "lam", "for example 25.0")


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value}")
    return int(value)


def check_tol(tol: Any) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol: expected a non-negative real number, got {type(tol).__name__}")
    if not np.isfinite(tol) or tol < 0:
        raise ValueError(f"tol: expected a finite number >= 0 (for example 1e-3), got {tol!r}")
    return float(tol)


ACCELERATIONS = ("auto", "anderson", "overrelax", "none")


def check_acceleration(acceleration: Any) -> str:
    return check_choice(acceleration, "acceleration", ACCELERATIONS)


def check_rounding(rounding: Any) -> str:
    return check_choice(rounding, "rounding", ROUNDINGS)


def solve_options(
    tol: Any,
    max_iter: Any,
    check_every: Any,
    acceleration: Any,
    callback: Any,
    anneal: bool = False,
) -> SolveOptions:
    """The Sinkhorn loop's settings, checked (the callback first, then in this order)."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable or None, got {type(callback).__name__}")
    return SolveOptions(
        tol=check_tol(tol),
        max_iter=check_positive_int(max_iter, "max_iter"),
        check_every=check_positive_int(check_every, "check_every"),
        acceleration=check_acceleration(acceleration),
        callback=callback,
        anneal=anneal,
    )


def check_eps(eps: Any) -> float:
    """SwAV's entropic temperature, checked: its inverse, lam = 1 / eps."""
    eps = check_positive_real(eps, "eps", "a temperature; SwAV uses 0.05")
    if not np.isfinite(1.0 / eps):
        raise ValueError(f"eps: {eps!r} is too small (1 / eps overflows); SwAV uses 0.05")
    return check_lam(1.0 / eps)


MAX_DUAL = 1e30  # largest |g_j| a warm start may hold (float32 kernels form lam * L + g)


def initial_dual(warm_start: Any, n_heads: int, n_labels: int, lam: float) -> np.ndarray:
    """The (H, K) starting dual: zeros, or a checked copy of the warm start."""
    if warm_start is None:
        return np.zeros((n_heads, n_labels))
    if isinstance(warm_start, SolverState):
        if warm_start.n_labels != n_labels:
            raise ValueError(
                f"warm_start: the state has K={warm_start.n_labels} labels but scores have "
                f"K={n_labels}; warm-start only from a solve of the same labels"
            )
        if not np.isclose(warm_start.lam, lam, rtol=1e-12, atol=0.0):
            raise ValueError(
                f"warm_start: the state was solved at lam={warm_start.lam!r} but "
                f"lam={lam!r} was passed; its dual is only meaningful at the same lam"
            )
        g = warm_start.g
    else:
        try:
            given = np.asarray(warm_start)
            if given.dtype.kind not in "biuf":  # complex, strings, objects: no real dual
                raise TypeError(f"dtype {given.dtype}")
            g = given.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                "warm_start: expected None, a SolverState, or a real dual vector g of shape "
                f"(K,) or (H, K); got {type(warm_start).__name__} ({exc})"
            ) from exc
    if g.shape[-1:] != (n_labels,) or g.ndim not in (1, 2):
        raise ValueError(
            f"warm_start: expected a dual of shape ({n_labels},) or ({n_heads}, "
            f"{n_labels}), got shape {g.shape}"
        )
    if np.isnan(g).any() or np.isposinf(g).any():
        raise ValueError("warm_start: the dual holds NaN or +inf; start cold (None) instead")
    if (np.abs(g[np.isfinite(g)]) > MAX_DUAL).any():
        raise ValueError(
            f"warm_start: the dual has entries beyond +-{MAX_DUAL:g} (in units of lam times "
            "the scores; a solved dual is of the order of lam times their spread); start cold "
            "(None) or pass the state of an earlier solve"
        )
    if g.ndim == 2 and g.shape[0] != n_heads:
        raise ValueError(
            f"warm_start: the dual has {g.shape[0]} heads but scores have H={n_heads}; "
            "pass one row per head, or a single (K,) dual for all heads"
        )
    return np.broadcast_to(g, (n_heads, n_labels)).astype(np.float64, copy=True)


# How far a row of probabilities may sum from 1, and a log-probability may exceed 0: 1e-3,
# or 2 units in the last place of a 16-bit float (its rounding alone moves a normalised
# row's sum by up to about 1 unit)
INPUT_TOLERANCE = 1e-3
HALF_FLOAT_EPSILON = {"float16": 2.0**-10, "bfloat16": 2.0**-7}


def input_tolerance(dtype: Any) -> float:
    """The rounding slack accepted in probabilities and log-probabilities of ``dtype``."""
    return max(INPUT_TOLERANCE, 2.0 * HALF_FLOAT_EPSILON.get(str(dtype), 0.0))


SINGLE_PRECISION = ("float16", "bfloat16", "float32")  # scores the sweeps read into float32


def sweep_precision(dtype: str) -> str:
    """The float type the sweeps compute in for scores of this dtype (name)."""
    return "float32" if str(dtype) in SINGLE_PRECISION else "float64"


def check_lam_scale(
    lam: float, report: BlockCheck, kind: ScoreKind, dtype: str, n_labels: int, name: str
) -> None:
    """Refuse a lam at which the best entries of the rows, lam * L, overflow the sweep.

    The sweeps form z = lam * L + g in float32 for 16- and 32-bit scores (float64
    otherwise) and subtract each row's maximum. Entries far below their row's best may go
    to -inf (that is how a mask such as ``masked_fill(mask, finfo.min)`` works: they get
    no mass); every row's best must stay finite, with room for g (a solved g is of the
    order of lam times the spread of the rows' best entries): |lam * best| below a
    quarter of the largest float, for the largest entry and the lowest row maximum (a row
    masked everywhere fails there). For probabilities a row's best is at least 1/K.
    Also refused: a lam so small that lam times every score underflows the sweep's float
    (lam 1e-300 on float32 scores: every score 0, every label a tie, "converged").
    """
    bests = [report.max_value, report.min_row_max] if kind != "probs" else []
    bests = [abs(b) for b in bests if math.isfinite(b)]  # NaN: not reported
    magnitude = max([*bests, math.log(max(n_labels, 2))])
    precision = sweep_precision(dtype)
    limit = float(np.finfo(precision).max) / 4
    extent = max(
        [abs(v) for v in (report.max_value, report.min_value) if math.isfinite(v)], default=0.0
    )
    tiny = float(np.finfo(precision).tiny)
    if kind != "probs" and 0.0 < lam * extent < tiny:
        fix = (
            f"eps below {extent / tiny:.3g}" if name == "eps" else f"lam above {tiny / extent:.3g}"
        )
        raise ValueError(
            f"{name}: {_lam_or_eps(name, lam)} times the largest score ({extent:.3g} in size) "
            f"underflows the {precision} sweep: every score would be 0 and every label a "
            f"tie; pass {fix}"
        )
    row_best = report.min_row_max
    if (
        kind != "probs"
        and math.isfinite(row_best)
        and -row_best >= magnitude  # the lowest row maximum is the culprit
        and lam * magnitude > limit
    ):
        raise ValueError(
            f"scores: a row's best score is {row_best:.3g} (masked at every label?): "
            f"{_lam_or_eps(name, lam)} times it overflows the {precision} sweep (limit "
            f"{limit:.3g}), and such a row has no label to take; drop or fix such rows"
        )
    if lam * magnitude > limit:
        bound = limit / magnitude
        if name == "eps":
            fix = f"pass eps above {1 / bound:.3g}"
        else:
            fix = f"pass lam below {bound:.3g}, or rounding='exact' for the hard assignment"
        raise ValueError(
            f"{name}: {_lam_or_eps(name, lam)} times a row's best score, {magnitude:.3g} in "
            f"size, overflows the {precision} sweep (limit {limit:.3g}); {fix}"
        )
    _check_resolution(lam, report, kind, magnitude, precision, name)


RESOLUTION = 1e-2
"""The largest rounding, in nats, that the sweep may make of lam * L next to a row's best
score: it moves each Q_ij by up to that much, relatively (1%)."""


def _check_resolution(
    lam: float, report: BlockCheck, kind: ScoreKind, magnitude: float, precision: str, name: str
) -> None:
    """Refuse a lam at which the sweep's float rounds lam * L by more than RESOLUTION.

    The sweep forms z = lam * L + g and z - max_k z_k in ``precision``; near a row's best
    score (``magnitude`` in size: at most log K for probabilities) each rounds by up to half
    a unit in the last place of lam * magnitude, which no number of sweeps can undo (float32
    logits scaled by 1e4 at lam 25: 1e6, rounded by 0.06 nats; solved anyway, such a problem
    stops at error 0.33 after 1,000 sweeps). Fixes: scores on a smaller scale or a smaller
    lam (lam times the scores is the problem's inverse temperature), a per-row shift where
    the rows' offsets, not their spread, are large (logits are unchanged by one), or float64
    scores.
    """
    half_ulp = float(np.finfo(precision).eps) / 2.0
    rounding = lam * magnitude * half_ulp
    if rounding <= RESOLUTION:
        return
    spread = report.max_value - report.min_row_max  # (probabilities: the bound log K)
    bound = RESOLUTION / (magnitude * half_ulp)
    if kind != "probs" and math.isfinite(spread) and lam * spread * half_ulp <= RESOLUTION / 2:
        fix = (
            "subtract each row's maximum and pass input='logits' (a per-row shift of "
            "logits changes nothing)"
        )
    elif name == "eps":
        fix = f"divide the scores by their scale or pass eps above {1 / bound:.3g}"
    else:
        fix = f"divide the scores by their scale or pass lam below {bound:.3g}"
    if precision == "float32":
        fix += ", or pass float64 scores"
    raise ValueError(
        f"{name}: {_lam_or_eps(name, lam)} times the rows' best scores ({magnitude:.3g} in "
        f"size) is {lam * magnitude:.3g}, which the {precision} sweep rounds by up to "
        f"{rounding:.2g} nats (at most {RESOLUTION:g}: each Q_ij would be off by that much, "
        f"and no number of sweeps converges past it); {fix}"
    )


def _lam_or_eps(name: str, lam: float) -> str:
    """How a message names the inverse temperature: lam itself, or 1/eps."""
    return f"1/eps = {lam:.3g}" if name == "eps" else f"lam = {lam:.3g}"


# The objective takes the rows' log-normalisers from the check (ScoreSummary.log_normaliser)
# only where every row's best score is within this of 0: the sum of the picked scores less
# theirs then errs by at most about 2 * 4096 * 2^-53 = 1e-12 per row; larger offsets keep
# the per-row log-softmax pass, exact to rounding at any offset.
NORMALISER_MAX_SCORE = 4096.0


@dataclass(frozen=True)
class ScoreSummary:
    """What ``check_values`` learns about a head's scores.

    Attributes
    ----------
    support : int64 (K,) or None
        The rows where each label is possible (positive probability, or a score above
        -inf) over all the blocks; None if a backend did not report it.
    spread : float
        The largest score minus the lowest row maximum, in score units (0 for
        probabilities and for constant rows): lam times it bounds how sharp the problem is.
    extent : float
        The largest entry minus the smallest (inf with -inf entries; for probabilities,
        inf with zeros, else 0): below the mask depth, no entry can be a mask.
    log_normaliser : float
        For logits, sum_i log sum_j exp(x_ij) over all the blocks, in float64: the
        objective's sum of log-softmax values at the labels is the sum of the picked
        scores minus this. NaN where a backend did not report it, or where a row's best
        score is beyond +-NORMALISER_MAX_SCORE (where the two sums would cancel digits).
    """

    support: np.ndarray | None
    spread: float
    extent: float = 0.0
    log_normaliser: float = float("nan")


def check_values(
    backend: Backend,
    blocks: Any,
    kind: ScoreKind,
    name: str = "scores",
    lam: float | None = None,
    lam_name: str = "lam",
    where: str = "",
    log_normaliser: bool = False,
) -> ScoreSummary:
    """Read every block once: no NaN or +inf, valid probabilities for ``input="probs"``,
    no row without a possible label, and, given ``lam``, that lam times every row's best
    score stays finite, and resolved, in the sweep. -inf marks an impossible label (zero
    probability) in logits and log-probabilities. ``where`` names the head in messages.
    With ``log_normaliser``, logits are also summed into the rows' log-normalisers where
    the backend reports them (``ScoreSummary.log_normaliser``, for the objective).
    """
    reports = getattr(backend, "reports_log_normaliser", False)
    ask = log_normaliser and kind == "logits" and reports
    support, reported, start = None, True, 0
    top, lowest_best, lowest, normaliser = -np.inf, np.inf, np.inf, 0.0
    for block in blocks:
        n_rows = block.shape[0]
        if n_rows == 0:
            continue
        if ask:
            report = backend.check(block, kind, log_normaliser=True)
        else:
            report = backend.check(block, kind)
        if not report.finite_or_neg_inf:
            raise ValueError(
                f"{name}: contains NaN or +inf values; clean them (for example np.nan_to_num), "
                "and mark a label impossible for a point with a logit of -inf"
            )
        if kind != "probs" and report.min_row_max == -np.inf:
            row = start + _first_impossible_row(backend, block, kind)
            raise ValueError(
                f"{name}: row {row}{where} is -inf at every label, so no label is possible "
                "for that point; drop the row or give it a label with a finite score"
            )
        _check_kind_range(backend, block, report, kind, name)
        top, lowest_best = max(top, report.max_value), min(lowest_best, report.min_row_max)
        lowest = min(lowest, report.min_value)
        normaliser += report.log_normaliser  # (NaN once a block did not report it)
        if lam is not None:
            shape, dtype = backend.shape_dtype(block)
            check_lam_scale(lam, report, kind, str(dtype), shape[-1], lam_name)
        counted = report.support
        if counted is None and kind != "probs" and report.min_value > -np.inf:
            counted = np.full(block.shape[1], n_rows, dtype=np.int64)  # every row
        reported = reported and counted is not None
        if reported:
            support = counted if support is None else support + counted
        start += n_rows
    if kind == "probs":
        spread, extent = 0.0, (np.inf if lowest <= 0 else 0.0)
    else:
        spread = top - lowest_best if math.isfinite(top - lowest_best) else 0.0
        extent = top - lowest if start else 0.0
    if not ask or max(abs(top), abs(lowest_best)) > NORMALISER_MAX_SCORE:
        normaliser = np.nan
    return ScoreSummary(support if reported else None, spread, extent, normaliser)


def _check_kind_range(
    backend: Backend, block: Any, report: BlockCheck, kind: ScoreKind, name: str
) -> None:
    """Log-probabilities at most 0, probabilities non-negative with rows summing to 1
    (each up to the rounding slack of the block's dtype)."""
    slack = input_tolerance(backend.shape_dtype(block)[1])
    if kind == "logprobs" and report.max_value > slack:
        raise ValueError(
            f"{name}: input='logprobs' needs log-probabilities (<= 0), found "
            f"{report.max_value:.3g}; pass input='logits' for unnormalised scores"
        )
    if kind == "probs":
        if report.min_value < 0:
            raise ValueError(
                f"{name}: input='probs' needs non-negative probabilities, found "
                f"{report.min_value:.3g}; pass input='logits' for raw network outputs"
            )
        if report.max_row_sum_deviation > slack:
            raise ValueError(
                f"{name}: input='probs' needs rows summing to 1, found a row off by "
                f"{report.max_row_sum_deviation:.3g}; normalise the rows or pass "
                "input='logits'"
            )


def _first_impossible_row(backend: Backend, block: Any, kind: ScoreKind) -> int:
    """The index in ``block`` of its first row that is -inf at every label."""
    best = backend.top_labels(block, kind, 1.0, np.zeros(block.shape[1]), 1)[1]
    return int(np.flatnonzero(backend.to_numpy(best)[:, 0] == -np.inf)[0])


def check_support(
    support: np.ndarray | None, least: np.ndarray, head: int | None = None, kind: str = "probs"
) -> None:
    """Refuse scores whose zero probabilities (or -inf scores) leave a label fewer rows
    than its least count.

    Each row carries mass 1 and can go only to its possible labels (positive probability,
    or a score above -inf), so label j gets at most support_j rows; below its least
    integer size (``count_bounds()[0]``: the
    floor of its target for Uniform and Prior) no labelling meets the marginals. A
    necessary condition only: rows shared by several short labels can still make a
    problem infeasible, which the solve then reports. (Between the floor and a fractional
    target the Sinkhorn solve cannot converge and says so, while rounding="balanced"
    still meets the integer sizes.)
    """
    if support is None:
        return
    short = np.flatnonzero(support < least)
    if short.size:
        listed = "; ".join(
            f"label {j}: {int(support[j])} rows, needs {int(least[j])}" for j in short[:5].tolist()
        )
        more = f" and {short.size - 5} more" if short.size > 5 else ""
        where = f" of head {head}" if head is not None else ""
        possible = "non-zero probability" if kind == "probs" else "a score above -inf"
        raise ValueError(
            f"scores: {short.size} label(s){where} have {possible} at fewer rows "
            f"than their least size ({listed}{more}), so no assignment meets the marginals; "
            "give them smaller sizes (Counts, Bounds), use Relaxed, or check the scores"
        )


def check_all_values(
    source: RowSource,
    backend: Backend,
    kind: ScoreKind,
    lam: float,
    lam_name: str = "lam",
    log_normaliser: bool = False,
) -> tuple[ScoreSummary, ...]:
    """``check_values`` over every head (for a rank without rows: support and spread 0)."""
    if source.n_rows == 0:
        empty = ScoreSummary(np.zeros(source.n_labels, dtype=np.int64), 0.0)
        return (empty,) * source.n_heads
    return tuple(
        check_values(
            backend,
            source.blocks(head),
            kind,
            lam=lam,
            lam_name=lam_name,
            where=f" of head {head}" if source.n_heads > 1 else "",
            log_normaliser=log_normaliser,
        )
        for head in range(source.n_heads)
    )


def _stranded_rows(problem: Problem, closed: np.ndarray) -> tuple[int, tuple[int, int] | None]:
    """(count, (head, row) of the first) of the rows that can take only labels the
    marginals close (size 0): no assignment can place them. A row's best of L_ij + g_j,
    with g_j = -inf on closed labels, times lam, is -inf in the sweep's float type there:
    zero probabilities, or masks at the dtype's lowest value (a finite mask such as -1e9
    still lets the row take one of those labels, as the exact LP would). One pass, run
    only when labels are closed."""
    backend = problem.backend
    g_open = np.where(closed, -np.inf, 0.0)
    count, first = 0, None
    for head in range(problem.n_heads):
        start = 0
        for block in problem.source.blocks(head):
            if block.shape[0]:
                precision = sweep_precision(backend.shape_dtype(block)[1])
                values = backend.top_labels(block, problem.kind, 1.0, g_open, 1)[1]
                best_open = backend.to_numpy(values)[:, 0].astype(np.float64)
                with np.errstate(over="ignore"):  # (lam times a mask: -inf, as wanted)
                    scaled = problem.lam * best_open
                rows = np.flatnonzero(scaled < -float(np.finfo(precision).max))
                if rows.size and first is None:
                    first = (head, start + int(rows[0]))
                count += rows.size
            start += block.shape[0]
    return count, first


def check_placeable(comm: Any, problem: Problem) -> None:
    """Before the solve: refuse rows that can take only labels the marginals close (size
    0; a pass only when labels are closed) and labels possible at fewer rows than their
    least size (zero probabilities, -inf scores), from counts summed over the ranks of
    ``comm`` (``equipart.distributed``) in one all-reduce."""
    assert problem.constraint is not None
    least, most = problem.constraint.count_bounds()
    closed = most == 0
    count, first = 0, None
    if closed.any():
        with comm.rounding():  # across ranks, a failing read is announced by the all-reduce
            count, first = _stranded_rows(problem, closed)
    supports = [summary.support for summary in problem.summaries]
    totals, total = comm.total_support(supports, problem.n_labels, count)
    if total:
        if comm.sharded:
            where = f"{total} row(s) of the ranks have"
        else:  # the first one by its index
            assert first is not None
            head, row = first
            where = f"row {row}" + (f" of head {head}" if problem.n_heads > 1 else "")
            where += (f" (and {total - 1} more rows)" if total > 1 else "") + " has"
        allowed = (
            "non-zero probability"
            if problem.kind == "probs"
            else "scores above the dtype's lowest values (masks), at this lam,"
        )
        raise ValueError(
            f"scores: {where} {allowed} only on labels the marginals give no "
            f"point (closed: {np.flatnonzero(closed)[:10].tolist()}), so no assignment can "
            f"place {'it' if total == 1 else 'them'}; give one of their labels a size or "
            "check the scores"
        )
    for head, support in enumerate(totals):
        check_support(support, least, head if problem.stacked else None, problem.kind)


def check_prototypes_possible(problem: Problem, sharded: bool) -> None:
    """``sinkhorn_codes``' test of the masks: a sweep at g = 0 per head (reduced across
    the ranks, which all make it), ``check_feasible`` on its statistics. In one process
    only where some entry lies more than the mask depth below another (-inf or zero
    probabilities included)."""
    assert problem.constraint is not None
    zero = np.zeros(problem.n_labels)
    remedy = "leave those prototypes out of the scores, or check the scores"
    for head, summary in enumerate(problem.summaries):
        if sharded or summary.extent > problem.depth:
            stats = problem.column_stats(head, zero)
            where = f"head {head}: " if problem.n_heads > 1 else ""
            check_feasible(
                problem.constraint, stats, problem.lam, zero, problem.depth, remedy, where
            )

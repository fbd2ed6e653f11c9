"""The driver: Sinkhorn iterations on the column dual g, backend-agnostic.

Each iteration is one sweep per head over that head's row blocks (see
``equipart.backends.base``). For the current g the sweep makes every row of Q sum to 1 and
measures the column masses m of that Q; the driver then

* measures the error of the current Q, ``constraint.error(g, log m)`` (for an equality
  target max_j |m_j / b_j - 1|: scale-free, the same meaning at every N and K),
* stops a head whose error is at most ``tol`` at a check (every ``check_every`` iterations,
  and always at the first, so a converged warm start costs one sweep), and otherwise
* replaces g by ``constraint.update(g, log m)`` (the marginal's own column step).

The driver never touches array elements: it sees only K-dim float64 statistics, which is
what lets the same loop run in memory, streamed from disk, or sharded across ranks (the
``reduce`` hook merges statistics across ranks before they are used).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .backends.base import Backend, ColumnStats, ScoreKind
from .marginals import ColumnConstraint, normalise_dual

__all__ = ["ConvergenceWarning", "RowSource", "SolveOutcome", "run_sinkhorn"]


class ConvergenceWarning(UserWarning):
    """A solve stopped at ``max_iter`` (or by its callback) before reaching ``tol``."""


class RowSource(Protocol):
    """Where the rows of each head come from: the whole array, or chunks of it."""

    n_heads: int
    n_rows: int
    n_labels: int
    dtype: str  # the scores' dtype, by name

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
    stats = None
    for block in source.blocks(head):
        if block.shape[0]:
            part = backend.sweep(block, kind, lam, g)
            stats = part if stats is None else stats.merge(part)
    if stats is None:
        stats = ColumnStats.empty(source.n_labels)
    return reduce(stats) if reduce is not None else stats


def asks_to_stop(answer: Any) -> bool:
    """Whether a callback's return value stops the solve: True (Python's or NumPy's); any
    other value, None and 1 included, lets it go on."""
    return answer is True or (isinstance(answer, np.bool_) and bool(answer))


MASK_DEPTH = 1e8
"""Log-probability below a row's best beyond which an entry counts as masked (logits of
-1e9, -1e30 or float32's lowest, as ``masked_fill`` writes, next to real scores): here a
label masked at every point is refused, and ``equipart.exact`` costs masks as one tier."""

HALF_MASK_DEPTH = float(np.finfo(np.float16).max) / 4
"""The same for float16 scores, whose masks (``torch.finfo(torch.float16).min``, -65504)
cannot lie 1e8 below anything: a quarter of float16's range (16376). A mask of -1e4 is
within it, a very bad score rather than a mask, as in float32."""


SWEEP_ROUNDING = 8 * float(np.finfo(np.float32).eps)
"""A bound on the relative rounding of a float32 sweep's z = lam * L + g and its column
maximum, as ``check_feasible`` allows for it (float64 sweeps round less)."""


def mask_depth(dtype: str) -> float:
    """How far below a row's best a score of this dtype (name) counts as a mask."""
    return HALF_MASK_DEPTH if str(dtype) == "float16" else MASK_DEPTH


def check_feasible(
    constraint: ColumnConstraint,
    stats: ColumnStats,
    lam: float,
    g: np.ndarray,
    depth: float = MASK_DEPTH,
    remedy: str = "give those labels a zero target (Counts) or check the scores",
    where: str = "",
) -> None:
    """Refuse, from the first sweep, labels with a positive target and no mass at any
    point: zero probabilities, or scores more than ``depth`` (``mask_depth`` of the
    scores' dtype) below the row's best at every point (a dual compensating lam times that
    would leave a float32 sweep no digits of the other labels' scores: every point went to
    one label).

    Judged in score units, whatever g the sweep ran at: where a column sum underflowed its
    maximum is exact (``ColumnStats``), and since every row's maximum of lam * L + g is at
    most lam times its best score plus max(g), lam (L_ij - best_i) <= colmax_j - g_j +
    max(g) for every point i.
    """
    top = g[np.isfinite(g)].max(initial=0.0)
    with np.errstate(invalid="ignore"):  # -inf - -inf for closed labels (not required)
        bound = stats.colmax - g + top
        # a float32 sweep rounds lam * L + g_j, each row's maximum (of the order of lam *
        # L + max(g)) and their difference: allow for that error (run_sinkhorn keeps
        # max(g) - g_j within lam * depth, ``_within_reach``)
        rounding = SWEEP_ROUNDING * (np.abs(stats.colmax) + np.abs(g) + abs(top))
        rounding[~np.isfinite(rounding)] = 0.0  # (an infinite bound is exact)
        beyond = bound + rounding < -lam * depth
    dead = (stats.colsum == 0) & beyond & (constraint.min_mass() > 0)
    dead = np.flatnonzero(dead)
    if dead.size:
        raise ValueError(
            f"scores: {where}label(s) {dead[:10].tolist()} have zero probability (or a score more "
            f"than {depth:.5g} below the row's best: a mask) at every point but a "
            f"positive target mass, so no assignment meets the marginals; {remedy}"
        )


# Cold solves at large lam start with a short continuation ("epsilon scaling"): solve
# at ANNEAL_START, double lam (scaling g with it, since g / lam is a price in score units)
# until the target lam, each stage only to STAGE_TOL. Plain Sinkhorn needs O(lam) sweeps
# from a cold start; the stages cost a few sweeps each.
ANNEAL_ABOVE = 64.0
ANNEAL_START = 32.0
STAGE_TOL = 0.05


def lam_schedule(lam: float, anneal: bool) -> list[float]:
    """The inverse temperatures a solve runs through, ending at ``lam``."""
    if not anneal or lam <= ANNEAL_ABOVE:
        return [lam]
    stages = [ANNEAL_START]
    while stages[-1] * 2 < lam:
        stages.append(stages[-1] * 2)
    return [*stages, lam]


# Over-relaxation of the column step (Thibault et al., "Overrelaxed
# Sinkhorn-Knopp algorithm for regularized optimal transport", 2017; Lehmann et al., "A note
# on overrelaxation in the Sinkhorn algorithm", Optim. Lett. 2022): g <- g + w (T(g) - g).
# Plain Sinkhorn (w = 1) runs RELAX_WARMUP sweeps; its observed linear rate r then gives
# w = 2 / (1 + sqrt(1 - r)), capped at RELAX_MAX. If the error ever exceeds RELAX_GUARD
# times its value at the switch, the head falls back to w = 1 for the rest of the stage.
# Any fixed point of the extrapolated map is one of T, so bands and relaxed targets (whose
# T is also an exact block step of the dual) use it too.
RELAX_WARMUP = 8
RELAX_MAX = 1.9
RELAX_GUARD = 2.0
RELAX_WINDOW = 5


@dataclass
class _Relaxation:
    """One head's over-relaxation factor and the evidence it was chosen from."""

    enabled: bool
    normalise: Callable[[np.ndarray], np.ndarray]  # normalise_dual where shifts are immaterial
    omega: float = 1.0
    errors: list[float] = field(default_factory=list)
    error_at_switch: float = np.inf

    def _adapt(self, error: float) -> None:
        """Re-estimate plain Sinkhorn's rate r from the observed rate l at the current w
        (SOR theory: (l + w - 1)^2 = l w^2 r) and move w to 2 / (1 + sqrt(1 - r))."""
        first, last = self.errors[-RELAX_WINDOW], self.errors[-1]
        if not (first > 0 and last > 0 and last < first):
            return
        observed = (last / first) ** (1.0 / (RELAX_WINDOW - 1))
        rate = (observed + self.omega - 1.0) ** 2 / (observed * self.omega**2)
        if 0.0 < rate < 1.0:
            omega = min(RELAX_MAX, 2.0 / (1.0 + np.sqrt(1.0 - rate)))
            if omega > self.omega:
                self.omega = omega
                self.error_at_switch = min(self.error_at_switch, error)

    def step(self, g: np.ndarray, target: np.ndarray, error: float) -> np.ndarray:
        """The next dual, moving from g past the plain Sinkhorn step ``target``."""
        if not self.enabled:
            return target
        self.errors.append(error)
        if self.omega > 1.0 and error > RELAX_GUARD * self.error_at_switch:
            self.omega, self.enabled = 1.0, False
            return target
        if len(self.errors) > RELAX_WARMUP and len(self.errors) % RELAX_WINDOW == 0:
            self._adapt(error)
        if self.omega == 1.0:
            return target
        if np.isfinite(target).all() and np.isfinite(g).all():
            return self.normalise(g + self.omega * (target - g))
        moving = np.isfinite(target) & np.isfinite(g)
        relaxed = np.where(moving, g + self.omega * (target - np.where(moving, g, 0.0)), target)
        return self.normalise(relaxed)


# Anderson acceleration of the column step (Anderson, J. ACM 1965;
# Walker & Ni, "Anderson acceleration for fixed-point iterations", SIAM J. Numer. Anal.
# 2011): Sinkhorn's column step is a fixed-point map g -> T(g), and the next dual is the
# combination of the last ANDERSON_MEMORY + 1 images T(g_k) whose residuals T(g_k) - g_k
# combine to the least-squares smallest one (type II, on the labels with a finite dual).
# It needs nothing but the K-dim duals the driver already holds (opt-in:
# ``acceleration="anderson"``; the least-squares step makes the iterates sensitive to
# rounding, so two runs that differ only in rounding agree at convergence, not sweep by
# sweep as with over-relaxation). Safeguards: when the error exceeds ANDERSON_GUARD times
# the best error of the stage, the next sweep goes back to the best dual seen and the
# history restarts (after ANDERSON_RETREATS such returns, or ANDERSON_PATIENCE steps
# without a new best error, the stage goes on from its best dual with the default
# over-relaxed steps: at large lam an extrapolated step can land where the error stalls
# far above tol); the
# history also restarts when the set of finite labels changes or the combination is not
# finite. Sweep counts against the other modes: benchmarks/results/acceleration.json.
ANDERSON_MEMORY = 5
ANDERSON_GUARD = 2.0
ANDERSON_RETREATS = 3
ANDERSON_PATIENCE = 300


@dataclass
class _Anderson:
    """One head's history of column steps, and the best error seen in this stage."""

    enabled: bool
    normalise: Callable[[np.ndarray], np.ndarray]
    images: list[np.ndarray] = field(default_factory=list)  # T(g_k) on the finite labels
    residuals: list[np.ndarray] = field(default_factory=list)  # T(g_k) - g_k there
    finite: np.ndarray | None = None
    best_error: float = np.inf
    best_g: np.ndarray | None = None
    retreats: int = 0
    since_best: int = 0
    fallback: _Relaxation | None = None  # the stepper once Anderson has given up

    def _restart(self) -> None:
        self.images, self.residuals, self.finite = [], [], None

    def step(self, g: np.ndarray, target: np.ndarray, error: float) -> np.ndarray:
        """The next dual after g, given the plain Sinkhorn step ``target`` = T(g)."""
        if self.fallback is not None:
            return self.fallback.step(g, target, error)
        if not self.enabled:
            return target
        if error < self.best_error:
            self.best_error, self.best_g, self.since_best = error, g.copy(), 0
        else:
            self.since_best += 1
        if self.best_g is None:  # no finite error yet (nothing to return to)
            return target
        if error > ANDERSON_GUARD * self.best_error or self.since_best > ANDERSON_PATIENCE:
            self._restart()
            self.retreats += 1
            self.since_best = 0
            if self.retreats > ANDERSON_RETREATS or error <= ANDERSON_GUARD * self.best_error:
                # over-relaxed steps from here on
                self.fallback = _Relaxation(enabled=True, normalise=self.normalise)
            return self.best_g.copy()
        finite = np.isfinite(target) & np.isfinite(g)
        if self.finite is not None and not np.array_equal(finite, self.finite):
            self._restart()
        self.finite = finite
        image = target[finite]
        self.images = [*self.images[-ANDERSON_MEMORY:], image]
        self.residuals = [*self.residuals[-ANDERSON_MEMORY:], image - g[finite]]
        if len(self.residuals) < 2:
            return target
        d_residual = np.diff(np.array(self.residuals), axis=0).T  # (k, m)
        d_image = np.diff(np.array(self.images), axis=0).T
        gamma = np.linalg.lstsq(d_residual, self.residuals[-1], rcond=None)[0]
        combined = image - d_image @ gamma
        if not np.all(np.isfinite(combined)):
            self._restart()
            return target
        out = target.copy()
        out[finite] = combined
        return self.normalise(out)


def _unchanged(g: np.ndarray) -> np.ndarray:
    return g


@dataclass
class _Stage:
    """The loop's progress at one lam (before any warning is decided)."""

    g: np.ndarray
    n_iter: int
    converged: bool
    error: float
    stopped_by_callback: bool


def _iterate(
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
    callback: Callable[[int, float], Any] | None,
    reduce: StatsReducer | None,
    history: list[float],
    offset: int,
    acceleration: str,
    depth: float,
) -> _Stage:
    n_heads = source.n_heads
    g = np.array(g0, dtype=np.float64, copy=True)
    best_g = g.copy()
    best_error = np.full(n_heads, np.inf)
    error = np.full(n_heads, np.inf)
    running = np.ones(n_heads, dtype=bool)
    normalise = normalise_dual if constraint.shift_invariant else _unchanged
    kind_of_step = _Anderson if acceleration == "anderson" else _Relaxation
    steppers = [
        kind_of_step(enabled=acceleration != "none", normalise=normalise) for _ in range(n_heads)
    ]
    n_iter = 0
    stopped_by_callback = False

    for iteration in range(1, max_iter + 1):
        n_iter = iteration
        is_check = (iteration - 1) % check_every == 0 or iteration == max_iter
        for head in np.flatnonzero(running):
            stats = column_stats(source, backend, head, kind, lam, g[head], reduce)
            log_mass = stats.log_mass()
            if iteration == 1:
                where = f"head {head}: " if n_heads > 1 else ""
                check_feasible(constraint, stats, lam, g[head], depth, where=where)
            error[head] = constraint.error(g[head], log_mass)
            if error[head] < best_error[head]:
                best_error[head] = error[head]
                best_g[head] = g[head]
            if is_check and error[head] <= tol:
                running[head] = False
                continue
            step = constraint.update(g[head], log_mass)
            g[head] = steppers[head].step(g[head], step, error[head])
        if is_check:
            current = float(error.max())
            history.append(current)
            if callback is not None and asks_to_stop(callback(offset + iteration, current)):
                stopped_by_callback = True
                break
            if not running.any():
                break

    final = np.where(running[:, None], best_g, g)
    final_error = float(np.where(running, best_error, error).max())
    return _Stage(final, n_iter, not running.any(), final_error, stopped_by_callback)


def _starting_dual(g0: np.ndarray, constraint: ColumnConstraint) -> np.ndarray:
    """A copy of g0 (H, K) that fits the constraint: labels that may receive no point
    (upper count 0, no mass required) start at g_j = -inf, so that no check passes while
    they hold mass; labels that may receive points but are -inf in g0 (a warm start from
    another marginal) start at the head's lowest finite dual (0 if none) instead of
    staying shut."""
    g = np.array(g0, dtype=np.float64, copy=True)
    # (a positive mass too small for one point, N p_j < 1, has an upper count of 0 but
    # stays open: its column step needs a finite dual)
    closed = (constraint.count_bounds()[1] == 0) & ~(constraint.min_mass() > 0)
    g[:, closed] = -np.inf
    for head in g:
        shut = np.isneginf(head) & ~closed
        if shut.any():
            finite = head[np.isfinite(head)]
            head[shut] = finite.min() if finite.size else 0.0
    if constraint.shift_invariant:
        # equality targets: a common shift of g changes nothing but the float32 sweep's
        # digits of lam * L next to g (a warm start offset by 1e8 gave wrong labels after
        # one "converged" sweep), so start from the normalised dual every update keeps
        g = np.stack([normalise_dual(head) for head in g])
    return g


def _within_reach(g: np.ndarray, reach: float) -> np.ndarray:
    """g (H, K) with finite entries more than ``reach`` (lam times the mask depth) below
    their head's largest raised to that floor. Either way such a label starts with no mass
    (exp of -lam * depth is 0 in any float), but a g_j of -1e20 beside scores of order 1
    leaves a float32 sweep's lam * L + g_j no digits of the scores: the first sweep could
    then neither tell a masked label from a real one (a warm start of -1e20 on a label
    masked at -1e9 everywhere ended "converged" with every point on one label) nor keep
    good labels from looking masked."""
    g = g.copy()
    for head in g:
        finite = np.isfinite(head)
        if finite.any():
            floor = head[finite].max() - reach
            head[finite] = np.maximum(head[finite], floor)
    return g


# A solve that ends unconverged is called stalled (in its warning only: it never stops a
# solve) when its error has been within STALL_RTOL of its final best for the last
# STALL_SWEEPS sweeps or more: infeasible sizes leave the error at the gap they cannot
# close. (Feasible solves at large lam can plateau for a few hundred sweeps too, hence
# the warning's "may".)
STALL_SWEEPS = 100
STALL_RTOL = 1e-6


def _stalled_since(history: list[float], check_every: int) -> int | None:
    """The first iteration since which the error stayed within STALL_RTOL of its final
    best, where that is at least STALL_SWEEPS sweeps before the end, else None."""
    if not history:
        return None
    errors = np.asarray(history)
    best = errors.min()
    if not np.isfinite(best):
        return None
    # the first check of the final run of checks all within the tolerance of the best
    outside = np.flatnonzero(errors > best * (1.0 + STALL_RTOL))
    first = int(outside[-1]) + 1 if outside.size else 0
    if (len(errors) - 1 - first) * check_every < STALL_SWEEPS:
        return None
    return first * check_every + 1


SHARP_SPREAD = 1e3
"""lam times the scores' spread (nats) above which a stalled solve's warning names the
problem's sharpness: near the hard assignment, Sinkhorn's column steps (of the order of
the error, in nats) barely move labels whose scores differ by that much."""


def _out_of_reach() -> str:
    return (
        "the sizes may be out of reach of the labels the scores allow (rows with zero "
        "probability or masked scores on the labels that need them; for example more rows "
        "that can take only one label than its size), where more sweeps do not help and "
        "rounding='balanced' names an impossible problem; or tol is below what these "
        "scores' precision allows."
    )


def _sharpness(lam: float, spread: float) -> str:
    return (
        f"lam times the spread of the scores is {lam * spread:.3g} nats (lam {lam:g} times "
        f"{spread:.3g}, the largest score minus the lowest row maximum), so sharp a problem "
        "that each sweep's step barely moves its labels; divide the scores by their scale "
        "(or pass a smaller lam), or use rounding='balanced' or 'exact' for exact sizes at "
        "this lam (or, rarely, the sizes are out of reach of the labels the scores allow)."
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
    anneal: bool = False,
    acceleration: str = "overrelax",
    depth: float = MASK_DEPTH,
    spread: float = 0.0,
) -> SolveOutcome:
    """Iterate from ``g0`` (H, K) until every head's error is at most ``tol``.

    Returns the best dual seen per head (the last one when converged). A callback
    ``callback(iteration, error)`` runs at each check; returning True stops the solve.
    Hitting ``max_iter`` (or a callback stop) before ``tol`` warns with ConvergenceWarning.
    With ``anneal`` (for cold starts), lam > ANNEAL_ABOVE is reached through the
    continuation of ``lam_schedule``; ``max_iter`` bounds the sweeps of all stages together.
    ``acceleration`` extrapolates the column step (any marginal): ``"overrelax"``
    (``_Relaxation``), ``"anderson"`` (``_Anderson``) or ``"none"`` (plain Sinkhorn).
    A label with a positive target and no mass at the first sweep (``check_feasible``,
    masks ``depth`` below the rows' best) is refused with ValueError. ``spread`` (the
    largest score minus the lowest row maximum, score units) only words the warning of a
    stalled solve: lam times it above SHARP_SPREAD names the problem's sharpness.
    """
    history: list[float] = []
    stages = lam_schedule(lam, anneal)
    g, used = _within_reach(_starting_dual(g0, constraint), stages[0] * depth), 0
    for position, stage_lam in enumerate(stages):
        is_final = position == len(stages) - 1
        remaining = max_iter - used
        budget = remaining if is_final else max(1, min(remaining // 2, remaining - 1))
        stage = _iterate(
            source,
            backend,
            kind=kind,
            lam=stage_lam,
            constraint=constraint,
            tol=tol if is_final else max(tol, STAGE_TOL),
            max_iter=budget,
            check_every=check_every,
            g0=g,
            callback=callback,
            reduce=reduce,
            history=history,
            offset=used,
            acceleration=acceleration,
            depth=depth,
        )
        used += stage.n_iter
        if is_final:
            g = stage.g
            break
        if stage.stopped_by_callback or used >= max_iter:
            g = stage.g * (lam / stage_lam)  # report a dual at the lam that was asked for
            break
        g = stage.g * (stages[position + 1] / stage_lam)

    converged = stage.converged and is_final
    if not converged:
        reason = (
            "its callback asked to stop" if stage.stopped_by_callback else f"max_iter={max_iter}"
        )
        advice = "Raise max_iter, loosen tol, or warm-start from this result's state."
        stalled_since = _stalled_since(history, check_every)
        if stalled_since is not None and not stage.stopped_by_callback:
            advice = f"The error has not decreased since iteration {stalled_since}: " + (
                _sharpness(lam, spread) if lam * spread > SHARP_SPREAD else _out_of_reach()
            )
        if lam > ANNEAL_ABOVE and not stage.stopped_by_callback:
            advice += (
                f" At large lam (here {lam:g}) Sinkhorn needs of the order of lam sweeps:"
                " a smaller lam converges sooner, acceleration='anderson' often needs fewer"
                " sweeps, and rounding='balanced' gives exact label counts from any dual."
            )
        warnings.warn(
            f"Sinkhorn did not converge: stopped after {used} iterations ({reason}) with "
            f"error {stage.error:.3g} > tol={tol:g}; returning the best state seen. {advice}",
            ConvergenceWarning,
            stacklevel=3,
        )
    return SolveOutcome(g, used, converged, stage.error, tuple(history))

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

import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from . import _lbfgs
from .backends.base import Backend, ColumnStats, ScoreKind
from .marginals import ColumnConstraint, EqualityConstraint, SmoothConstraint, normalise_dual

if TYPE_CHECKING:
    from .problem import Problem, SolveOptions

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
    start_sweeps: float = 0.0  # the sampled start's sweeps, in sweeps of the whole scores


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


# float64 scores on a backend whose per-solve state offers ``coarse`` sweeps (float64 read,
# float32 arithmetic: the Numba backend) are solved in two precisions: every stage but the
# last, and the last one up to max(tol, COARSE_TOL), sweep coarse; the rest of the last
# stage sweeps in float64, so that the error a solve reports, and stops on, is float64's
# (often after one float64 sweep). float32 column sums are good to about 1e-6 relative, so
# a coarse stage does not stall above COARSE_TOL. Plain Sinkhorn (acceleration="none"),
# distributed solves (whose ranks may hold different backends) and heads of fewer than
# COARSE_MIN_ELEMENTS scores (swept from cache, where float64 costs at most about 1.6x
# float32's time: not worth the float64 sweep that confirms the coarse stage's dual)
# always sweep in float64.
COARSE_TOL = 1e-4
COARSE_MIN_ELEMENTS = 1 << 21


# A cold solve of a large in-memory problem with an equality target (and no masks) starts
# from the dual of a sample: max(SAMPLE_PER_LABEL * K, N / SAMPLE_SHARE) rows in up to
# SAMPLE_PIECES evenly spread runs of at least SAMPLE_RUN rows (``InMemory.sample``; each
# run is a slice to copy, about 1 us apiece), solved to max(tol, SAMPLE_TOL)
# by the same driver (a sample large enough samples in turn). From g = 0 on skewed scores,
# Sinkhorn's first sweeps only move mass from one favourite label to the next (Zipf-biased
# 50,000 x 1,000 logits: 8 of 19 sweeps); the sample pays for them at a fraction of the
# cost, since the dual is a price per label that a few points per label already estimate.
# Only where the sample is at most 1/SAMPLE_MIN_STEP of the rows and the head holds at
# least SAMPLE_MIN_ELEMENTS scores (below that a sweep costs about as much as the driver's
# own work per sweep; at 5,000 x 50 the sample already saved 25-40% of a skewed solve's
# time and cost 5% of an unskewed one's). The sample is dropped (a cold start) where its
# first sweep, at the cold dual, finds no label above 1 + SAMPLE_SKEW times its share
# (scores that are not skewed: the full solve's sweeps from g = 0 are not wasted, and a
# sample's own noise, about 1/sqrt(SAMPLE_PER_LABEL) per label, would only add work), and
# where the sample does not reach its tol within max_iter / SAMPLE_MIN_STEP sweeps.
# SAMPLE_TOL is the sample's own noise: a label's mass in a sample of about
# SAMPLE_PER_LABEL rows per label errs by about 1/sqrt(SAMPLE_PER_LABEL), so the full
# scores' error at the sample's exact dual is of that order (about 1.5 at the worst label
# of Zipf-biased 50,000 x 1,000 logits) and solving the sample further buys nothing. Over
# 30 solves (Zipf and late-training logits, 10,000 x 100 to 200,000 x 1,000, seeds 0-4,
# lam 25 and 50), 1/sqrt(6) = 0.41 took 4.6% fewer sweeps of the whole scores (samples'
# counted) than 0.1, with no full solve taking more sweeps.
SAMPLE_PER_LABEL = 6
SAMPLE_SHARE = 16
SAMPLE_MIN_STEP = 8
SAMPLE_PIECES = 256
SAMPLE_RUN = 32
SAMPLE_TOL = SAMPLE_PER_LABEL**-0.5
SAMPLE_SKEW = 10.0
SAMPLE_MIN_ELEMENTS = 1 << 17


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

    def step(
        self, g: np.ndarray, target: np.ndarray, error: float, log_mass: np.ndarray | None = None
    ) -> np.ndarray:
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


# Anderson acceleration of the column step (Anderson, J. ACM 1965; Walker & Ni, "Anderson
# acceleration for fixed-point iterations", SIAM J. Numer. Anal. 2011): the column step is
# a fixed-point map g -> T(g), and the next dual combines the last ANDERSON_MEMORY + 1
# images T(g_k) with the weights whose residuals T(g_k) - g_k combine to the least-squares
# smallest (type II, on the labels with a finite dual). It is the default for bands (whose
# dual has a kink at g_j = 0, so the quasi-Newton step below does not apply) and any
# marginal's with ``acceleration="anderson"``. Safeguards, each on combined (extrapolated)
# duals only (plain steps far from the solution can raise the error for a few sweeps):
# - a trust radius bounds how far (nats, at any label) a combination may move g beyond
#   the plain step T(g): halved after a failure, doubled by a new best error;
# - a failure is a combination whose error exceeds ANDERSON_GUARD times the error of the
#   dual it was made at, or ANDERSON_PATIENCE combinations without a new best error. The
#   next dual is then the plain step of the dual before the failed combination (known from
#   its sweep: no sweep is spent going back), the history restarts from that pair, and
#   2^(f - 1) plain steps (f failures so far, at most ANDERSON_COOLDOWN) come before the
#   next combination; every ANDERSON_FORGIVE new best errors forget one failure;
# - the history restarts when the set of finite labels changes or a combination is not
#   finite.
# Without the trust radius and the cool-down, 200 x 5 logits at lam 1000 (few points per
# label: nearly a hard assignment) stall at errors of 0.02-0.025 for hundreds of sweeps.
ANDERSON_MEMORY = 10
ANDERSON_GUARD = 3.0
ANDERSON_PATIENCE = 20
ANDERSON_COOLDOWN = 64
ANDERSON_FORGIVE = 4
ANDERSON_RIDGE = 1e-10  # Tikhonov term of the least squares, relative to its mean diagonal


@dataclass
class _Anderson:
    """One head's history of column steps, the last dual swept and the safeguards' state."""

    enabled: bool
    normalise: Callable[[np.ndarray], np.ndarray]
    # the piece of a piecewise-smooth column step each label is on (bands), or None
    pieces: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    piece: np.ndarray | None = None
    # (proposal, step) -> the proposal kept off the far side of the dual's kinks, or None
    kink_guard: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    duals: list[np.ndarray] = field(default_factory=list)  # g_k on the finite labels
    residuals: list[np.ndarray] = field(default_factory=list)  # T(g_k) - g_k there
    finite: np.ndarray | None = None
    previous: tuple[np.ndarray, np.ndarray, float] | None = None  # (g, T(g), error)
    best_error: float = np.inf  # since the last failure
    since_best: int = 0  # combinations since then
    failures: int = 0
    new_bests: int = 0
    cooldown: int = 0
    radius: float = np.inf
    last_move: float = 0.0  # how far the last combination went beyond its plain step

    def _record(self, g: np.ndarray, target: np.ndarray) -> None:
        finite = np.isfinite(target) & np.isfinite(g)
        if self.finite is not None and not np.array_equal(finite, self.finite):
            self.duals, self.residuals = [], []
        self.finite = finite
        self.duals = [*self.duals[-ANDERSON_MEMORY:], g[finite]]
        self.residuals = [*self.residuals[-ANDERSON_MEMORY:], target[finite] - g[finite]]

    def _note(self, error: float, combined: bool) -> None:
        """Track the best error since the last failure, and grow the trust radius."""
        if error < self.best_error:
            if combined:
                self.radius = max(self.radius, 2.0 * self.last_move)
            self.best_error, self.since_best = error, 0
            self.new_bests += 1
            if self.new_bests >= ANDERSON_FORGIVE and self.failures:
                self.failures, self.new_bests = self.failures - 1, 0
        elif combined:
            self.since_best += 1

    def _fail(self, g: np.ndarray, target: np.ndarray, error: float) -> np.ndarray:
        """The plain step of (g, target), with a fresh history and a cool-down."""
        self.radius = 0.5 * self.last_move
        self.failures += 1
        self.last_move, self.since_best, self.new_bests = 0.0, 0, 0
        self.best_error = error
        self.cooldown = min(2 ** (self.failures - 1), ANDERSON_COOLDOWN)
        self.duals, self.residuals, self.finite = [], [], None
        self._record(g, target)
        self.previous = (g, target, error)
        return target

    def _combine(self, target: np.ndarray) -> np.ndarray | None:
        """The Anderson combination (within the trust radius of ``target``), or None."""
        duals, residuals = np.array(self.duals), np.array(self.residuals)
        d_dual, d_residual = np.diff(duals, axis=0), np.diff(residuals, axis=0)
        gram = d_residual @ d_residual.T
        ridge = ANDERSON_RIDGE * max(float(np.trace(gram)) / len(gram), np.finfo(float).tiny)
        try:
            gamma = np.linalg.solve(gram + ridge * np.eye(len(gram)), d_residual @ residuals[-1])
        except np.linalg.LinAlgError:
            return None
        combined = duals[-1] + residuals[-1] - gamma @ (d_dual + d_residual)
        beyond = combined - target[self.finite]
        move = float(np.abs(beyond).max(initial=0.0))
        if not np.isfinite(move):
            return None
        if move > self.radius:
            combined = target[self.finite] + beyond * (self.radius / move)
            move = self.radius
        self.last_move = move
        out = target.copy()
        out[self.finite] = combined
        if self.kink_guard is not None:
            out = self.kink_guard(out, target)
        return self.normalise(out)

    def step(
        self, g: np.ndarray, target: np.ndarray, error: float, log_mass: np.ndarray | None = None
    ) -> np.ndarray:
        """The next dual after g, given the plain Sinkhorn step ``target`` = T(g)."""
        if not self.enabled:
            return target
        combined = self.last_move > 0  # g is a combination
        self._note(error, combined)
        if combined and self.previous is not None:
            if error > ANDERSON_GUARD * self.previous[2]:
                return self._fail(*self.previous)
            if self.since_best > ANDERSON_PATIENCE:
                return self._fail(g, target, error)
        self.previous = (g, target, error)
        if self.pieces is not None and log_mass is not None:
            piece = self.pieces(g, log_mass)
            if self.piece is not None and not np.array_equal(piece, self.piece):
                self.duals, self.residuals = [], []
            self.piece = piece
        self._record(g, target)
        self.last_move = 0.0
        if self.cooldown > 0 or len(self.duals) < 2:
            self.cooldown = max(0, self.cooldown - 1)
            return target
        combination = self._combine(target)
        if combination is None:
            self.duals, self.residuals = self.duals[-1:], self.residuals[-1:]
            return target
        return combination


# Quasi-Newton steps on the semi-dual (L-BFGS: Nocedal, "Updating quasi-Newton matrices
# with limited storage", Math. Comp. 1980) where the marginal's semi-dual F is smooth
# (equalities and relaxed targets: ``SmoothConstraint``). F is convex and its gradient at g
# is m(g) - a(g), both known after the sweep at g, so the driver keeps the last QN_MEMORY
# pairs (s, y) (change of g, change of the gradient) and moves along d = -H grad, H the
# L-BFGS inverse Hessian built on the diagonal gamma W: W_j = rho log(a_j / m_j) /
# (a_j - m_j) makes -W grad the marginal's exact column step (with no pairs the step is plain
# Sinkhorn's), and gamma = max(1, s.y / y.W y) of the newest pair (near the solution
# the Hessian is at most W^-1, so the scale that fits is at least 1).
# No value of F is known (a sweep returns column statistics only), so the line search
# reads slopes: a trial g + t d is kept when F's slope along d there is at most QN_SLOPE
# times its magnitude at t = 0 (the trapezoid rule's sufficient decrease); otherwise t
# shrinks to the zero of the slope's secant, kept within 0.1-0.5 of t, for at most
# QN_TRIALS sweeps, after which the memory restarts from the plain step at the last kept
# dual. A pair across which some label's log mass (or log aimed mass) moved more than
# QN_LOCAL nats is not local curvature (far from the solution F is exponential, and a secant pair
# across such a move misjudges the curvature by orders of magnitude): the memory restarts instead,
# so that far away the steps are plain Sinkhorn's, which are made for that regime. After QN_PATIENCE
# sweeps without a new best error the stage goes on from the plain step of its best dual with over-
# relaxed steps: where the sizes are out of reach of the labels the rows allow, F has no minimum and
# the quasi-Newton steps run along a ray where the error hovers above its floor, while the plain
# steps converge to that floor (the gap the ConvergenceWarning then reports as a stall).
# The arithmetic on K-vectors is ``equipart._lbfgs``'s (compiled where Numba is imported).
QN_MEMORY = 10
QN_SLOPE = 0.9
QN_TRIALS = 6
QN_LOCAL = 1.0
QN_SHRINK = (0.1, 0.5)
QN_PATIENCE = 30


@dataclass
class _Point:
    """A swept dual: its column step and log masses (over all K labels), and on the free
    labels its coordinates and the semi-dual's gradient."""

    target: np.ndarray
    log_mass: np.ndarray
    x: np.ndarray
    gradient: np.ndarray
    metric: np.ndarray  # W on the free labels
    log_masses: np.ndarray  # log m and log a on the free labels, (2, free)


def _arithmetic() -> _lbfgs.Arithmetic:
    """The quasi-Newton arithmetic: compiled where Numba is already imported (the Numba
    backend, the default for CPU arrays, imports it), else plain NumPy; a solve never
    imports Numba for its step alone (a NumPy-backend solve imports no optional library)."""
    return (_lbfgs.compiled() if "numba" in sys.modules else None) or _lbfgs.PLAIN


@dataclass
class _QuasiNewton:
    """One head's L-BFGS memory, its last kept dual and the line search in progress."""

    constraint: SmoothConstraint
    arithmetic: _lbfgs.Arithmetic = field(default_factory=_arithmetic)
    best_error: float = np.inf
    best_target: np.ndarray | None = None  # the plain step of the best dual
    since_best: int = 0
    fallback: _Relaxation | None = None  # the stepper once the patience has run out
    pairs: np.ndarray = field(default_factory=lambda: np.empty((2, QN_MEMORY, 0)))  # (s, y)
    inverse: np.ndarray = field(default_factory=lambda: np.empty(QN_MEMORY))  # their 1 / s.y
    n_pairs: int = 0  # pairs held in the ring (``equipart._lbfgs.learn``)
    newest: int = 0  # the newest pair's slot
    free: np.ndarray | None = None  # labels with finite g, step, masses and target
    base: _Point | None = None  # the last kept dual
    direction: np.ndarray | None = None  # None: the pending dual is base's plain step
    slope0: float = 0.0
    t: float = 1.0
    trials: int = 0

    def _restart(self) -> np.ndarray | None:
        """Forget the memory; the plain step of the kept dual (None if there is none)."""
        n_free = 0 if self.free is None else int(self.free.sum())
        if self.pairs.shape[2] != n_free:
            self.pairs = np.empty((2, QN_MEMORY, n_free))
        self.n_pairs, self.direction = 0, None
        return None if self.base is None else self.base.target

    def _point(self, g, target, log_mass) -> _Point | None:
        log_aim = self.constraint.aimed_log_mass(g)
        free, x, gradient, metric, log_masses, finite = self.arithmetic.point(
            g, target, log_mass, log_aim, self.constraint.rho
        )
        if self.free is None or not np.array_equal(free, self.free):
            self.free, self.base = free, None
            self._restart()
        if not finite:
            return None
        return _Point(target, log_mass, x, gradient, metric, log_masses)

    def _keep(self, point: _Point) -> None:
        """Make ``point`` the kept dual, learning the curvature between it and the last."""
        base, self.base = self.base, point
        if base is not None:
            new = (point.x, point.gradient, point.log_masses)
            old = (base.x, base.gradient, base.log_masses)
            self.n_pairs, self.newest = self.arithmetic.learn(
                self.pairs, self.inverse, self.n_pairs, self.newest, new, old, QN_LOCAL
            )

    def _descent(self, point: _Point) -> tuple[np.ndarray, float] | None:
        """(-H grad, its slope) by the two-loop recursion, or None (no pairs, or not a
        descent)."""
        if not self.n_pairs:
            return None
        d, slope = self.arithmetic.descent(
            self.pairs, self.inverse, self.n_pairs, self.newest, point.gradient, point.metric
        )
        return (d, slope) if slope < 0 and np.isfinite(d).all() else None

    def _trial(self) -> np.ndarray:
        assert self.base is not None and self.direction is not None
        out = self.base.target.copy()
        out[self.free] = self.base.x + self.t * self.direction
        return self.constraint.rebalance(out, self.base.log_mass)

    def step(
        self, g: np.ndarray, target: np.ndarray, error: float, log_mass: np.ndarray
    ) -> np.ndarray:
        """The next dual after the swept dual g (whose column step is ``target``)."""
        if self.fallback is not None:
            return self.fallback.step(g, target, error)
        if error < self.best_error:
            self.best_error, self.best_target, self.since_best = error, target, 0
        elif self.best_target is not None:
            self.since_best += 1
            if self.since_best > QN_PATIENCE:
                normalise = normalise_dual if self.constraint.shift_invariant else _unchanged
                self.fallback = _Relaxation(enabled=True, normalise=normalise)
                return self.best_target
        point = self._point(g, target, log_mass)
        if point is None:  # masses or target beyond float range: a plain step
            self.base = None
            self._restart()
            return target
        if self.direction is not None:  # g is a trial along the direction from base
            slope = float(point.gradient @ self.direction)
            if slope > QN_SLOPE * -self.slope0:
                if self.trials < QN_TRIALS:
                    secant = self.t * -self.slope0 / (slope - self.slope0)
                    low, high = QN_SHRINK
                    self.t = min(max(secant, low * self.t), high * self.t)
                    self.trials += 1
                    return self._trial()
                fallback = self._restart()
                assert fallback is not None
                return fallback
        self._keep(point)
        descent = self._descent(point)
        if descent is None:
            self.direction = None
            return target
        self.direction, self.slope0 = descent
        self.t, self.trials = 1.0, 0
        return self._trial()


def _unchanged(g: np.ndarray) -> np.ndarray:
    return g


Stepper = _Relaxation | _Anderson | _QuasiNewton


def _stepper(acceleration: str, constraint: ColumnConstraint) -> Stepper:
    """One head's step rule: ``"auto"`` is quasi-Newton where the semi-dual is smooth
    (``SmoothConstraint``) and Anderson otherwise (bands)."""
    normalise = normalise_dual if constraint.shift_invariant else _unchanged
    if acceleration == "auto":
        if hasattr(constraint, "aimed_log_mass"):
            return _QuasiNewton(constraint)  # type: ignore[arg-type]
        acceleration = "anderson"
    if acceleration == "anderson":
        pieces = getattr(constraint, "pieces", None)
        guard = getattr(constraint, "kink_guard", None)
        return _Anderson(enabled=True, normalise=normalise, pieces=pieces, kink_guard=guard)
    return _Relaxation(enabled=acceleration == "overrelax", normalise=normalise)


@dataclass
class _Stage:
    """The loop's progress at one lam (before any warning is decided)."""

    g: np.ndarray
    n_iter: int
    converged: bool
    error: float
    stopped_by_callback: bool


def _iterate(
    problem: Problem, options: SolveOptions, g0: np.ndarray, history: list[float], offset: int
) -> _Stage:
    """The loop at ``problem.lam`` from g0 (H, K): at most ``options.max_iter`` sweeps,
    each head stopping at a check whose error is at most ``options.tol`` (the history and
    the callback's iterations counted from ``offset``). In the fixed-step mode
    (``options.fixed_steps``), exactly ``fixed_steps - 1`` sweeps, each followed by its
    column step, with no check, and the last dual returned."""
    n_heads, constraint = problem.n_heads, problem.constraint
    assert constraint is not None, "the problem's marginals are not bound (Problem.bound)"
    fixed = options.fixed_steps is not None
    n_sweeps = options.fixed_steps - 1 if options.fixed_steps is not None else options.max_iter
    g = np.array(g0, dtype=np.float64, copy=True)
    best_g = g.copy()
    best_error = np.full(n_heads, np.inf)
    error = np.full(n_heads, np.inf)
    running = np.ones(n_heads, dtype=bool)
    steppers = [_stepper(options.acceleration, constraint) for _ in range(n_heads)]
    n_iter = 0
    stopped_by_callback = False

    for iteration in range(1, n_sweeps + 1):
        n_iter = iteration
        is_check = not fixed and (
            (iteration - 1) % options.check_every == 0 or iteration == n_sweeps
        )
        for head in np.flatnonzero(running):
            stats = problem.column_stats(head, g[head])
            log_mass = stats.log_mass()
            if iteration == 1 and not fixed:  # (fixed steps: checked before, at g = 0)
                where = f"head {head}: " if n_heads > 1 else ""
                check_feasible(constraint, stats, problem.lam, g[head], problem.depth, where=where)
            error[head] = constraint.error(g[head], log_mass)
            if error[head] < best_error[head]:
                best_error[head] = error[head]
                best_g[head] = g[head]
            if is_check and error[head] <= options.tol:
                running[head] = False
                continue
            step = constraint.update(g[head], log_mass)
            g[head] = steppers[head].step(g[head], step, error[head], log_mass)
        if is_check:
            current = float(error.max())
            history.append(current)
            callback = options.callback
            if callback is not None and asks_to_stop(callback(offset + iteration, current)):
                stopped_by_callback = True
                break
            if not running.any():
                break

    if fixed:
        return _Stage(g, n_iter, False, float(error.max()), False)
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
        # digits of lam * L next to g (a warm start offset by 1e8 would give wrong labels
        # after one "converged" sweep), so start from the normalised dual every update keeps
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


def run_sinkhorn(problem: Problem, options: SolveOptions) -> SolveOutcome:
    """Iterate from ``problem.g0`` (H, K) until every head's error is at most ``options.tol``.

    Returns the best dual seen per head (the last one when converged). A callback
    ``callback(iteration, error)`` runs at each check; returning True stops the solve.
    Hitting ``max_iter`` (or a callback stop) before ``tol`` warns with ConvergenceWarning.
    With ``anneal`` (for cold starts), lam > ANNEAL_ABOVE is reached through the
    continuation of ``lam_schedule``; ``max_iter`` bounds the sweeps of all stages together.
    ``acceleration`` extrapolates the column step (any marginal): ``"overrelax"``
    (``_Relaxation``), ``"anderson"`` (``_Anderson``) or ``"none"`` (plain Sinkhorn).
    A label with a positive target and no mass at the first sweep (``check_feasible``,
    masks ``problem.depth`` below the rows' best) is refused with ValueError. The scores'
    spread (``problem.spread``, the largest score minus the lowest row maximum) only words
    the warning of a stalled solve: lam times it above SHARP_SPREAD names the sharpness.

    With ``options.fixed_steps`` the loop is SwAV's (``_fixed_steps``) instead.
    """
    if options.fixed_steps is not None:
        return _fixed_steps(problem, options)
    outcome, trouble = _solve(problem, options)
    if trouble is not None:
        warnings.warn(trouble, ConvergenceWarning, stacklevel=3)
    return outcome


def _solve(problem: Problem, options: SolveOptions) -> tuple[SolveOutcome, str | None]:
    """``run_sinkhorn``'s solve: the outcome, and the ConvergenceWarning's message where it
    did not converge (else None)."""
    assert problem.constraint is not None, "the problem's marginals are not bound"
    start, start_sweeps = _sampled_start(problem, options)
    if start is not None:
        problem, options = replace(problem, warm_start=start), replace(options, anneal=False)
    lam, max_iter = problem.lam, options.max_iter
    history: list[float] = []
    stages = lam_schedule(lam, options.anneal)
    coarse = _coarse_state(problem, options)
    g = _within_reach(_starting_dual(problem.g0, problem.constraint), stages[0] * problem.depth)
    used = 0
    plan = _plan(stages, coarse is not None)
    for position, (stage_lam, floor, is_coarse) in enumerate(plan):
        is_final = position == len(plan) - 1
        remaining = max_iter - used
        budget = remaining if is_final else max(1, min(remaining // 2, remaining - 1))
        stage_options = replace(options, tol=max(options.tol, floor), max_iter=budget)
        if coarse is not None:
            coarse.coarse = is_coarse
        try:
            stage = _iterate(replace(problem, lam=stage_lam), stage_options, g, history, used)
        finally:
            if coarse is not None:
                coarse.coarse = False
        used += stage.n_iter
        if is_final:
            g = stage.g
            break
        if stage.stopped_by_callback or used >= max_iter:
            g = stage.g * (lam / stage_lam)  # report a dual at the lam that was asked for
            break
        g = stage.g * (plan[position + 1][0] / stage_lam)

    converged = stage.converged and is_final
    trouble = None if converged else _unconverged(problem, options, stage, used, history)
    return SolveOutcome(g, used, converged, stage.error, tuple(history), start_sweeps), trouble


def _sampled_start(problem: Problem, options: SolveOptions) -> tuple[np.ndarray | None, float]:
    """The dual (H, K) of a sample of the rows solved to max(tol, SAMPLE_TOL), or None
    where no sample is taken (see SAMPLE_TOL) or it did not converge; and the sweeps spent
    on the sample, in sweeps of the whole scores."""
    constraint, sample = problem.constraint, getattr(problem.source, "sample", None)
    n_rows, n_labels = problem.n_rows, problem.n_labels
    n_sample = max(SAMPLE_PER_LABEL * n_labels, n_rows // SAMPLE_SHARE)
    if (
        sample is None
        or not isinstance(constraint, EqualityConstraint)
        or options.acceleration != "auto"
        or problem.warm_start is not None
        or problem.reduce is not None
        or n_sample * SAMPLE_MIN_STEP > n_rows
        or n_rows * n_labels < SAMPLE_MIN_ELEMENTS
        or not problem.summaries
        or any(not summary.extent < problem.depth for summary in problem.summaries)
    ):  # (an extent below the mask depth: no label can lose every point to the sample)
        return None, 0.0
    source = sample(n_sample, min(SAMPLE_PIECES, max(2, n_sample // SAMPLE_RUN)))
    backend = problem.backend
    backend = backend.for_solve() if hasattr(backend, "for_solve") else backend
    small = replace(
        problem, source=source, backend=backend, constraint=constraint.for_rows(source.n_rows)
    )
    share = source.n_rows / n_rows
    if not _skewed(small):
        return None, share
    budget = max(1, options.max_iter // SAMPLE_MIN_STEP)
    tol = max(options.tol, SAMPLE_TOL)
    outcome, _ = _solve(small, replace(options, tol=tol, max_iter=budget, callback=None))
    sweeps = (1 + outcome.start_sweeps + outcome.n_iter) * share  # (1: _skewed's sweep)
    return (outcome.g if outcome.converged else None), sweeps


def _plan(stages: list[float], coarse: bool) -> list[tuple[float, float, bool]]:
    """(lam, tol floor, coarse sweeps) of each stage: the continuation's stages to
    STAGE_TOL, then the final lam to tol; with ``coarse``, every stage sweeps coarse and
    the final lam runs twice, coarse to COARSE_TOL and then in float64 to tol."""
    plan = [(stage_lam, STAGE_TOL, coarse) for stage_lam in stages[:-1]]
    if coarse:
        plan.append((stages[-1], COARSE_TOL, True))
    return [*plan, (stages[-1], 0.0, False)]


def _coarse_state(problem: Problem, options: SolveOptions) -> Any:
    """The per-solve state whose ``coarse`` flag switches float64 blocks to float32
    arithmetic (see COARSE_TOL), or None where the solve sweeps in float64 throughout."""
    state = getattr(problem.backend, "state", None)
    if (
        not hasattr(state, "coarse")
        or str(problem.source.dtype) != "float64"
        or options.acceleration == "none"
        or problem.reduce is not None
        or problem.n_rows * problem.n_labels < COARSE_MIN_ELEMENTS
    ):
        return None
    return state


def _skewed(problem: Problem) -> bool:
    """Whether a sweep at the cold dual (g = 0) finds, in some head, a label with more
    than 1 + SAMPLE_SKEW times its target mass."""
    assert problem.constraint is not None
    cold = np.zeros(problem.n_labels)
    for head in range(problem.n_heads):
        log_mass = problem.column_stats(head, cold).log_mass()
        if problem.constraint.error(cold, log_mass) > SAMPLE_SKEW:
            return True
    return False


def _unconverged(
    problem: Problem, options: SolveOptions, stage: _Stage, used: int, history: list[float]
) -> str:
    """The ConvergenceWarning's message: why the solve stopped, and what to do."""
    lam, stopped = problem.lam, stage.stopped_by_callback
    reason = "its callback asked to stop" if stopped else f"max_iter={options.max_iter}"
    advice = "Raise max_iter, loosen tol, or warm-start from this result's state."
    stalled_since = _stalled_since(history, options.check_every)
    if stalled_since is not None and not stopped:
        advice = f"The error has not decreased since iteration {stalled_since}: " + (
            _sharpness(lam, problem.spread)
            if lam * problem.spread > SHARP_SPREAD
            else _out_of_reach()
        )
    if lam > ANNEAL_ABOVE and not stopped:
        faster = (
            " acceleration='auto' needs far fewer sweeps,"
            if options.acceleration in ("none", "overrelax")
            else ""
        )
        advice += (
            f" At large lam (here {lam:g}) Sinkhorn needs many sweeps: a smaller lam"
            f" converges sooner,{faster} and rounding='balanced' gives exact label"
            " counts from any dual."
        )
    return (
        f"Sinkhorn did not converge: stopped after {used} iterations ({reason}) with "
        f"error {stage.error:.3g} > tol={options.tol:g}; returning the best state seen. {advice}"
    )


def _fixed_steps(problem: Problem, options: SolveOptions) -> SolveOutcome:
    """SwAV's loop (``distributed_sinkhorn``; DINOv2's ``sinkhorn_knopp_teacher``):
    ``options.fixed_steps`` column steps, the first on the raw kernel exp(lam L) (no row
    normalisation before it: g_j = -log sum_i exp(lam L_ij), ``_column_logsumexp``), each
    later one after a sweep that normalises the rows (``_iterate``'s fixed-step mode).
    ``problem.warm_start`` is not used; ``converged`` is False (no test is made)."""
    first = [-_column_logsumexp(problem, head) for head in range(problem.n_heads)]
    g0 = np.stack([normalise_dual(g) for g in first])
    stage = _iterate(problem, options, g0, [], 0)
    return SolveOutcome(stage.g, stage.n_iter + 1, False, stage.error, ())


def _column_logsumexp(problem: Problem, head: int) -> np.ndarray:
    """log sum_i exp(lam L_ij) over every row of ``head`` and every rank (float64, (K,)).

    Blocks merge by ``np.logaddexp``; ranks by the column-statistics reducer, twice: the
    maxima (as ``colmax``), then the sums of exp(lse - max) (as ``colsum``)."""
    total = np.full(problem.n_labels, -np.inf)
    for block in problem.source.blocks(head):
        if block.shape[0]:
            part = problem.backend.column_logsumexp(block, problem.kind, problem.lam)
            np.logaddexp(total, part, out=total)
    if problem.reduce is None:
        return total
    zeros = np.zeros(problem.n_labels)
    top = problem.reduce(ColumnStats(zeros, total)).colmax
    shift = np.where(top > -np.inf, top, 0.0)
    with np.errstate(divide="ignore"):
        summed = problem.reduce(ColumnStats(np.exp(total - shift), top)).colsum
        return np.log(summed) + shift

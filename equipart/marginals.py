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

import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import ClassVar, Protocol

import numpy as np

__all__ = [
    "BandConstraint",
    "Bounds",
    "ColumnConstraint",
    "Counts",
    "EqualityConstraint",
    "Marginal",
    "Prior",
    "Relaxed",
    "RelaxedConstraint",
    "SmoothConstraint",
    "Uniform",
    "as_marginal",
    "normalise_dual",
]


class ColumnConstraint(Protocol):
    """The label-side constraint bound to a problem of ``n_rows`` points and K labels."""

    n_rows: int
    # equality targets: a common shift of g changes nothing (the driver keeps max g = 0);
    # bands and relaxed targets give the dual's zero a meaning
    shift_invariant: bool

    def update(self, g: np.ndarray, log_mass: np.ndarray) -> np.ndarray:
        """Return the next column dual (K,) given the current dual and log column masses."""
        ...

    def error(self, g: np.ndarray, log_mass: np.ndarray) -> float:
        """Return the convergence error at dual g with these column masses (0 at the end)."""
        ...

    def min_mass(self) -> np.ndarray:
        """The least mass each label must receive (float64, (K,)); > 0 means required."""
        ...

    def count_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Integer (lo, hi) label sizes, int64 (K,), that hard roundings must respect."""
        ...


class SmoothConstraint(ColumnConstraint, Protocol):
    """A constraint whose semi-dual F(g) (rows eliminated) is differentiable in g.

    F(g) = sum_i LSE_j(lam L_ij + g_j) + phi(g), convex, with gradient m(g) - a(g): the
    column masses of the sweep at g minus the masses ``aimed_log_mass`` names (log a);
    ``rho`` scales the column step (its exact step moves g_j by rho log(a_j / m_j)), and
    ``rebalance`` moves g to the minimum of F along the common shift (which leaves Q
    unchanged). The quasi-Newton step of ``equipart.solver`` needs these; bands (whose
    phi has a kink at g_j = 0) do without.
    """

    rho: float

    def aimed_log_mass(self, g: np.ndarray) -> np.ndarray:
        """log a(g) (K,), -inf for labels with no target."""
        ...

    def rebalance(self, g: np.ndarray, log_mass: np.ndarray) -> np.ndarray:
        """g moved along the common shift to the semi-dual's minimum there."""
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

    The semi-dual is F(g) = sum_i LSE_j(lam L_ij + g_j) - sum_j b_j g_j, with gradient
    m - b (``SmoothConstraint``); a common shift of g leaves it unchanged.
    """

    target: np.ndarray
    n_rows: int
    lo: np.ndarray = field(repr=False)
    hi: np.ndarray = field(repr=False)
    shift_invariant: ClassVar[bool] = True
    rho: ClassVar[float] = 1.0
    # derived once (the driver calls update and error every sweep): labels with b_j > 0,
    # and log b_j there (-inf elsewhere)
    _positive: np.ndarray = field(init=False, repr=False, compare=False)
    _log_target: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        positive = self.target > 0
        log_target = np.full(self.target.shape, -np.inf)
        log_target[positive] = np.log(self.target[positive])
        object.__setattr__(self, "_positive", None if positive.all() else positive)
        object.__setattr__(self, "_log_target", log_target)

    def update(self, g: np.ndarray, log_mass: np.ndarray) -> np.ndarray:
        if self._positive is None:  # every label has a target: no masking
            return normalise_dual(g + (self._log_target - log_mass))
        new = np.full_like(g, -np.inf)
        keep = self._positive
        new[keep] = g[keep] + (self._log_target[keep] - log_mass[keep])
        return normalise_dual(new)

    def aimed_log_mass(self, g: np.ndarray) -> np.ndarray:
        """log b (-inf where b_j = 0), whatever g."""
        return self._log_target

    def rebalance(self, g: np.ndarray, log_mass: np.ndarray) -> np.ndarray:
        """g with its largest finite entry at 0 (every common shift is a minimum)."""
        return normalise_dual(g)

    def for_rows(self, n_rows: int) -> EqualityConstraint:
        """The same label proportions over ``n_rows`` rows (a sample's constraint)."""
        return _equality(self.target * (n_rows / self.n_rows), n_rows)

    def error(self, g: np.ndarray, log_mass: np.ndarray) -> float:
        if self._positive is None:
            gap = log_mass - self._log_target
        else:
            gap = log_mass[self._positive] - self._log_target[self._positive]
        return float(np.abs(np.expm1(gap)).max()) if gap.size else 0.0

    def count_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lo, self.hi

    def min_mass(self) -> np.ndarray:
        return self.target


def normalise_dual(g: np.ndarray) -> np.ndarray:
    """Shift g so its largest finite entry is 0 (Q is unchanged: f absorbs the shift).

    Valid for equality targets only, where a common shift of g is absorbed by f.
    """
    top = g.max()
    if np.isfinite(top):  # g has no +inf, so the largest entry is the largest finite one
        return g - top
    finite = np.isfinite(g)
    return g - g[finite].max() if finite.any() else g


def _step_residual(g: np.ndarray, new: np.ndarray) -> float:
    """max_j |exp(new_j - g_j) - 1|: the relative change of each label's mass that the
    next column step would make (a KKT residual, 0 exactly at the solution)."""
    moving = np.isfinite(g) & np.isfinite(new)
    with np.errstate(over="ignore"):  # a step of 710+ nats: the residual is inf, rightly
        return float(np.max(np.abs(np.expm1(new[moving] - g[moving])), initial=0.0))


def _equality(target: np.ndarray, n_rows: int) -> EqualityConstraint:
    """Bind a real-valued target; integer sizes are its floor and ceiling (summing to N)."""
    lo = np.floor(target + 1e-9).astype(np.int64)
    hi = np.ceil(target - 1e-9).astype(np.int64)
    hi = np.maximum(hi, lo)
    return EqualityConstraint(target=target, n_rows=n_rows, lo=lo, hi=hi)


class Marginal(ABC):
    """A specification of the label (column) masses; see the module docstring.

    Marginals compare and hash by value (their arrays element by element), so a copy, a
    pickled round trip or the same sizes given twice are equal.
    """

    def _values(self) -> tuple:
        """The fields, arrays as (shape, dtype, bytes) so that they hash and compare."""
        values = []
        for item in fields(self):  # (every subclass is a dataclass)
            value = getattr(self, item.name)
            if isinstance(value, np.ndarray):
                value = (value.shape, value.dtype.str, value.tobytes())
            values.append(value)
        return tuple(values)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))

    @abstractmethod
    def bind(self, n_rows: int, n_labels: int, lam: float | None = None) -> ColumnConstraint:
        """Validate against an (n_rows, n_labels) problem and return its constraint.

        ``lam`` is the solve's inverse temperature; only KL-relaxed marginals need it.
        """


@dataclass(frozen=True)
class Uniform(Marginal):
    """An equipartition: every label receives N/K points (the SeLa default).

    N need not be divisible by K: the entropic solve targets N/K exactly, and hard
    roundings give every label floor(N/K) or ceil(N/K) points.
    """

    def bind(self, n_rows: int, n_labels: int, lam: float | None = None) -> EqualityConstraint:
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
        if np.any(sizes > np.iinfo(np.int64).max):
            raise ValueError(
                f"marginals: Counts(sizes) must be below 2**63 each, got {sizes.max()}"
            )
        frozen = sizes.astype(np.int64)
        frozen.setflags(write=False)
        object.__setattr__(self, "sizes", frozen)

    def bind(self, n_rows: int, n_labels: int, lam: float | None = None) -> EqualityConstraint:
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

    def bind(self, n_rows: int, n_labels: int, lam: float | None = None) -> EqualityConstraint:
        if self.p.size != n_labels:
            raise ValueError(
                f"marginals: Prior has {self.p.size} proportions but scores have "
                f"K={n_labels} labels"
            )
        return _equality(n_rows * self.p, n_rows)

    def __repr__(self) -> str:
        return f"Prior(p={self.p.tolist()!r})"


def _best_common_shift(g: np.ndarray, lo: np.ndarray, hi: np.ndarray, total: float) -> float:
    """The c nearest 0 that minimises the band dual along g + c (Q does not depend on c).

    After the rows are normalised the dual is sum_i LSE_j(lam L_ij + g_j) plus, per label,
    -lo_j g_j where g_j >= 0 and -hi_j g_j where g_j < 0. Its slope in c is total minus
    the lo_j of the labels at or above 0 minus the hi_j of those below, which grows by
    hi_j - lo_j as g_j + c crosses 0 upwards: walk the crossings from c = 0 until the
    slope changes sign. Labels shut at -inf take no part.
    """
    open_ = np.isfinite(g)
    g, lo, hi = g[open_], lo[open_], hi[open_]
    slope_right = total - lo[g >= 0].sum() - hi[g < 0].sum()
    slope_left = total - lo[g > 0].sum() - hi[g <= 0].sum()
    # rounding of the slope's sums (sum(lo) or sum(hi) equal to N can give a slope of
    # -1 ulp with no crossing to walk to); infinite upper limits add nothing to it
    slack = 1e-12 * (total + hi[np.isfinite(hi)].sum() + lo.sum())
    if slope_right < -slack:  # the dual decreases to the right of 0: raise every g_j
        slope, crossings = slope_right, -g[g < 0]
        steps = (hi - lo)[g < 0]
        order = np.argsort(crossings, kind="stable")
    elif slope_left > slack:  # ... to the left: lower them
        slope, crossings = -slope_left, -g[g > 0]
        steps = (hi - lo)[g > 0]
        order = np.argsort(-crossings, kind="stable")
    else:
        return 0.0
    for crossing, step in zip(crossings[order], steps[order], strict=True):
        slope += step
        if slope >= -slack:
            return float(crossing)
    # past every crossing the slope is total - sum(lo) >= 0 (or sum(hi) - total going
    # left): the last crossing, where only rounding kept the loop from stopping
    return float(crossings[order][-1]) if crossings.size else 0.0


@dataclass(frozen=True)
class BandConstraint:
    """Column masses within [lo_j, hi_j] (float64 counts, (K,)).

    The entropic problem max <Q, lam L> + H(Q) with rows summing to 1 and
    lo <= Q^T 1 <= hi has the dual variable g_j = alpha_j - beta_j with multipliers
    alpha, beta >= 0 of the two one-sided constraints. Exact block-coordinate ascent on the
    dual (equivalently, Bregman projections onto the two half-spaces with Dykstra's
    correction: Bauschke and Lewis, "Dykstra's algorithm with Bregman projections: a
    convergence proof", Optimization 48, 2000; Benamou et al., "Iterative Bregman
    projections for regularized transportation problems", SIAM J. Sci. Comput. 37, 2015)
    gives, with s_j = m_j exp(-g_j) the mass label j would have at g_j = 0,

        g_j <- median(log lo_j - log s_j, 0, log hi_j - log s_j).

    The dual's zero is meaningful here (g_j = 0: no bound active), but Q is unchanged by a
    common shift of g (the row normalisation absorbs it), so the column step alone moves g
    along that direction only through the few labels inside their band, which takes
    thousands of sweeps on strongly label-biased scores. Each update therefore also takes
    the exact minimum of the dual along the shift (``_best_common_shift``), an extra block
    of the same coordinate descent: the masses stay as they are and the dual decreases, and
    at the optimum the shift is 0.
    ``error`` is the step residual max_j |exp(g_new_j - g_j) - 1|.
    """

    lo: np.ndarray
    hi: np.ndarray
    n_rows: int
    shift_invariant: ClassVar[bool] = False

    def _median_step(self, g: np.ndarray, log_mass: np.ndarray) -> np.ndarray:
        """The column step before the common shift."""
        with np.errstate(divide="ignore", invalid="ignore"):
            log_free = log_mass - g  # log s_j
            raise_to = np.log(self.lo) - log_free
            lower_to = np.log(self.hi) - log_free
        new = np.minimum(np.maximum(raise_to, 0.0), lower_to)
        new = np.where(np.isfinite(log_free), new, 0.0)  # unreachable label: lo_j is 0
        return np.where(self.hi > 0, new, -np.inf)

    def update(self, g: np.ndarray, log_mass: np.ndarray) -> np.ndarray:
        new = self._median_step(g, log_mass)
        return new + _best_common_shift(new, self.lo, self.hi, float(self.n_rows))

    def kink_guard(self, proposal: np.ndarray, step: np.ndarray) -> np.ndarray:
        """``proposal`` (an extrapolated dual) with every label it puts on the other side
        of g_j = 0 than the column step ``step`` does put at 0 instead: the dual has a
        kink there, where labels within their band end, and a line through two points on
        one side says nothing about the other (extrapolated steps that jumped across it
        cycled between the two sides)."""
        crossed = np.sign(proposal) * np.sign(step) < 0
        return np.where(crossed, 0.0, proposal)

    def pieces(self, g: np.ndarray, log_mass: np.ndarray) -> np.ndarray:
        """Which piece of the column step each label is on: +1 raised to its lower limit,
        -1 lowered to its upper limit, 0 within its band (int8, (K,)). The step is smooth
        where this pattern does not change (Anderson's history restarts where it does)."""
        return np.sign(self._median_step(g, log_mass)).astype(np.int8)

    def error(self, g: np.ndarray, log_mass: np.ndarray) -> float:
        return _step_residual(g, self.update(g, log_mass))

    def count_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.floor(self.lo + 1e-9).astype(np.int64)
        hi = np.minimum(np.ceil(self.hi - 1e-9), self.n_rows).astype(np.int64)
        return lo, hi

    def min_mass(self) -> np.ndarray:
        return self.lo


@dataclass(frozen=True)
class RelaxedConstraint:
    """A KL-penalised column marginal (one-sided unbalanced OT; rows stay exact).

    Maximises <Q, lam L> + H(Q) - lam tau KL(Q^T 1 | b). The exact column step is

        g_j <- rho (log b_j - log s_j),   rho = lam tau / (lam tau + 1),

    with s_j = m_j exp(-g_j). As for bands (``BandConstraint``), Q does not change with a
    common shift of g, along which this step alone moves slowly at large tau on strongly
    label-biased scores; each update also takes the dual's exact minimum along that shift,
    which in closed form (kappa = lam tau, the dual's term per label kappa b_j exp(-g_j /
    kappa)) makes the masses the new g implies, b_j exp(-g_j / kappa), sum to N: the shift
    is c = kappa (log sum_j b_j exp(-g_j / kappa) - log N) over the reachable labels.
    ``error`` is the step residual max_j |exp(g_new - g) - 1|.

    The semi-dual is F(g) = sum_i LSE_j(lam L_ij + g_j) + kappa sum_j b_j exp(-g_j / kappa),
    with gradient m - a, a_j = b_j exp(-g_j / kappa) (``SmoothConstraint``).
    """

    target: np.ndarray
    n_rows: int
    kappa: float  # lam tau (inf: the equality)
    shift_invariant: ClassVar[bool] = False
    # derived once (the driver calls update every sweep): rho, and the targets' sum
    rho: float = field(init=False, repr=False, compare=False)
    _total: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rho = 1.0 if np.isinf(self.kappa) else self.kappa / (self.kappa + 1.0)
        object.__setattr__(self, "rho", rho)
        object.__setattr__(self, "_total", float(self.target[self.target > 0].sum()))

    def update(self, g: np.ndarray, log_mass: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            log_free = log_mass - g
            new = self.rho * (np.log(self.target) - log_free)
        reachable = np.isfinite(log_free) & (self.target > 0)
        new = np.where(np.isfinite(log_free), new, 0.0)
        new = np.where(self.target > 0, new, -np.inf)
        if np.isfinite(self.kappa) and reachable.any():  # (tau = inf: the equality's step)
            new = new + self._common_shift(new[reachable], self.target[reachable])
        return new

    def _common_shift(self, g: np.ndarray, b: np.ndarray) -> float:
        """c with sum_j b_j exp(-(g_j + c) / kappa) = N over the reachable labels, N
        taken as the targets' sum (equal to the rows' in exact arithmetic, and computed
        the same way as the reachable labels' sum when all are reachable, so that at
        large kappa no rounding of N is multiplied by kappa): kappa log1p(u) with
        u = sum_j (b_j / N) expm1(-g_j / kappa) + (sum_j b_j / N - 1) where the
        exponents are small, a log-sum-exp otherwise."""
        total = self._total
        exponents = -g / self.kappa
        if np.abs(exponents).max() < 0.5:
            u = (b / total * np.expm1(exponents)).sum() + (b.sum() - total) / total
            return float(self.kappa * np.log1p(u))
        terms = np.log(b) + exponents
        top = terms.max()
        return float(self.kappa * (top + np.log(np.exp(terms - top).sum()) - np.log(total)))

    def aimed_log_mass(self, g: np.ndarray) -> np.ndarray:
        """log (b_j exp(-g_j / kappa)) (-inf where b_j = 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            log_target = np.log(self.target)
            return log_target if np.isinf(self.kappa) else log_target - g / self.kappa

    def rebalance(self, g: np.ndarray, log_mass: np.ndarray) -> np.ndarray:
        """g plus the common shift that ``update`` also takes (over the reachable labels:
        finite g and log mass, positive target), in closed form."""
        reachable = np.isfinite(g) & np.isfinite(log_mass) & (self.target > 0)
        if np.isinf(self.kappa) or not reachable.any():
            return g
        return g + self._common_shift(g[reachable], self.target[reachable])

    def error(self, g: np.ndarray, log_mass: np.ndarray) -> float:
        return _step_residual(g, self.update(g, log_mass))

    def count_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """No hard sizes: any count from 0 to N (labels with a zero target get none)."""
        hi = np.where(self.target > 0, self.n_rows, 0).astype(np.int64)
        return np.zeros_like(hi), hi

    def min_mass(self) -> np.ndarray:
        """None required, except at tau = inf, where the target is an equality (a label
        with no mass at any point is then refused at the first sweep, not run to
        ``max_iter``)."""
        return self.target if np.isinf(self.kappa) else np.zeros_like(self.target)


def _band_array(value: object, name: str) -> np.ndarray:
    try:
        array = np.array(value, dtype=np.float64)  # a copy: it is frozen below
    except (TypeError, ValueError) as exc:
        raise TypeError(f"marginals: Bounds {name} must be a number or an array of counts") from exc
    if array.ndim > 1:
        raise ValueError(f"marginals: Bounds {name} must be a scalar or 1-D, got {array.shape}")
    if np.isnan(array).any() or (array < 0).any():
        raise ValueError(f"marginals: Bounds {name} must be non-negative numbers, got {value!r}")
    return array


@dataclass(frozen=True, eq=False)
class Bounds(Marginal):
    """Near-balanced label masses: label j receives between ``lo[j]`` and ``hi[j]`` points.

    ``lo`` and ``hi`` are counts (scalars apply to every label; ``hi`` may be inf). Use
    ``Bounds.relative(0.9, 1.1)`` for "within 10% of N/K" (or of another target). Solved
    exactly in the entropic sense (see ``BandConstraint``); ``rounding="balanced"`` and
    ``"exact"`` give label j between floor(lo_j) and ceil(hi_j) points (``"argmax"``
    labels follow the soft masses only approximately).
    """

    lo: np.ndarray | float
    hi: np.ndarray | float
    around: Marginal | None = None  # set by Bounds.relative: lo, hi are then factors

    def __post_init__(self) -> None:
        lo, hi = _band_array(self.lo, "lo"), _band_array(self.hi, "hi")
        if lo.shape and hi.shape and lo.shape != hi.shape:
            raise ValueError(f"marginals: Bounds lo {lo.shape} and hi {hi.shape} differ in shape")
        bad = np.flatnonzero(np.broadcast_to(lo > hi, np.broadcast_shapes(lo.shape, hi.shape)))
        if bad.size:
            raise ValueError(
                f"marginals: Bounds needs lo <= hi, but lo > hi for label(s) {bad[:10].tolist()}"
            )
        if self.around is not None and not isinstance(self.around, (Uniform, Counts, Prior)):
            raise TypeError("marginals: Bounds.relative needs Uniform(), Counts or Prior")
        for name, array in (("lo", lo), ("hi", hi)):
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    @classmethod
    def relative(cls, lo: float, hi: float, around: Marginal | None = None) -> Bounds:
        """Masses within [lo, hi] times a target (``around``, default ``Uniform()``)."""
        return cls(lo, hi, around if around is not None else Uniform())

    def bind(
        self, n_rows: int, n_labels: int, lam: float | None = None
    ) -> BandConstraint | EqualityConstraint:
        lo, hi = self.lo, self.hi
        if self.around is not None:
            target = self.around.bind(n_rows, n_labels).target
            lo, hi = lo * target, hi * target
        lo = np.broadcast_to(lo, (n_labels,)) if lo.ndim == 0 else lo
        hi = np.broadcast_to(hi, (n_labels,)) if hi.ndim == 0 else hi
        if lo.shape != (n_labels,) or hi.shape != (n_labels,):
            given = lo.shape[0] if lo.shape != (n_labels,) else hi.shape[0]
            raise ValueError(
                f"marginals: Bounds has {given} labels but scores have K={n_labels}; give "
                "scalars or one limit per label"
            )
        if lo.sum() > n_rows * (1 + 1e-12):
            raise ValueError(
                f"marginals: Bounds lower limits sum to {lo.sum():.6g} > N={n_rows}: "
                "no assignment can give every label its minimum"
            )
        if hi.sum() < n_rows * (1 - 1e-12):
            raise ValueError(
                f"marginals: Bounds upper limits sum to {hi.sum():.6g} < N={n_rows}: "
                "the labels cannot hold every point"
            )
        lo, hi = lo.astype(np.float64), hi.astype(np.float64)
        # limits summing to N leave one point of the band: m = lo (or m = hi). As a band
        # its step could move only the labels below their limit (the others are held at
        # g_j = 0 by the median), so such solves stall near error 1e-3 for thousands of
        # sweeps; as the equality they are plain (over-relaxed) Sinkhorn.
        for limit in (lo, hi):
            if abs(limit.sum() - n_rows) <= 1e-12 * n_rows:
                return _equality(limit * (n_rows / limit.sum()), n_rows)
        return BandConstraint(lo=lo, hi=hi, n_rows=n_rows)

    def __repr__(self) -> str:
        if self.around is not None:
            return f"Bounds.relative({self.lo.tolist()!r}, {self.hi.tolist()!r}, {self.around!r})"
        return f"Bounds(lo={self.lo.tolist()!r}, hi={self.hi.tolist()!r})"


@dataclass(frozen=True)
class Relaxed(Marginal):
    """A KL-relaxed target: label masses pulled toward ``target`` with strength ``tau``.

    Solves max <Q, L> + (1/lam) H(Q) - tau KL(Q^T 1 | b) with rows summing to 1, b the
    masses of ``target`` (``Uniform()``, ``Counts`` or ``Prior``), tau in the units of
    the scores. Conventions: this is POT's ``ot.unbalanced.sinkhorn_unbalanced(a=1, b,
    M=-L, reg=1/lam, reg_m=(inf, tau), reg_type="entropy")``, so ``tau`` equals POT's
    ``reg_m``; OTT-JAX's ``tau_b`` is lam tau / (lam tau + 1). tau -> inf recovers the
    balanced problem, tau -> 0 the row-only softmax.
    """

    target: Marginal
    tau: float

    def __post_init__(self) -> None:
        if not isinstance(self.target, (Uniform, Counts, Prior)):
            raise TypeError(
                "marginals: Relaxed(target, tau) needs a target with one mass per label: "
                f"Uniform(), Counts or Prior, got {type(self.target).__name__}"
            )
        if isinstance(self.tau, (bool, np.bool_)) or not isinstance(self.tau, numbers.Real):
            raise TypeError(f"marginals: Relaxed tau must be a number > 0, got {self.tau!r}")
        object.__setattr__(self, "tau", float(self.tau))
        if not self.tau > 0:
            raise ValueError(f"marginals: Relaxed tau must be > 0 (inf: balanced), got {self.tau}")

    def bind(self, n_rows: int, n_labels: int, lam: float | None = None) -> RelaxedConstraint:
        if lam is None:
            raise ValueError("marginals: Relaxed needs the solve's lam to bind")
        target = self.target.bind(n_rows, n_labels).target
        return RelaxedConstraint(target=target, n_rows=n_rows, kappa=float(lam * self.tau))


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

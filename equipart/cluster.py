r"""Balanced k-means: Lloyd's iterations whose assignment step has exact cluster sizes.

``BalancedKMeans`` minimises the k-means objective (the inertia, the sum of squared
distances of the points to their cluster's centre) over assignments whose cluster sizes
are prescribed: equal (floor or ceil of N / K, the default), within a band
``[size_min, size_max]``, or any :class:`equipart.Marginal` with hard counts. Each
iteration

1. assigns the points to the current centres with the prescribed sizes, by one of two
   steps. The *certified* step solves the hard-assignment LP

   .. math:: \min_a \sum_i |x_i - c_{a(i)}|^2 \quad\text{s.t. sizes within bounds}

   exactly: the balanced rounding (``rounding="balanced"``, ``equipart.balanced``) of
   the scores L_ij = -|x_i - c_j|^2 (``equipart.Factored(..., metric="sqeuclidean")``,
   one GEMM per block of rows, never the N x K matrix) returns a certified optimum from
   any starting prices. The *auction* step (``equipart.balanced.auction_labels``, where
   Numba is installed and every band is at most one wide: equal sizes, ``Counts``, or
   the floor / ceil of N / K, the labels allowed one point more taking it in index
   order) gives exact counts within N eps of that LP's optimum (in units of lam L): each
   row bids on its ``AUCTION_WIDTH`` best labels (one GEMM pass), rows whose candidates
   become too dear are re-ranked at the current prices, and the stages
   ``AUCTION_EPSILONS`` (times lam times the median margin below) shrink eps. The
   auction's prices carry over to the next iteration, so late iterations take little
   more than their GEMM pass; a sampled auction (``AUCTION_SAMPLE`` rows per cluster)
   gives the first iteration's. The auction steps run while the labels change; once
   they settle (or the centres stop moving), the remaining iterations are certified,
   the rounding starting at the auction's prices (each certified step's own prices
   start the next). Bands wider than one, or no Numba, make every step certified: a
   loose Sinkhorn solve (``SINKHORN_TOL``, at most ``SINKHORN_MAX_ITER`` sweeps,
   Anderson-accelerated, warm-started from the previous step's dual; the first starts
   cold at lam / ``COLD_DIVISOR`` and continues at lam from that dual, scaled up) gives
   the prices from which the rounding starts (the previous step's exact prices moved by
   the change of the Sinkhorn dual);
2. moves every centre to the mean of its points (a cluster left empty, possible only when
   its lower size is 0, keeps its centre);

and stops when the labels of certified steps no longer change, or when the squared
centre shift falls to ``tol`` times the mean variance of the features (scikit-learn's
rule), or after ``max_iter`` iterations. The final labels are always a certified step's:
the exact optimum for the final centres. Initialisation is greedy k-means++
(``_greedy_kmeans_plusplus``: 2 + ln K trials per centre, the random draws of
scikit-learn's former ``_k_init``, on a random subset of ``INIT_SAMPLE`` points, or 50
per cluster, where the data are larger); ``n_init`` runs keep the one with the lowest
inertia. Points are centred on their mean first (as scikit-learn's ``KMeans`` does), so
that float32 distances keep their digits.

The inverse temperature ``lam`` does not change the labels of a certified step (the
rounding is exact for any dual), only how fast they are found; the auction's eps scales
with it, so its steps are the same up to rounding. ``"auto"``
takes lam = ``LAM_AUTO`` / s, with s the median, over up to ``LAM_SAMPLE`` points, of the
gap between a point's squared distances to its nearest and second-nearest initial centres:
lam times a typical margin between a point's two best clusters is then ``LAM_AUTO``
(30 was the fastest of 10, 30 and 100 on the 20,000 x 32, 100-cluster mixture of
benchmarks/bench_cluster.py: a smaller lam leaves the rounding more points to move, a
larger one needs more sweeps).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from .backends.base import Backend
from .balanced import auction_labels, balanced_passes, has_compiled_passes, top_candidates
from .factored import Factored
from .marginals import Bounds, ColumnConstraint, Marginal, Prior, Relaxed, Uniform
from .problem import Problem, SolveOptions
from .solver import ConvergenceWarning, run_sinkhorn

__all__ = ["BalancedKMeans"]

LAM_AUTO = 30.0  # lam x the median margin between a point's two nearest centres
LAM_SAMPLE = 2048  # points sampled for lam="auto"
INIT_SAMPLE = 50_000  # k-means++ draws its centres among at most this many points (or 50 K)
SINKHORN_TOL = 1e-2  # each assignment's Sinkhorn solve: max_j |m_j / b_j - 1|
SINKHORN_MAX_ITER = 100  # ... and its sweeps at most (the rounding is exact regardless)
COLD_DIVISOR = 8.0  # the first solve starts at lam / COLD_DIVISOR
AUCTION_EPSILONS = (1 / 30, 1 / 300, 1 / 3000)  # the auction's stages, x the median margin
AUCTION_WIDTH = 16  # candidates per row of the auction steps
AUCTION_SAMPLE = 32  # rows per cluster of the sampled auction giving the first potentials


@dataclass(frozen=True)
class _Run:
    """One initialisation's outcome."""

    centers: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    lam: float


class BalancedKMeans(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator
):
    """K-means clustering with exact cluster sizes (equal by default, or within bounds).

    Parameters
    ----------
    n_clusters : int, default 8
        The number of clusters K.
    size_min, size_max : int, optional
        Every cluster gets between ``size_min`` and ``size_max`` points (a band, through
        :class:`equipart.Bounds`; either may be left out). Without both (and without
        ``marginals``) the sizes are equal: floor(N / K) or ceil(N / K).
    marginals : equipart.Marginal, optional
        Explicit sizes instead: ``Counts(sizes)`` (summing to N), ``Prior(p)``,
        ``Uniform()`` or ``Bounds(lo, hi)`` (counts); not with ``size_min``/``size_max``.
        ``Relaxed`` targets have no hard sizes and are refused.
    lam : "auto" or float, default "auto"
        Inverse temperature of the Sinkhorn solves, in units of 1 / squared distance.
        It changes the running time, not the result (see the module docs for "auto").
    n_init : int, default 1
        k-means++ initialisations; the run with the lowest inertia is kept.
    max_iter : int, default 100
        Most assignment / update iterations of one run.
    tol : float, default 1e-4
        Stop when the sum of squared centre moves is at most ``tol`` times the mean
        variance of the features (or when the labels repeat).
    random_state : int, RandomState instance or None
        Seeds k-means++ (and the sample of lam="auto").
    backend : str or equipart.backends.Backend, default "auto"
        The equipart backend of the assignment steps (``"numba"`` where installed;
        ``"numpy"``; ``"torch"`` runs them on CPU tensors sharing the data's memory).

    Attributes
    ----------
    cluster_centers_ : ndarray (n_clusters, n_features)
        The centres, the means of their clusters.
    labels_ : ndarray of int64 (n_samples,)
        The cluster of every training point: an optimal assignment to
        ``cluster_centers_`` with the prescribed sizes.
    inertia_ : float
        Sum of squared distances of the training points to their cluster's centre.
    n_iter_ : int
        Iterations of the kept run.
    lam_ : float
        The lam of the kept run.
    n_features_in_ : int
        Number of features seen during fit.
    """

    _parameter_constraints: dict = {  # noqa: RUF012 (scikit-learn's convention)
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "size_min": [Interval(Integral, 0, None, closed="left"), None],
        "size_max": [Interval(Integral, 1, None, closed="left"), None],
        "marginals": [Marginal, None],
        "lam": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "backend": [str, Backend],
    }

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        size_min: int | None = None,
        size_max: int | None = None,
        marginals: Marginal | None = None,
        lam: str | float = "auto",
        n_init: int = 1,
        max_iter: int = 100,
        tol: float = 1e-4,
        random_state: Any = None,
        backend: str | Backend = "auto",
    ) -> None:
        self.n_clusters = n_clusters
        self.size_min = size_min
        self.size_max = size_max
        self.marginals = marginals
        self.lam = lam
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.backend = backend

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # -- sizes ------------------------------------------------------------------------------
    def _sizes(self, n_samples: int) -> Marginal:
        """The marginal of the assignment steps, checked against n_samples."""
        k = self.n_clusters
        if n_samples < k:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={k}.")
        banded = self.size_min is not None or self.size_max is not None
        if self.marginals is not None:
            if banded:
                raise ValueError(
                    "marginals: pass either marginals or size_min / size_max, not both"
                )
            if isinstance(self.marginals, Relaxed):
                raise ValueError(
                    "marginals: a Relaxed target has no hard sizes, which every assignment "
                    "step needs; pass Uniform(), Counts, Prior or Bounds"
                )
            return self.marginals
        if not banded:
            return Uniform()
        low = 0 if self.size_min is None else self.size_min
        high = np.inf if self.size_max is None else self.size_max
        if low > high:
            raise ValueError(
                f"size_min={low} exceeds size_max={high}; pass size_min <= size_max"
            )
        if k * low > n_samples:
            raise ValueError(
                f"size_min: n_clusters * size_min = {k} * {low} = {k * low} exceeds "
                f"n_samples={n_samples}, so the clusters cannot all get size_min points; "
                "lower size_min or n_clusters"
            )
        if k * high < n_samples:
            raise ValueError(
                f"size_max: n_clusters * size_max = {k} * {high} = {k * high} is below "
                f"n_samples={n_samples}, so the clusters cannot hold every point; raise "
                "size_max or n_clusters"
            )
        return Bounds(low, high)

    def _constraint(self, spec: Marginal, n_samples: int) -> ColumnConstraint:
        try:
            return spec.bind(n_samples, self.n_clusters)
        except ValueError as exc:
            raise ValueError(
                f"{exc} (for BalancedKMeans, K = n_clusters = {self.n_clusters} and "
                f"N = n_samples = {n_samples})"
            ) from exc

    # -- fitting ----------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None) -> BalancedKMeans:
        """Cluster X (n_samples, n_features) into n_clusters clusters of the given sizes.

        Returns
        -------
        self
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32], order="C")
        constraint = self._constraint(self._sizes(X.shape[0]), X.shape[0])
        rng = check_random_state(self.random_state)
        self._mean = X.mean(axis=0)
        centred = X - self._mean
        threshold = float(np.mean(np.var(X, axis=0))) * self.tol
        best = None
        for _ in range(self.n_init):
            run = self._run(centred, constraint, rng, threshold)
            if best is None or run.inertia < best.inertia:
                best = run
        self.cluster_centers_ = best.centers + self._mean
        self.labels_ = best.labels
        self.inertia_ = best.inertia
        self.n_iter_ = best.n_iter
        self.lam_ = best.lam
        self._n_features_out = self.n_clusters
        return self

    def _run(
        self, x: np.ndarray, constraint: ColumnConstraint, rng: Any, threshold: float
    ) -> _Run:
        """One initialisation: k-means++, then balanced Lloyd iterations (centred x)."""
        centers = _kmeans_plusplus(x, self.n_clusters, rng)
        margin = _median_margin(x, centers, rng)
        lam = LAM_AUTO / margin if self.lam == "auto" else float(self.lam)
        counts = _exact_counts(constraint)
        if counts is None:
            step = _CertifiedSteps(constraint, lam, self.backend)
        else:
            step = _AuctionSteps(constraint, lam, self.backend, counts, lam * margin)
            step.start(x, centers, rng)
        labels, n_iter, settled = None, 0, False
        for n_iter in range(1, self.max_iter + 1):  # noqa: B007 (n_iter is reported)
            new_labels = step(x, centers)
            new_centers = _centroids(x, new_labels, centers)
            shift = float(((new_centers - centers) ** 2).sum())
            settled = labels is not None and np.array_equal(labels, new_labels)
            labels, centers = new_labels, new_centers
            if (settled or shift <= threshold) and not step.certified:
                step = step.certifying()  # the rest of the iterations certified
                settled = False
            elif settled or shift <= threshold:
                break
        if not settled:  # the labels of the final centres
            labels = step.certifying()(x, centers)
        return _Run(centers, labels, _inertia(x, centers, labels), n_iter, lam)

    # -- using the clusters -----------------------------------------------------------------
    def _centred(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(X - the training mean, centres - the training mean), checked, in X's dtype."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32], order="C")
        return X - self._mean.astype(X.dtype), (self.cluster_centers_ - self._mean).astype(
            X.dtype
        )

    def predict(self, X: Any, *, balanced: bool = False) -> np.ndarray:
        """The cluster of each point of X.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
        balanced : bool, default False
            False: each point's nearest centre. True: an optimal assignment of this batch
            to the centres in which every cluster gets its share of the batch, in the
            proportions of the fitted clusters' sizes (equal sizes, for a fit with equal
            sizes): floor or ceil of n_samples x size_j / N.

        Returns
        -------
        ndarray of int64 (n_samples,)
        """
        x, centers = self._centred(X)
        if not balanced:
            return _nearest(x, centers, self.backend)
        sizes = np.bincount(self.labels_, minlength=self.n_clusters)
        constraint = Prior(sizes / sizes.sum()).bind(x.shape[0], self.n_clusters)
        return _assign(x, centers, constraint, self.lam_, _Duals(), self.backend)

    def transform(self, X: Any) -> np.ndarray:
        """Euclidean distances of the points of X to the centres, (n_samples, n_clusters)."""
        x, centers = self._centred(X)
        return euclidean_distances(x, centers)

    def score(self, X: Any, y: Any = None) -> float:
        """The opposite of the inertia of X against the nearest centres (larger is better)."""
        x, centers = self._centred(X)
        return -_inertia(x, centers, _nearest(x, centers, self.backend))


# --------------------------------------------------------------------------- the steps
def _kmeans_plusplus(x: np.ndarray, n_clusters: int, rng: Any) -> np.ndarray:
    """k-means++ centres, chosen among at most max(INIT_SAMPLE, 50 n_clusters) points drawn
    at random (all of them for smaller data): k-means++ costs O(N K d) per run, as much as
    several Lloyd iterations at a million points."""
    size = max(INIT_SAMPLE, 50 * n_clusters)
    if x.shape[0] > size:
        x = x[np.sort(rng.choice(x.shape[0], size=size, replace=False))]
    # one BLAS thread: the GEMMs are thin (a few trials by N x d), where waking BLAS
    # threads costs more than it saves
    with threadpool_limits(1, user_api="blas"):
        centers = _greedy_kmeans_plusplus(x.astype(np.float64), n_clusters, rng)
    return centers.astype(x.dtype)


def _greedy_kmeans_plusplus(x: np.ndarray, n_clusters: int, rng: Any) -> np.ndarray:
    """Greedy k-means++ (Arthur and Vassilvitskii; scikit-learn's default seeding): the
    first centre uniformly at random, then each next one the best, by the potential
    sum_i min_c |x_i - c|^2 it leaves, of 2 + floor(ln K) points drawn with probability
    proportional to D(x)^2, the squared distance to the nearest centre so far."""
    n_rows = x.shape[0]
    trials = 2 + int(np.log(n_clusters))
    norms = np.einsum("ij,ij->i", x, x)
    centers = np.empty((n_clusters, x.shape[1]))
    centers[0] = x[rng.randint(n_rows)]
    nearest = np.maximum(norms - 2.0 * (x @ centers[0]) + centers[0] @ centers[0], 0.0)
    for c in range(1, n_clusters):
        cumulative = np.cumsum(nearest)
        picks = np.searchsorted(cumulative, rng.uniform(size=trials) * cumulative[-1])
        picks = np.minimum(picks, n_rows - 1)
        distances = norms[picks, None] - 2.0 * (x[picks] @ x.T) + norms[None, :]
        np.maximum(distances, 0.0, out=distances)
        np.minimum(distances, nearest, out=distances)
        best = int(np.argmin(distances.sum(axis=1)))
        centers[c], nearest = x[picks[best]], distances[best]
    return centers


def _median_margin(x: np.ndarray, centers: np.ndarray, rng: Any) -> float:
    """The median, over up to ``LAM_SAMPLE`` sampled points, of the gap between a point's
    squared distances to its two nearest centres (1.0 where there is no gap: one
    cluster, or equal points)."""
    if centers.shape[0] < 2:
        return 1.0
    rows = rng.choice(x.shape[0], size=min(x.shape[0], LAM_SAMPLE), replace=False)
    distances = euclidean_distances(x[rows], centers, squared=True)
    nearest = np.partition(distances, 1, axis=1)[:, :2]
    gap = float(np.median(nearest[:, 1] - nearest[:, 0]))
    return gap if gap > 0 else 1.0


def _exact_counts(constraint: ColumnConstraint) -> np.ndarray | None:
    """Exact label sizes for the auction steps where the bands are at most one wide (equal
    sizes, counts, or floor / ceil of N / K: the labels that may take one point more take
    it in index order), and Numba is installed; else None (every step certified)."""
    lo, hi = constraint.count_bounds()
    if np.any(hi - lo > 1) or not has_compiled_passes():
        return None
    counts = lo.copy()
    counts[np.flatnonzero(hi > lo)[: int(constraint.n_rows - lo.sum())]] += 1
    return counts


@dataclass
class _Duals:
    """What one assignment step hands the next: the Sinkhorn dual and the LP's prices."""

    soft: np.ndarray | None = None
    prices: np.ndarray | None = None

    def start(self, soft: np.ndarray) -> np.ndarray:
        """Where the rounding starts: the last prices moved as the Sinkhorn dual moved
        since then (the entropic dual's offset from the LP's changes slowly), or the new
        dual itself at the first step (and wherever that is not finite)."""
        if self.prices is None:
            return soft
        moved = self.prices + (soft - self.soft)
        return np.where(np.isfinite(moved), moved, soft)


def _assign(
    x: np.ndarray,
    centers: np.ndarray,
    constraint: ColumnConstraint,
    lam: float,
    duals: _Duals,
    backend: Any,
) -> np.ndarray:
    """The exact-size assignment of x to the centres (labels; ``duals`` updated): a
    Sinkhorn solve warm-started at the last step's dual (a cold one first at lam /
    ``COLD_DIVISOR``, whose dual, scaled up, starts the solve at lam), then the
    certified balanced rounding (``equipart.balanced``) from ``_Duals.start``."""
    engine, source = _open_scores(x, centers, backend)
    if duals.soft is None:
        cold = _sinkhorn(source, engine, lam / COLD_DIVISOR, constraint, None)
        soft = _sinkhorn(source, engine, lam, constraint, cold * COLD_DIVISOR)
    else:
        soft = _sinkhorn(source, engine, lam, constraint, duals.soft)
    labels, prices = _balanced_rounding(source, engine, lam, duals.start(soft), constraint)
    duals.soft, duals.prices = soft, prices
    return labels


class _CertifiedSteps:
    """Every assignment step certified: a Sinkhorn solve warm-started across steps, then
    the balanced rounding (``_assign``)."""

    certified = True

    def __init__(self, constraint: ColumnConstraint, lam: float, backend: Any) -> None:
        self.constraint, self.lam, self.backend = constraint, lam, backend
        self.duals = _Duals()

    def __call__(self, x: np.ndarray, centers: np.ndarray) -> np.ndarray:
        return _assign(x, centers, self.constraint, self.lam, self.duals, self.backend)

    def certifying(self) -> _CertifiedSteps:
        return self


class _RoundingSteps:
    """Certified steps after the auction's: the balanced rounding alone, started at the
    previous step's prices (the auction's, then its own)."""

    certified = True

    def __init__(
        self, constraint: ColumnConstraint, lam: float, backend: Any, prices: np.ndarray
    ) -> None:
        self.constraint, self.lam, self.backend = constraint, lam, backend
        self.prices = prices

    def __call__(self, x: np.ndarray, centers: np.ndarray) -> np.ndarray:
        labels, self.prices = _rounding_step(
            x, centers, self.constraint, self.lam, self.backend, self.prices
        )
        return labels

    def certifying(self) -> _RoundingSteps:
        return self


class _AuctionSteps:
    """Exact-count steps by the auction (``equipart.balanced.auction_labels``), each
    within N eps of the step's optimum, the potentials carried from step to step; a
    sampled auction gives the first step's."""

    certified = False

    def __init__(
        self,
        constraint: ColumnConstraint,
        lam: float,
        backend: Any,
        counts: np.ndarray,
        margin: float,
    ) -> None:
        self.constraint, self.lam, self.backend = constraint, lam, backend
        self.counts = counts
        self.epsilons = tuple(margin * e for e in AUCTION_EPSILONS)
        self.potential = np.zeros(counts.shape[0])

    def start(self, x: np.ndarray, centers: np.ndarray, rng: Any) -> None:
        """Potentials from an auction on a sample of ``AUCTION_SAMPLE`` rows per cluster
        (its sizes in the same proportions), where x has more rows than that."""
        size = AUCTION_SAMPLE * centers.shape[0]
        if x.shape[0] <= size:
            return
        rows = np.sort(rng.choice(x.shape[0], size=size, replace=False))
        counts = np.floor(self.counts * (size / x.shape[0])).astype(np.int64)
        short = size - int(counts.sum())
        counts[np.argsort(counts - self.counts * (size / x.shape[0]))[:short]] += 1
        out = auction_labels(
            _ranker(x[rows], centers, self.lam, self.backend), counts, self.potential,
            self.epsilons, AUCTION_WIDTH,
        )  # fmt: skip
        if out is not None:
            self.potential = out[1]

    def __call__(self, x: np.ndarray, centers: np.ndarray) -> np.ndarray:
        rank = _ranker(x, centers, self.lam, self.backend)
        out = auction_labels(rank, self.counts, self.potential, self.epsilons, AUCTION_WIDTH)
        if out is None:  # the auction gave up: a certified step from the same potentials
            labels, self.potential = _rounding_step(
                x, centers, self.constraint, self.lam, self.backend, self.potential
            )
            return labels
        labels, potential = out
        self.potential = potential - potential[np.isfinite(potential)].max()
        return labels

    def certifying(self) -> _RoundingSteps:
        return _RoundingSteps(self.constraint, self.lam, self.backend, self.potential)


def _ranker(x: np.ndarray, centers: np.ndarray, lam: float, backend: Any) -> Any:
    """``rank(rows, g, k)`` of ``auction_labels`` for the utilities -lam |x_i - c_j|^2
    (up to a row term): each row's k best labels by them plus g, on the host."""

    def rank(rows: np.ndarray | None, g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        engine, source = _open_scores(x if rows is None else x[rows], centers, backend)
        return top_candidates(source, engine, 0, "logits", lam, g, k)[:2]

    return rank


def _open_scores(x: np.ndarray, centers: np.ndarray, backend: Any) -> tuple[Any, Any]:
    """The backend and row source of the scores -|x_i - c_j|^2 (up to a row term): a
    ``Factored``, of torch CPU tensors sharing x's memory for ``backend="torch"``."""
    if backend == "torch":
        import torch

        x, centers = torch.from_numpy(x), torch.from_numpy(centers)
    return Factored(x, centers, metric="sqeuclidean").open(backend)


def _sinkhorn(
    source: Any, engine: Any, lam: float, constraint: ColumnConstraint, g: np.ndarray | None
) -> np.ndarray:
    """The dual of a loose Sinkhorn solve (``SINKHORN_TOL``, at most ``SINKHORN_MAX_ITER``
    sweeps, Anderson-accelerated) from g (zeros: None)."""
    start = np.zeros((1, source.n_labels)) if g is None else g[None, :]
    with warnings.catch_warnings():  # a loose solve: the rounding after it is exact anyway
        warnings.simplefilter("ignore", ConvergenceWarning)
        problem = Problem(source, engine.for_solve(), lam, constraint=constraint, warm_start=start)
        options = SolveOptions(SINKHORN_TOL, SINKHORN_MAX_ITER, acceleration="anderson")
        outcome = run_sinkhorn(problem, options)
    return outcome.g[0]


def _rounding_step(
    x: np.ndarray,
    centers: np.ndarray,
    constraint: ColumnConstraint,
    lam: float,
    backend: Any,
    prices: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``_balanced_rounding`` of the scores of x against the centres, with no Sinkhorn
    solve: (labels, final prices) from ``prices``."""
    engine, source = _open_scores(x, centers, backend)
    return _balanced_rounding(source, engine, lam, prices, constraint)


def _balanced_rounding(
    source: Any, engine: Any, lam: float, prices: np.ndarray, constraint: ColumnConstraint
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, final prices) of ``rounding="balanced"`` (``equipart.balanced``) started at
    ``prices``: candidates widen until the certificate holds, so the labels are an exact
    optimum of the LP. The prices are returned to warm-start the next step's rounding."""
    passes, _ = balanced_passes(source, engine, 0, "logits", lam, prices, constraint)
    solution = passes[-1][1]
    if not solution.feasible:
        raise ValueError(
            "marginals: no assignment gives every cluster a size within its bounds; check "
            "size_min, size_max or the marginals"
        )
    return solution.labels.astype(np.int64), solution.prices


def _nearest(x: np.ndarray, centers: np.ndarray, backend: Any) -> np.ndarray:
    """Each point's nearest centre (the lower index on ties)."""
    engine, source = _open_scores(x, centers, backend)
    (block,) = source.blocks(0)
    labels = engine.labels(block, "logits", 1.0, np.zeros(centers.shape[0]))
    return engine.to_numpy(labels).astype(np.int64)


def _centroids(x: np.ndarray, labels: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The mean of every cluster's points (an empty cluster keeps its previous centre)."""
    n_clusters = previous.shape[0]
    counts = np.bincount(labels, minlength=n_clusters)
    sums = np.empty(previous.shape, dtype=np.float64)
    for feature in range(x.shape[1]):
        sums[:, feature] = np.bincount(labels, weights=x[:, feature], minlength=n_clusters)
    centers = previous.copy()
    filled = counts > 0
    centers[filled] = sums[filled] / counts[filled, None]
    return centers


def _inertia(x: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> float:
    """sum_i |x_i - c_labels_i|^2, accumulated in float64."""
    total = 0.0
    step = max(1, (1 << 20) // max(1, x.shape[1]))
    for start in range(0, x.shape[0], step):
        rows = slice(start, start + step)
        diff = x[rows].astype(np.float64) - centers[labels[rows]]
        total += float(np.einsum("ij,ij->", diff, diff))
    return total

"""The contract every backend implements: one class per array library.

A backend owns every touch of the N x K scores; the driver (``equipart.solver``) owns
every decision (when to stop, how to update g, how to merge statistics across blocks and
ranks). Everything K-dimensional crosses the boundary as float64 NumPy arrays on the host,
so the driver is the same for every backend.

Notation (see ``equipart.result``): L is the log-probability form of a block of scores
(``kind`` says how to get it: ``"logits"`` and ``"logprobs"`` are used as they are, since a
softmax's row normaliser is absorbed into f; ``"probs"`` is log-transformed), lam the
inverse temperature and g the column dual. For a block of n rows the *sweep* computes

    z_ij = lam * L_ij + g_j,   v_ij = z_ij - max_k z_ik,
    f_i  = -(max_k z_ik + log sum_k exp v_ik)         (rows of Q sum to 1)
    Q_ij = exp(z_ij + f_i) = exp(v_ij) / sum_k exp(v_ik)

and returns, from that single read of the block,

    colsum_j = sum_i Q_ij                             (column masses, each Q_ij <= 1)
    colmax_j = max_i v_ij                             (guards against underflow)

with log m_j >= colmax_j - log K, which the driver uses where colsum_j underflowed.
colmax_j must be exact where colsum_j == 0; elsewhere a backend may return any lower bound
of it (-inf included), since there log colsum_j >= colmax_j - log K already (up to
rounding) and the driver's max(log colsum_j, colmax_j - log K) does not read it. The
Numba, Triton and CuPy sweeps use this to keep the column maximum out of their hot loops.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

ScoreKind = Literal["logits", "logprobs", "probs"]
_TINY = np.finfo(np.float64).tiny  # below it a float64 colsum is subnormal: log is inexact

__all__ = ["Backend", "BlockCheck", "ColumnStats", "ScoreKind", "Session"]


@dataclass(frozen=True)
class ColumnStats:
    """Per-column statistics of one sweep over some rows (float64, shape (K,)).

    Statistics of disjoint row sets merge by adding ``colsum`` and taking the maximum of
    ``colmax`` (across blocks, chunks and distributed ranks alike).
    """

    colsum: np.ndarray
    colmax: np.ndarray

    def merge(self, other: ColumnStats) -> ColumnStats:
        return ColumnStats(self.colsum + other.colsum, np.maximum(self.colmax, other.colmax))

    @classmethod
    def empty(cls, n_labels: int) -> ColumnStats:
        return cls(np.zeros(n_labels), np.full(n_labels, -np.inf))

    def log_mass(self) -> np.ndarray:
        """log m_j, exact where colsum_j is normal, a lower bound where it underflowed."""
        n_labels = self.colsum.shape[0]
        if self.colsum.min(initial=np.inf) >= _TINY:  # the common case: every sum is normal
            return np.log(self.colsum)
        log_sum = np.full(n_labels, -np.inf)
        np.log(self.colsum, out=log_sum, where=self.colsum > 0)
        return np.maximum(log_sum, self.colmax - np.log(n_labels), out=log_sum)


def needs_exact_colmax(colsum: np.ndarray, g: np.ndarray) -> bool:
    """Whether a sweep whose kernel left colmax out must supply it: some column sum
    underflowed to 0 for a label with a finite dual (see ``ColumnStats``)."""
    return bool(np.any((colsum == 0.0) & (g > -np.inf)))


def check_label_range(low: int, high: int, n_labels: int) -> None:
    """Refuse labels outside [0, K) (given their smallest and largest value)."""
    if low < 0 or high >= n_labels:
        raise ValueError(f"labels: expected values in [0, {n_labels}), got {low} to {high}")


@dataclass(frozen=True)
class BlockCheck:
    """What input validation learns from one block of scores."""

    # no NaN and no +inf anywhere (-inf is allowed: an impossible label, and min_value)
    finite_or_neg_inf: bool
    min_value: float
    max_row_sum_deviation: float  # max_i |sum_j x_ij - 1|, only computed for probs
    max_value: float = float("nan")  # the largest entry (NaN: not reported by this backend)
    # per label, the number of rows where it is possible, int64 (K,): for probs the rows
    # giving it a positive probability; for logits and logprobs the rows where its score
    # is above -inf, reported only for blocks holding -inf (None: every row, or not
    # reported by the backend). An array: left out of ==, compare it with np.array_equal
    support: np.ndarray | None = field(default=None, compare=False)
    # min_i max_j x_ij: the lowest of the rows' best entries (NaN: not reported)
    min_row_max: float = float("nan")
    # for logits, sum_i log sum_j exp(x_ij) in float64: the rows' log-normalisers, which
    # the objective subtracts from the picked scores (NaN: not asked for, not reported by
    # the backend, or not logits; see Backend.reports_log_normaliser)
    log_normaliser: float = float("nan")


class Backend(ABC):
    """One array library's implementation of the sweep and its companion passes."""

    name: ClassVar[str]
    # True where ``check(block, "logits", log_normaliser=True)`` also reports
    # ``BlockCheck.log_normaliser`` (the objective then reads only the picked scores);
    # ``check`` is called with that keyword only where this is True
    reports_log_normaliser: ClassVar[bool] = False

    @staticmethod
    @abstractmethod
    def accepts(scores: Any) -> bool:
        """Whether ``scores`` is an array this backend can read without a copy."""

    @abstractmethod
    def shape_dtype(self, scores: Any) -> tuple[tuple[int, ...], np.dtype | str]:
        """The shape and a NumPy-style dtype (or its name) of ``scores``, reading no data;
        TypeError naming ``scores`` for a form of array the backend cannot read."""

    @abstractmethod
    def head(self, scores: Any, index: int) -> Any:
        """The 2-D (N, K) view of head ``index`` of an (H, N, K) stack."""

    @abstractmethod
    def check(self, block: Any, kind: ScoreKind) -> BlockCheck:
        """Validate one block: NaN and +inf, extremes, row sums and support (see
        ``BlockCheck``). A backend that sets ``reports_log_normaliser`` also takes
        ``log_normaliser=True`` and then reports ``BlockCheck.log_normaliser`` for logits."""

    @abstractmethod
    def sweep(self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray) -> ColumnStats:
        """One fused pass over a block: row duals from g, column statistics for the next g."""

    @abstractmethod
    def labels(self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray) -> Any:
        """argmax_j (lam * L_ij + g_j) for every row, int64, in the backend's library."""

    @abstractmethod
    def codes(self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray) -> Any:
        """The soft assignment Q of the block (rows sum to 1), floating point."""

    @abstractmethod
    def top_labels(
        self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray, k: int
    ) -> tuple[Any, Any]:
        """The k best labels of every row by lam * L_ij + g_j, best first.

        Returns (indices int64 (n, k), values (n, k)) in the backend's library, where
        values are lam * L_ij + g_j in the compute precision. Ties keep the lower index
        first. Hard roundings (balanced counts) use these candidates.
        """

    @abstractmethod
    def logprob_sum(self, block: Any, kind: ScoreKind, labels: Any) -> float:
        """sum_i log P_i,labels_i, with log P the row-normalised log-probabilities."""

    @abstractmethod
    def concat(self, parts: list[Any]) -> Any:
        """Concatenate row blocks (along the first axis)."""

    @abstractmethod
    def stack(self, parts: list[Any]) -> Any:
        """Stack per-head results along a new first axis."""

    def column_logsumexp(self, block: Any, kind: ScoreKind, lam: float) -> np.ndarray:
        """log sum_i exp(lam * L_ij) over the block's rows (no row normalisation), float64
        (K,) on the host: -inf for a label impossible at every row. lam * L is formed in
        the compute precision, as in the sweep, and the sums are taken with each column's
        maximum subtracted, so that no exp overflows. Merge blocks with ``np.logaddexp``.

        This default copies the block to the host (``to_numpy``) and runs the NumPy
        backend's; array-library backends compute it where the block lives.
        """
        from .numpy import NumpyBackend

        return NumpyBackend().column_logsumexp(self.to_numpy(block), kind, lam)

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run in this process now (None: it can). ``"auto"``
        passes over a backend with a reason; naming it raises ValueError with the reason."""
        return None

    def for_scores(self, scores: Any) -> Backend:
        """The backend that runs the passes over ``scores``: this one, or one it routes
        such arrays to (the torch backend sends CPU tensors to the Numba kernels). The
        registry calls it once, when it chooses the backend for a solve's scores."""
        return self

    def new_state(self) -> Any:
        """A fresh per-solve state for :meth:`sweep_with`, or None where the backend keeps
        none (then a solve uses the backend itself)."""
        return None

    def sweep_with(
        self, state: Any, block: Any, kind: ScoreKind, lam: float, g: np.ndarray
    ) -> ColumnStats:
        """``sweep`` within a solve whose state (from ``new_state``) it reads and updates,
        such as each block's row maxima or captured CUDA graphs. Its result is the
        sweep's, whatever the state holds. Default: ``sweep``."""
        return self.sweep(block, kind, lam, g)

    def for_solve(self) -> Backend:
        """The backend one solve's Sinkhorn loop uses: this one where ``new_state`` is
        None, else a :class:`Session` holding a fresh state, dropped when the solve ends."""
        state = self.new_state()
        return self if state is None else Session(self, state)

    def to_numpy(self, array: Any) -> np.ndarray:
        """A host NumPy copy of a small array (labels for rounding, never the scores)."""
        return np.asarray(array)

    def from_numpy(self, array: np.ndarray, like: Any) -> Any:
        """Move a small host array to the library and device of ``like``."""
        return array


class Session(Backend):
    """One solve's backend: every method is ``backend``'s, and the sweeps run with the
    solve's ``state`` (``backend.sweep_with(state, ...)``). The loop of a solve gets one
    from ``backend.for_solve()``; it holds nothing else, so solves never share state.

    A subclass changing the sweep of a backend with per-solve state overrides
    ``sweep_with`` (which its ``sweep`` calls with no state), since a session calls that.
    """

    def __init__(self, backend: Backend, state: Any) -> None:
        self.backend = backend
        self.state = state
        self.name = backend.name

    def sweep(self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray) -> ColumnStats:
        return self.backend.sweep_with(self.state, block, kind, lam, g)

    def for_solve(self) -> Backend:
        return self.backend.for_solve()

    def accepts(self, scores: Any) -> bool:  # (an instance method here: the backend's)
        return self.backend.accepts(scores)

    def shape_dtype(self, scores: Any) -> tuple[tuple[int, ...], np.dtype | str]:
        return self.backend.shape_dtype(scores)

    def head(self, scores: Any, index: int) -> Any:
        return self.backend.head(scores, index)

    def check(self, block: Any, kind: ScoreKind) -> BlockCheck:
        return self.backend.check(block, kind)

    def labels(self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray) -> Any:
        return self.backend.labels(block, kind, lam, g)

    def codes(self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray) -> Any:
        return self.backend.codes(block, kind, lam, g)

    def top_labels(
        self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray, k: int
    ) -> tuple[Any, Any]:
        return self.backend.top_labels(block, kind, lam, g, k)

    def logprob_sum(self, block: Any, kind: ScoreKind, labels: Any) -> float:
        return self.backend.logprob_sum(block, kind, labels)

    def column_logsumexp(self, block: Any, kind: ScoreKind, lam: float) -> np.ndarray:
        return self.backend.column_logsumexp(block, kind, lam)

    def concat(self, parts: list[Any]) -> Any:
        return self.backend.concat(parts)

    def stack(self, parts: list[Any]) -> Any:
        return self.backend.stack(parts)

    def unavailable_reason(self) -> str | None:
        return self.backend.unavailable_reason()

    def to_numpy(self, array: Any) -> np.ndarray:
        return self.backend.to_numpy(array)

    def from_numpy(self, array: np.ndarray, like: Any) -> Any:
        return self.backend.from_numpy(array, like)

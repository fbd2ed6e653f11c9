"""The fused CPU sweep of :class:`equipart.Factored` scores: BLAS GEMM and the Numba sweep
in one parallel region.

A sweep over rows of features x (N x d) against prepared prototypes P (d x K, see
``equipart.factored``) is one kernel call over the chunks of ``_n_chunks`` (a function of
the shape only), which the calling thread and the Numba backend's helper threads claim one
at a time (``equipart.backends.numba._run``). Each thread, for ``gemm_rows`` rows of its
chunk at a time,

1. computes their scores s = x P (+ the column terms) with one ``np.dot`` into a buffer
   of about ``CACHE_BYTES`` (BLAS: Numba calls SciPy's, held to one thread during the
   call by ``blas_single_thread``, so the kernel's threads are the only ones), and
2. runs the Numba backend's row loops on the buffer while it is in cache: z = lam s + g
   (``_affine``), the row maximum, then exp and the row sum with the previous row's
   column-sum update folded in; column sums accumulate in the compute precision over
   ``FLUSH_ROWS`` rows and then in float64 per chunk, merged in chunk order.

So no block of scores goes through main memory: the pass costs the GEMM plus the sweep's
arithmetic on cached data. The column maxima (the driver's underflow guard,
``equipart.backends.base.ColumnStats``) are computed by a second fused pass only where a
column sum came out zero with g_j finite, as the Numba backend does. Sweeps here are
always cold (no row-maximum cache). Same precision as the Numba backend: float32 factors
compute in float32 (in base-2 units), float64 in float64.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (the BLAS Numba's np.dot calls: loaded first)
from numba import njit

from .backends.base import ColumnStats, needs_exact_colmax
from .backends.numba import (
    _EXACT_Z,
    _FAST,
    _OPTS,
    NumbaBackend,
    _affine,
    _chunk_bounds,
    _claim,
    _exp_units,
    _finish,
    _fmax,
    _n_chunks,
    _run,
    _scale_row_exact,
    _scaled_params,
    _shifted_row,
    _top_of_row,
    _unit,
)

__all__ = ["FusedPasses", "blas_single_thread"]

CACHE_BYTES = 256 << 10  # one thread's buffer of scores (L2-sized)
FLUSH_ROWS = 64  # rows per compute-precision column-sum accumulation (as SUB_ROWS)
MAX_GEMM_ROWS = 1024

_BLAS_LOCK = threading.Lock()
_blas_state: dict[str, Any] = {"users": 0, "limiter": None, "controller": None}


@contextmanager
def blas_single_thread() -> Iterator[None]:
    """BLAS held to one thread (threadpoolctl, where installed) while any fused sweep runs:
    the sweep's threads call it concurrently, and its own threads would oversubscribe the
    cores. Reference-counted, so concurrent sweeps restore the setting once, at the end."""
    with _BLAS_LOCK:
        if _blas_state["users"] == 0:
            _blas_state["limiter"] = _limit_blas()
        _blas_state["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _blas_state["users"] -= 1
            if _blas_state["users"] == 0 and _blas_state["limiter"] is not None:
                _blas_state["limiter"].restore_original_limits()
                _blas_state["limiter"] = None


def _limit_blas() -> Any:
    """A threadpoolctl limiter holding every BLAS to one thread, or None (not installed)."""
    if _blas_state["controller"] is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return None
        _blas_state["controller"] = ThreadpoolController()
    return _blas_state["controller"].limit(limits=1, user_api="blas")


@njit(fastmath=_FAST, inline="always")
def _scores(x, factors, protos_t, bias, b0, b1, rows_in, out):
    """Scores of rows b0:b1 of x into out[:b1 - b0]: (x * factors) @ protos_t + bias,
    where factors (cosine) and bias (sqeuclidean) may be empty (not applied)."""
    n = b1 - b0
    s = out[:n]
    if factors.shape[0]:
        scaled = rows_in[:n]
        for i in range(n):
            f = factors[b0 + i]
            for k in range(x.shape[1]):
                scaled[i, k] = x[b0 + i, k] * f
        np.dot(scaled, protos_t, s)
    else:
        np.dot(x[b0:b1], protos_t, s)
    if bias.shape[0]:
        for i in range(n):
            for j in range(s.shape[1]):
                s[i, j] += bias[j]
    return s


@njit(**_OPTS, fastmath=_FAST)
def _sweep_kernel(counters, x, factors, protos_t, bias, lam, g, n_chunks, gemm_rows, sums):
    """Per-chunk float64 column sums of Q for the rows of x (see the module docs)."""
    n_rows, n_features = x.shape
    n_labels = protos_t.shape[1]
    zero, one, none = g.dtype.type(0.0), g.dtype.type(1.0), g.dtype.type(-np.inf)
    buffer = np.empty((gemm_rows, n_labels), dtype=x.dtype)
    rows_in = np.empty((gemm_rows if factors.shape[0] else 0, n_features), dtype=x.dtype)
    e = np.zeros(n_labels, dtype=g.dtype)  # exp of the row awaiting its column update
    acc = np.empty(n_labels, dtype=g.dtype)
    last = False
    c = _claim(counters)
    while c < n_chunks:
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        total = sums[c]
        for b0 in range(r0, r1, gemm_rows):
            b1 = min(b0 + gemm_rows, r1)
            s = _scores(x, factors, protos_t, bias, b0, b1, rows_in, buffer)
            for f0 in range(0, b1 - b0, FLUSH_ROWS):
                acc[:] = zero
                weight = zero  # 1 / rowsum of the row held in e (0: nothing pending)
                for i in range(f0, min(f0 + FLUSH_ROWS, b1 - b0)):
                    row = s[i]
                    m = none
                    for j in range(n_labels):
                        m = _fmax(m, _affine(lam, row[j], g[j]))
                    if m == -np.inf:  # no label reachable from this row: no mass
                        continue
                    t = zero
                    for j in range(n_labels):
                        acc[j] += e[j] * weight
                        ej = _exp_units(_affine(lam, row[j], g[j]) - m)
                        e[j] = ej
                        t += ej
                    weight = one / t
                for j in range(n_labels):
                    total[j] += acc[j] + e[j] * weight
        last = _finish(counters, n_chunks)
        c = _claim(counters)
    return last


@njit(**_OPTS, fastmath=_FAST)
def _colmax_kernel(counters, x, factors, protos_t, bias, lam, g, n_chunks, gemm_rows, maxima):
    """Per-chunk column maxima of v = z - max_k z_k (the underflow guard)."""
    n_rows, n_features = x.shape
    n_labels = protos_t.shape[1]
    zero = g.dtype.type(0.0)
    buffer = np.empty((gemm_rows, n_labels), dtype=x.dtype)
    rows_in = np.empty((gemm_rows if factors.shape[0] else 0, n_features), dtype=x.dtype)
    z = np.empty(n_labels, dtype=g.dtype)
    last = False
    c = _claim(counters)
    while c < n_chunks:
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        cmax = maxima[c]
        cmax[:] = -np.inf
        for b0 in range(r0, r1, gemm_rows):
            b1 = min(b0 + gemm_rows, r1)
            s = _scores(x, factors, protos_t, bias, b0, b1, rows_in, buffer)
            for i in range(b1 - b0):
                m = _shifted_row(s[i], False, lam, g, z, zero)  # z = lam * s + g, its max
                if m == -np.inf:
                    continue
                for j in range(n_labels):
                    cmax[j] = _fmax(cmax[j], z[j] - m)
        last = _finish(counters, n_chunks)
        c = _claim(counters)
    return last


@njit(**_OPTS, fastmath=_EXACT_Z)
def _top_kernel(
    counters, x, factors, protos_t, bias, lam, g, n_chunks, gemm_rows, indices, values
):
    """The k = indices.shape[1] best labels of every row by z = lam * s + g (z rounded as
    the Numba backend's ``top_labels`` rounds it), best first, lower index on ties."""
    n_rows, n_features = x.shape
    n_labels = protos_t.shape[1]
    buffer = np.empty((gemm_rows, n_labels), dtype=x.dtype)
    rows_in = np.empty((gemm_rows if factors.shape[0] else 0, n_features), dtype=x.dtype)
    z = np.empty(n_labels, dtype=g.dtype)
    last = False
    c = _claim(counters)
    while c < n_chunks:
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        for b0 in range(r0, r1, gemm_rows):
            b1 = min(b0 + gemm_rows, r1)
            s = _scores(x, factors, protos_t, bias, b0, b1, rows_in, buffer)
            for i in range(b1 - b0):
                _scale_row_exact(s[i], False, lam, g, z)
                _top_of_row(z, indices[b0 + i], values[b0 + i])
        last = _finish(counters, n_chunks)
        c = _claim(counters)
    return last


def gemm_rows(n_labels: int, itemsize: int) -> int:
    """Rows per GEMM in a thread: a buffer of about CACHE_BYTES, in whole FLUSH_ROWS."""
    rows = CACHE_BYTES // max(1, n_labels * itemsize)
    return int(min(MAX_GEMM_ROWS, max(FLUSH_ROWS, rows - rows % FLUSH_ROWS)))


class FusedPasses:
    """The sweep and the candidates (``top_labels``) of a Factored source's rows, fused.

    Built from ``Factored.host_factors()``: features (N, d), row factors (N,) or None,
    prepared prototypes (H, d, K) and column terms (H, K) or None, all host NumPy arrays
    of one dtype (float32 or float64). Features that are not C-contiguous are copied once.
    """

    def __init__(
        self,
        features: np.ndarray,
        factors: np.ndarray | None,
        protos_t: np.ndarray,
        bias: np.ndarray | None,
    ) -> None:
        dtype = features.dtype
        self.features = np.ascontiguousarray(features)
        self.factors = np.empty(0, dtype) if factors is None else np.ascontiguousarray(factors)
        self.protos_t = protos_t
        n_heads, _, n_labels = protos_t.shape
        self.bias = np.empty((n_heads, 0), dtype) if bias is None else np.asarray(bias)
        self.unit = _unit(dtype)
        self.gemm_rows = gemm_rows(n_labels, dtype.itemsize)

    @staticmethod
    def unavailable_reason() -> str | None:
        return NumbaBackend().unavailable_reason()

    def _arguments(
        self, head: int, start: int, stop: int, lam: float, g: np.ndarray, unit: float
    ) -> tuple:
        lam_c, g_c = _scaled_params(lam, g, self.features.dtype, unit)
        factors = self.factors[start:stop] if self.factors.shape[0] else self.factors
        rows = self.features[start:stop]
        n_chunks = _n_chunks(rows.shape[0], g.shape[0])
        return (rows, factors, self.protos_t[head], self.bias[head], lam_c, g_c, n_chunks)

    def sweep(self, head: int, start: int, stop: int, lam: float, g: np.ndarray) -> ColumnStats:
        """Column statistics of rows start:stop of ``head`` (``Backend.sweep``)."""
        arguments = self._arguments(head, start, stop, lam, g, self.unit)
        n_chunks, n_labels = arguments[-1], g.shape[0]
        sums = np.zeros((n_chunks, n_labels))
        n_scores = (stop - start) * n_labels
        with blas_single_thread():
            _run(_sweep_kernel, n_chunks, n_scores, *arguments, self.gemm_rows, sums)
        colsum = sums.sum(axis=0)
        colmax = np.full(n_labels, -np.inf)
        if needs_exact_colmax(colsum, arguments[5]):  # a column sum underflowed: one more pass
            maxima = np.empty((n_chunks, n_labels), dtype=self.features.dtype)
            with blas_single_thread():
                _run(_colmax_kernel, n_chunks, n_scores, *arguments, self.gemm_rows, maxima)
            colmax = maxima.max(axis=0).astype(np.float64) / self.unit
        return ColumnStats(colsum, colmax)

    def top_labels(
        self, head: int, start: int, stop: int, lam: float, g: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best labels of rows start:stop of ``head`` (``Backend.top_labels``), in
        natural units, with the Numba backend's roundings of z; the indices are int32."""
        arguments = self._arguments(head, start, stop, lam, g, 1.0)
        k = min(int(k), g.shape[0])
        indices = np.empty((stop - start, k), dtype=np.int32)
        values = np.empty((stop - start, k), dtype=self.features.dtype)
        with blas_single_thread():
            kernel_arguments = (*arguments, self.gemm_rows, indices, values)
            _run(_top_kernel, arguments[-1], values.shape[0] * g.shape[0], *kernel_arguments)
        return indices, values

"""The Numba backend: the fused sweep as parallel compiled kernels, one read per sweep.

Same contract and notation as ``equipart.backends.base`` (z = lam * L + g, v = z - rowmax,
Q = exp(v) / rowsum exp(v)); this module makes the sweep run near the speed of one read of
the scores.

Parallelism and determinism
    The rows of a block are split into ``n_chunks`` contiguous chunks, a number that depends
    only on the block's shape (never on the thread count). ``prange`` hands chunks to
    threads; each chunk accumulates its own float64 column partials, and the partials are
    merged in chunk order. The result is therefore bit-identical for any
    ``NUMBA_NUM_THREADS`` / ``numba.set_num_threads``. The kernels call no BLAS.

Memory
    Per chunk: a few K-vectors and, for inputs that are not C-contiguous, a buffer of
    ``SUB_ROWS`` rows (the row block is copied there, in the compute precision, in the
    order of the input's strides). Column partials: ``n_chunks x K`` float64, capped at
    ``PARTIALS_BYTES``. A solve's backend (``for_solve``) also keeps one number per row of
    each block for its warm sweeps (``_sweep_kernel``). Nothing of size N x K is ever
    allocated by a sweep.

Precision
    float32 inputs compute in float32 (float16 too, converted block by block), everything
    else in float64; column sums accumulate over ``SUB_ROWS`` rows in the compute precision
    and then in float64. ``labels`` and ``top_labels`` form z = float(lam) * L + float(g)
    in the compute precision with separate roundings (no FMA), exactly as the NumPy
    backend does, so they agree with it bit for bit (for ``probs`` up to the 1-ulp
    differences between libm's and NumPy's ``log``).

exp
    Numba has no vectorised float32 ``exp`` on this stack (no SVML-patched LLVM), and the
    scalar libm call costs ~10x a read of the scores. The float32 sweep and codes kernels
    therefore work in base-2 units (lam and g multiplied by log2 e, see ``_unit``) and
    compute 2^w for w <= 0 with ``_exp_units``: n = roundeven(w), r = w - n (exact),
    2^r by the degree-6 polynomial interpolating it at the Chebyshev nodes of [-1/2, 1/2]
    (relative error 2.5e-9), and n added to the exponent bits. It is exact at 0, within
    1 ulp of the correctly rounded value elsewhere (tests/test_numba.py), and returns 0
    below 2^``EXP2_FLOOR`` (about 2.4e-38; libm would return subnormals) and for -inf.
    Such terms only matter in column sums that underflow anyway, and there the driver
    uses ``colmax``, computed exactly (by ``_colmax_kernel``) wherever a column sum is
    zero. float64 uses ``math.exp``.
"""

from __future__ import annotations

import copy
import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .base import BlockCheck, ColumnStats, ScoreKind, check_label_range, needs_exact_colmax
from .numpy import NumpyBackend, compute_dtype, possible_rows

__all__ = ["ConvertedRows", "NumbaBackend"]

if numba.config.DISABLE_JIT:  # the kernels' LLVM intrinsics cannot run as Python
    raise ImportError("Numba's JIT is disabled (NUMBA_DISABLE_JIT=1)")

SUB_ROWS = 64  # rows per sub-block: column sums flush to float64 once per sub-block
MIN_CHUNK_ROWS = 128  # fewest rows per chunk: float64 partials stay <= 3.2% of float32 rows
MAX_CHUNKS = 256  # most chunks (the merge reads n_chunks x K partials)
PARTIALS_BYTES = 16 << 20  # cap on the float64 partials of one sweep
CONVERT_ELEMENTS = 1 << 20  # block size when float16 / integer input is converted

# Fast-math for the kernels: reassociation (vectorised reductions) and FMA contraction,
# but no "ninf", because g_j = -inf (zero-target labels) and log(0) (probabilities) are
# legitimate values. ``labels``/``top_labels`` run without "contract" so that z has the
# same roundings as in the NumPy backend.
_FAST = {"nnan", "nsz", "arcp", "reassoc", "contract", "afn"}
_EXACT_Z = {"nnan", "nsz", "arcp", "reassoc", "afn"}
_CHECK = {"nsz", "reassoc", "contract"}  # values may be NaN or inf: no "nnan", "ninf"
_NO_REASSOC = {"nnan", "nsz", "arcp", "contract", "afn"}
_OPTS = {"parallel": True, "cache": True, "nogil": True}

_F32 = np.float32
# float32 works in base-2 units: z2 = z * log2(e), so that exp(v) = 2^(v log2 e) needs no
# multiply and the range reduction w = n + r (n = round(w)) is exact.
LOG2E = 1.0 / math.log(2.0)
EXP2_FLOOR = _F32(-125.0)  # exp2 returns 0 below: 2^-125 = 2.4e-38, near float32's normal floor
# A warm sweep's shift may exceed a row's maximum by up to WARM_SLACK kernel units (log2
# for float32: the largest term is then at least 2^-30) and fall short of it by rounding
# only; past WARM_SLACK_UP the exp would leave its domain, and the row is redone cold.
WARM_SLACK = 30.0
WARM_SLACK_UP = 1.0
MAX_WARM_BLOCKS = 64  # row-maximum caches per solve (heads x blocks); more stay cold
# Warm sweeps only for WARM_MIN_LABELS <= K <= WARM_MAX_LABELS: the cache is 1/K of a
# float32 input (at most 1.6%), and a warm sweep took 0.70-0.86x the cold one's time at
# K = 100 and 1,000 (benchmarks/results/numba_cpu.json) but 1.11x at K = 3,000 (a side
# test on the same 2-core AMD EPYC, not committed: the cold path's cheap maximum loop
# brings a 12 KB row into cache for the costly exp loop)
WARM_MIN_LABELS = 64
WARM_MAX_LABELS = 2048
# A block whose warm sweep had to redo more than this share of its rows (its memory held
# other rows than last time: a loader reusing buffers) is swept cold for the rest of the
# solve: a redone row costs about twice a cold one.
WARM_GIVE_UP = 0.125
# float32 terms below 2^-125 flush to 0, so a warm shift up to WARM_SLACK above a row's
# maximum loses terms between 2^-125 and 2^-95 of it that the cold sweep keeps; they
# matter only to a column whose whole mass is that small, which is then swept again cold.
WARM_TINY_MASS = 2.0**-90
_MANTISSA_BITS = np.int32(23)
# 2^r on [-1/2, 1/2]: the degree-6 polynomial interpolating it at the Chebyshev nodes
# (relative error 2.5e-9 = 0.04 float32 ulp; the middle node is r = 0, so p(0) = 1).
_EXP2_POLY = tuple(
    _F32(c)
    for c in np.polynomial.Chebyshev.interpolate(np.exp2, 6, domain=[-0.5, 0.5])
    .convert(kind=np.polynomial.Polynomial)
    .coef
)


@intrinsic
def _f32_bits(typingctx, value):
    """The bits of a float32 as an int32 (an LLVM bitcast: free, and vectorisable)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret the bits of an int32 as a float32 (an LLVM bitcast)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _round_even(typingctx, value):
    """value rounded to the nearest integer (ties to even), as LLVM's roundeven."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.roundeven", [ty], ir.FunctionType(ty, [ty]))
        return builder.call(fn, args)

    return types.float32(types.float32), codegen


def _minmax_intrinsic(llvm_name: str):
    """An intrinsic (a, b) -> LLVM's ``llvm_name`` of two floats, with no-NaN flags."""

    def typer(typingctx, a, b):
        if not (isinstance(a, types.Float) and a == b):
            return None

        def codegen(context, builder, signature, args):
            ty = args[0].type
            fnty = ir.FunctionType(ty, [ty, ty])
            fn = builder.module.declare_intrinsic(llvm_name, [ty], fnty)
            return builder.call(fn, args, fastmath=("nnan", "nsz"))

        return a(a, b), codegen

    typer.__name__ = typer.__qualname__ = "_" + llvm_name.replace(".", "_")
    return intrinsic(typer)


# max / min as LLVM's maxnum / minnum with no-NaN flags, so that loops reducing with them
# vectorise (Numba's builtin max lowers to compare-and-select, which LLVM does not turn into
# a vector reduction here). Their operands are never NaN where the kernels use them.
_fmax = _minmax_intrinsic("llvm.maxnum")
_fmin = _minmax_intrinsic("llvm.minnum")


_PARALLEL_LOCK = threading.Lock()
# Set in a child process forked after GNU OpenMP (Numba's "omp" layer with libgomp) had
# started in the parent: any parallel kernel there would abort the child ("fork() called
# from a process already using GNU OpenMP"). Such a child gets this message instead.
_FORK_BLOCKED: str | None = None


def _after_fork_in_child() -> None:
    global _FORK_BLOCKED
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel code ran in the parent: the child picks its own layer
        return
    if layer == "omp":
        from numba.np.ufunc import omppool

        if omppool.openmp_vendor == "GNU":
            _FORK_BLOCKED = (
                "Numba's threading layer in this process is GNU OpenMP, started before the "
                "process was forked, and GNU OpenMP cannot run in a forked child; start "
                "workers with multiprocessing's 'spawn' or 'forkserver' method, or set "
                "NUMBA_THREADING_LAYER=workqueue (or install TBB) before the first solve"
            )


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def _parallel_section() -> Iterator[None]:
    """Around every parallel kernel call: refused in a child forked from a GNU OpenMP
    process (see ``_FORK_BLOCKED``); exclusive under Numba's workqueue threading layer
    (used where neither TBB nor OpenMP is available), which aborts the process when two
    threads run parallel code at once; other layers take concurrent calls as they are."""
    if _FORK_BLOCKED is not None:
        raise RuntimeError(f"backend: 'numba' cannot run here: {_FORK_BLOCKED}")
    try:
        exclusive = numba.threading_layer() == "workqueue"
    except ValueError:  # no parallel kernel has run yet: the layer is not chosen
        exclusive = True
    if not exclusive:
        yield
        return
    with _PARALLEL_LOCK:
        yield


def _unit(dtype: np.dtype) -> float:
    """Kernel units per natural-log unit: log2(e) for float32 (base 2), 1 for float64."""
    return LOG2E if dtype == np.float32 else 1.0


def _exp_units(w):
    """exp of a non-positive number w given in kernel units (2^w in float32, e^w in float64)."""
    return math.exp(w)


@overload(_exp_units, jit_options={"fastmath": _FAST})
def _exp_units_impl(w):
    if w != types.float32:
        return lambda w: math.exp(w)

    c0, c1, c2, c3, c4, c5, c6 = _EXP2_POLY

    def exp2_f32(w):
        # No clamp of w before the reduction: lanes with w < EXP2_FLOOR (-inf included)
        # compute garbage (poison in LLVM's terms) that the final select discards.
        n = _round_even(w)
        r = w - n  # exact, in [-1/2, 1/2]
        p = c6
        p = p * r + c5
        p = p * r + c4
        p = p * r + c3
        p = p * r + c2
        p = p * r + c1
        p = p * r + c0
        # p * 2^n by adding n to p's exponent field (p in [0.7, 1.5]; where kept, n >= -125)
        bits = np.int32(_f32_bits(p) + (np.int32(n) << _MANTISSA_BITS))
        # below the floor: the bits of +0.0 (one masked move on AVX-512)
        return _f32_from_bits(bits if w >= EXP2_FLOOR else np.int32(0))

    return exp2_f32


def _load_rows(x, start, stop, buf):
    """Rows start:stop of x, C-contiguous in the compute precision (a view where possible)."""
    return x[start:stop]


@overload(_load_rows)
def _load_rows_impl(x, start, stop, buf):
    if x.layout == "C" and x.dtype == buf.dtype:
        return lambda x, start, stop, buf: x[start:stop]

    def copy_rows(x, start, stop, buf):
        n_rows = stop - start
        n_labels = x.shape[1]
        out = buf[:n_rows]
        if x.strides[0] <= x.strides[1]:  # column-major-like: walk down the columns
            for j in range(n_labels):
                for i in range(n_rows):
                    out[i, j] = x[start + i, j]
        else:
            for i in range(n_rows):
                for j in range(n_labels):
                    out[i, j] = x[start + i, j]
        return out

    return copy_rows


def _scale_row_py(row, probs, lam, g, z):
    """z = lam * L + g for one row (L = log(row) for probabilities); returns max_j z_j."""
    m = z.dtype.type(-np.inf)
    if probs:
        for j in range(row.shape[0]):
            zj = lam * np.log(row[j]) + g[j]
            z[j] = zj
            m = _fmax(m, zj)
    else:
        for j in range(row.shape[0]):
            zj = lam * row[j] + g[j]
            z[j] = zj
            m = _fmax(m, zj)
    return m


# One body, compiled twice: with the sweep's fast-math flags, and with the NumPy backend's
# roundings (no FMA) for the passes whose results must match it bit for bit.
_scale_row = njit(fastmath=_FAST)(_scale_row_py)
_scale_row_exact = njit(fastmath=_EXACT_Z)(_scale_row_py)


@njit(fastmath=_NO_REASSOC)
def _affine(lam, x, g):
    """z = lam * x + g for scores, rounded the same way wherever the sweep forms it (one
    FMA; a function of its own, without "reassoc", so that LLVM cannot fold the row
    maximum's subtraction into it: then z_j - max_k z_k is exactly <= 0, which the exp
    needs once ulp(z) exceeds 1, at |z| > 2^24)."""
    return lam * x + g


@njit(fastmath=False)
def _log_softmax_at(picked, m, s):
    """log P = (x - m) - log s in float64, in that order (no fast-math, so "reassoc" in the
    caller cannot regroup it as x - (m + log s), which loses log s next to a large m)."""
    return (picked - m) - math.log(s)


@njit
def _chunk_bounds(c, n_chunks, n_rows):
    """Rows [start, stop) of chunk c out of n_chunks."""
    return c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks


@njit(fastmath=_FAST, inline="always")
def _row_max(row, probs, lam, g, z):
    """max_j z_j for one row, z = lam * L + g. For probabilities z is stored (by
    ``_scale_row``: its logarithm is costly); for scores it is not, and ``_exp_fold_row``
    recomputes it with the same expression and flags, so the maximum is attained."""
    if probs:
        return _scale_row(row, probs, lam, g, z)
    m = z.dtype.type(-np.inf)
    for j in range(row.shape[0]):
        m = _fmax(m, _affine(lam, row[j], g[j]))
    return m


@njit(fastmath=_FAST, inline="always")
def _exp_fold_row(row, probs, lam, g, z, m, e, acc, weight):
    """One pass over a row: acc += weight * e (the column-sum update of the previous row,
    whose exponentials e still hold) and then e = exp(z - m) for this row, in kernel
    units. Returns this row's sum_j e_j and max_j (z_j - m) (which callers that passed
    the exact maximum ignore, and the compiler then drops)."""
    s = e.dtype.type(0.0)
    w_max = e.dtype.type(-np.inf)
    if probs:
        for j in range(row.shape[0]):
            acc[j] += e[j] * weight
            w = z[j] - m
            w_max = _fmax(w_max, w)
            ej = _exp_units(w)
            e[j] = ej
            s += ej
    else:
        for j in range(row.shape[0]):
            acc[j] += e[j] * weight
            w = _affine(lam, row[j], g[j]) - m
            w_max = _fmax(w_max, w)
            ej = _exp_units(w)
            e[j] = ej
            s += ej
    return s, w_max


@njit(**_OPTS, fastmath=_FAST)
def _sweep_kernel(x, probs, lam, g, n_chunks, colsum_parts, row_max, track, warm, delta, redone):
    """Per-chunk float64 column sums of Q for one sweep, and each row's maximum of z.

    Cold (``warm`` False): two passes over each row while it is in cache, the row maximum
    m, then exp and the row sum with the previous row's column-sum update folded in (the
    accumulator is loaded and stored once per row, and the maximum loop stays light).
    Warm: the maximum pass is skipped. The row is shifted by c = m_prev + delta, where
    m_prev is its maximum in the previous sweep (``row_max`` on entry) and delta the
    largest increase of any g_j since then, so max_j z_j <= c; the exp pass also returns
    max_j (z_j - c), which gives this sweep's maximum for free and checks the shift: a row
    where it is above WARM_SLACK_UP (the shift did not bound the row: not expected, but
    then nothing is assumed) or below -WARM_SLACK (too loose a shift) is redone cold.
    Either way Q = e / sum e is the same up to rounding. With ``track`` the row's maximum
    is written to ``row_max`` (N long; otherwise it may be a 1-element dummy), and each
    chunk counts its warm rows that were redone cold in ``redone[c]``. Scores only
    (probabilities keep the cold path: their logarithm pass is the costly one). The
    column maximum of v is not computed here (see ``_colmax_kernel``).
    """
    n_rows, n_labels = x.shape
    zero, one, none = g.dtype.type(0.0), g.dtype.type(1.0), g.dtype.type(-np.inf)
    slack, slack_up = g.dtype.type(-WARM_SLACK), g.dtype.type(WARM_SLACK_UP)
    for c in prange(n_chunks):
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        buf = np.empty((SUB_ROWS, n_labels), dtype=g.dtype)
        z = np.empty(n_labels, dtype=g.dtype)
        e = np.zeros(n_labels, dtype=g.dtype)  # exp of the row awaiting its column update
        acc = np.empty(n_labels, dtype=g.dtype)
        total = colsum_parts[c]
        misses = 0
        for b0 in range(r0, r1, SUB_ROWS):
            b1 = min(b0 + SUB_ROWS, r1)
            rows = _load_rows(x, b0, b1, buf)
            acc[:] = zero
            weight = zero  # 1 / rowsum of the row held in e (0: nothing pending)
            for i in range(b1 - b0):
                shift = row_max[b0 + i] + delta if warm else none  # (one dtype)
                if shift > -np.inf:
                    s, w_max = _exp_fold_row(rows[i], probs, lam, g, z, shift, e, acc, weight)
                    if slack <= w_max <= slack_up:
                        row_max[b0 + i] = shift + w_max
                        weight = one / s
                        continue
                    e[:] = zero  # redo this row cold (the previous row is already folded)
                    weight = zero
                    misses += 1
                m = _row_max(rows[i], probs, lam, g, z)
                if track:
                    row_max[b0 + i] = m
                if m == -np.inf:  # no label reachable from this row: it carries no mass
                    continue  # (the pending row in e stays pending)
                s, _ = _exp_fold_row(rows[i], probs, lam, g, z, m, e, acc, weight)
                weight = one / s
            for j in range(n_labels):
                total[j] += acc[j] + e[j] * weight
        redone[c] = misses


@njit(**_OPTS, fastmath=_FAST)
def _colmax_kernel(x, probs, lam, g, n_chunks, colmax_parts):
    """Per-chunk column maxima of v = z - max_k z_k (the underflow guard; run only when a
    column sum of the sweep is exactly zero)."""
    n_rows, n_labels = x.shape
    for c in prange(n_chunks):
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        buf = np.empty((SUB_ROWS, n_labels), dtype=g.dtype)
        z = np.empty(n_labels, dtype=g.dtype)
        cmax = colmax_parts[c]
        cmax[:] = -np.inf
        for b0 in range(r0, r1, SUB_ROWS):
            b1 = min(b0 + SUB_ROWS, r1)
            rows = _load_rows(x, b0, b1, buf)
            for i in range(b1 - b0):
                m = _scale_row(rows[i], probs, lam, g, z)
                if m == -np.inf:
                    continue
                for j in range(n_labels):
                    cmax[j] = _fmax(cmax[j], z[j] - m)


@njit(**_OPTS, fastmath=_FAST)
def _column_lse_kernel(x, probs, lam, g, n_chunks, top_parts, sum_parts):
    """Per chunk c, over its rows: top_parts[c, j] = max_i z_ij and sum_parts[c, j] =
    sum_i exp(z_ij - top_parts[c, j]) (float64), z = lam * L + g in kernel units: the
    raw column log-sum-exp of ``column_logsumexp`` (g = 0), two passes over the chunk."""
    n_rows, n_labels = x.shape
    for c in prange(n_chunks):
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        buf = np.empty((SUB_ROWS, n_labels), dtype=g.dtype)
        z = np.empty(n_labels, dtype=g.dtype)
        top = top_parts[c]
        top[:] = -np.inf
        for b0 in range(r0, r1, SUB_ROWS):
            rows = _load_rows(x, b0, min(b0 + SUB_ROWS, r1), buf)
            for i in range(rows.shape[0]):
                _scale_row(rows[i], probs, lam, g, z)
                for j in range(n_labels):
                    top[j] = _fmax(top[j], z[j])
        shift = np.empty(n_labels, dtype=g.dtype)  # 0 for a column that is -inf throughout
        for j in range(n_labels):
            shift[j] = top[j] if top[j] > -np.inf else g.dtype.type(0.0)
        total = sum_parts[c]
        for b0 in range(r0, r1, SUB_ROWS):
            rows = _load_rows(x, b0, min(b0 + SUB_ROWS, r1), buf)
            for i in range(rows.shape[0]):
                _scale_row(rows[i], probs, lam, g, z)
                for j in range(n_labels):
                    total[j] += _exp_units(z[j] - shift[j])


@njit(**_OPTS, fastmath=_FAST)
def _codes_kernel(x, probs, lam, g, n_chunks, out):
    """out = Q for every row of x (rows sum to 1), in the compute precision."""
    n_rows, n_labels = x.shape
    zero, one = g.dtype.type(0.0), g.dtype.type(1.0)
    for c in prange(n_chunks):
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        buf = np.empty((SUB_ROWS, n_labels), dtype=g.dtype)
        for b0 in range(r0, r1, SUB_ROWS):
            b1 = min(b0 + SUB_ROWS, r1)
            rows = _load_rows(x, b0, b1, buf)
            for i in range(b1 - b0):
                q = out[b0 + i]
                m = _scale_row(rows[i], probs, lam, g, q)
                if m == -np.inf:
                    q[:] = np.nan
                    continue
                s = zero
                for j in range(n_labels):
                    e = _exp_units(q[j] - m)
                    q[j] = e
                    s += e
                inv = one / s
                for j in range(n_labels):
                    q[j] *= inv


@njit(**_OPTS, fastmath=_EXACT_Z)
def _labels_kernel(x, probs, lam, g, n_chunks, out):
    """out_i = argmax_j z_ij, the first index among ties."""
    n_rows, n_labels = x.shape
    for c in prange(n_chunks):
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        buf = np.empty((SUB_ROWS, n_labels), dtype=g.dtype)
        z = np.empty(n_labels, dtype=g.dtype)
        for b0 in range(r0, r1, SUB_ROWS):
            b1 = min(b0 + SUB_ROWS, r1)
            rows = _load_rows(x, b0, b1, buf)
            for i in range(b1 - b0):
                top = _scale_row_exact(rows[i], probs, lam, g, z)
                best = 0  # the first index attaining the maximum (maxnum returns an operand)
                while z[best] != top:
                    best += 1
                out[b0 + i] = best


@njit(**_OPTS, fastmath=_EXACT_Z)
def _top_kernel(x, probs, lam, g, n_chunks, indices, values):
    """The k = indices.shape[1] largest z_ij per row, best first, lower index on ties."""
    n_rows, n_labels = x.shape
    k = indices.shape[1]
    for c in prange(n_chunks):
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        buf = np.empty((SUB_ROWS, n_labels), dtype=g.dtype)
        z = np.empty(n_labels, dtype=g.dtype)
        for b0 in range(r0, r1, SUB_ROWS):
            b1 = min(b0 + SUB_ROWS, r1)
            rows = _load_rows(x, b0, b1, buf)
            for i in range(b1 - b0):
                _scale_row_exact(rows[i], probs, lam, g, z)
                idx = indices[b0 + i]
                val = values[b0 + i]
                if k * k > 8 * n_labels:  # many candidates: one stable sort of the row
                    order = np.argsort(-z, kind="mergesort")
                    for t in range(k):
                        idx[t] = order[t]
                        val[t] = z[order[t]]
                    continue
                filled = 0  # insertion into the sorted top list; strict > keeps ties stable
                for j in range(n_labels):
                    zj = z[j]
                    if filled == k and not zj > val[k - 1]:
                        continue
                    t = filled if filled < k else k - 1
                    while t > 0 and zj > val[t - 1]:
                        val[t] = val[t - 1]
                        idx[t] = idx[t - 1]
                        t -= 1
                    val[t] = zj
                    idx[t] = j
                    if filled < k:
                        filled += 1


@njit(**_OPTS, fastmath=_FAST)
def _logprob_kernel(x, kind_code, unit, labels, n_chunks, parts):
    """parts[c] = sum over chunk c of log P_i,labels_i (kind_code 0 logits, 1 logprobs,
    2 probs). For logits the row's log-sum-exp is subtracted: log P_il = x_il - m_i -
    log sum_j exp(x_ij - m_i), the sum taken in the compute precision (``unit`` holds the
    kernel unit in it) and everything else in float64."""
    n_rows, n_labels = x.shape
    for c in prange(n_chunks):
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        buf = np.empty((SUB_ROWS, n_labels), dtype=unit.dtype)
        total = 0.0
        for b0 in range(r0, r1, SUB_ROWS):
            b1 = min(b0 + SUB_ROWS, r1)
            if kind_code != 0:
                for i in range(b0, b1):
                    picked = np.float64(x[i, labels[i]])
                    if kind_code == 1:
                        total += picked
                    else:
                        total += np.log(picked) if picked > 0.0 else -np.inf
                continue
            rows = _load_rows(x, b0, b1, buf)
            for i in range(b1 - b0):
                row = rows[i]
                m = row[0]
                for j in range(1, n_labels):
                    m = _fmax(m, row[j])
                s = unit[0] * 0
                for j in range(n_labels):
                    s += _exp_units((row[j] - m) * unit[0])
                picked = np.float64(row[labels[b0 + i]])
                total += _log_softmax_at(picked, np.float64(m), np.float64(s))
        parts[c] = total


@njit(**_OPTS, fastmath=_CHECK)
def _check_kernel(x, probs, n_chunks, finite, minima, maxima, row_best, deviation, support):
    """Per chunk: no NaN or +inf, the minimum, the maximum, the lowest row maximum, and
    for probabilities max_i |sum_j x_ij - 1| and the number of positive entries of each
    column (``support``, (C, K); unused otherwise).

    NaN and +inf: the sum of x_ij * 0 over the entries other than -inf is 0 when there
    are none and NaN otherwise (no "nnan"/"ninf" fast-math here, so the product is kept;
    -inf, an impossible label, is left out); the extremes are only read when it is 0.
    """
    n_rows, n_labels = x.shape
    for c in prange(n_chunks):
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        buf = np.empty((SUB_ROWS, n_labels), dtype=x.dtype)
        poison = 0.0
        low, high, lowest_best = np.inf, -np.inf, np.inf
        dev = 0.0
        for b0 in range(r0, r1, SUB_ROWS):
            b1 = min(b0 + SUB_ROWS, r1)
            rows = _load_rows(x, b0, b1, buf)
            for i in range(b1 - b0):
                row = rows[i]
                s = 0.0
                best = -np.inf
                for j in range(n_labels):
                    value = np.float64(row[j])
                    s += value
                    poison += (0.0 if value == -np.inf else value) * 0.0
                    low = _fmin(low, value)
                    best = _fmax(best, value)
                high = _fmax(high, best)
                lowest_best = _fmin(lowest_best, best)
                if probs:
                    dev = max(dev, abs(s - 1.0))
                    for j in range(n_labels):
                        support[c, j] += row[j] > 0
        finite[c] = math.isfinite(poison)
        minima[c] = low
        maxima[c] = high
        row_best[c] = lowest_best
        deviation[c] = dev


def _n_chunks(n_rows: int, n_labels: int) -> int:
    """Parallel chunks for a block: a function of its shape only (never of the threads)."""
    by_rows = max(1, n_rows // MIN_CHUNK_ROWS)
    by_memory = max(1, PARTIALS_BYTES // (16 * max(n_labels, 1)))
    return int(min(by_rows, MAX_CHUNKS, by_memory))


@dataclass(frozen=True)
class ConvertedRows:
    """Scores that NumPy cannot view (the torch backend's CPU bfloat16 tensors), handed to
    the kernels part by part: ``rows(start, stop)`` returns rows start:stop as an array of
    ``dtype`` (float32 or float64), which may be overwritten by the next call. The kernels
    ask for ``CONVERT_ELEMENTS`` at a time, as they convert float16 arrays, and finish
    with a part before asking for the next, so no N x K copy exists; parts are swept cold
    (no warm row maxima)."""

    shape: tuple[int, int]
    dtype: np.dtype
    rows: Callable[[int, int], np.ndarray]


def _kernel_blocks(x: np.ndarray | ConvertedRows) -> Iterator[np.ndarray]:
    """x itself when the kernels read its dtype (float32/float64, any strides); otherwise
    (float16, integers, bool, ``ConvertedRows``) consecutive row blocks converted to the
    compute precision."""
    if isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64):
        yield x
        return
    dtype = compute_dtype(x.dtype)
    step = max(1, CONVERT_ELEMENTS // max(x.shape[1], 1))
    for start in range(0, x.shape[0], step):
        stop = min(start + step, x.shape[0])
        rows = x.rows(start, stop) if isinstance(x, ConvertedRows) else x[start:stop]
        part = np.asarray(rows, dtype=dtype)
        part.flags.writeable = False
        yield part


def _as_array(block: Any) -> np.ndarray | ConvertedRows:
    """A read-only plain ndarray view of the block (memmaps included), checked to be 2-D;
    ``ConvertedRows`` as they are.

    Read-only for every input, so that writable and read-only arrays share one compiled
    specialisation of each kernel (the kernels never write to the scores).
    """
    if isinstance(block, ConvertedRows):
        return block
    x = np.asarray(block).view(np.ndarray)
    if x.ndim != 2:
        raise ValueError(f"block: expected a 2-D (n, K) array, got shape {x.shape}")
    x.flags.writeable = False
    return x


def _scaled_params(
    lam: float, g: np.ndarray, dtype: np.dtype, unit: float
) -> tuple[np.floating, np.ndarray]:
    """lam and g in the compute precision, multiplied by ``unit`` (see ``_unit``)."""
    return dtype.type(lam * unit), np.ascontiguousarray(np.asarray(g) * unit, dtype=dtype)


class NumbaBackend(NumpyBackend):
    """NumPy arrays and memmaps, swept by parallel Numba kernels (see the module docs).

    Shares the NumPy backend's array handling (accepts, shape_dtype, head, concat,
    stack) and replaces every pass over the scores with a compiled kernel.
    """

    name = "numba"

    def check(self, block: np.ndarray, kind: ScoreKind) -> BlockCheck:
        x = _as_array(block)
        probs = kind == "probs"
        valid, min_value, max_value, deviation = True, np.inf, -np.inf, 0.0
        min_row_max = np.inf
        support = np.zeros(x.shape[1], dtype=np.int64) if probs else None
        for part in _kernel_blocks(x):
            n_chunks = _n_chunks(*part.shape)
            finite = np.empty(n_chunks, dtype=np.bool_)
            minima, maxima, row_best = (np.empty(n_chunks) for _ in range(3))
            dev = np.empty(n_chunks)
            counts = np.zeros((n_chunks, x.shape[1] if probs else 0), dtype=np.int64)
            with _parallel_section():
                _check_kernel(part, probs, n_chunks, finite, minima, maxima, row_best, dev, counts)
            valid = valid and bool(finite.all())
            min_value = min(min_value, float(minima.min()))
            max_value = max(max_value, float(maxima.max()))
            min_row_max = min(min_row_max, float(row_best.min()))
            deviation = max(deviation, float(dev.max()))
            if support is not None:
                support += counts.sum(axis=0)
        if not probs and valid and min_value == -np.inf:  # masked labels: a second pass
            support = sum(possible_rows(part) for part in _kernel_blocks(x))
        return BlockCheck(valid, min_value, deviation, max_value, support, min_row_max=min_row_max)

    # class defaults, so that subclasses overriding __init__ keep them (a solve's copy
    # gets its own dict in for_solve; the class-level one is never written)
    _per_solve = False
    _warm: dict = {}  # noqa: RUF012
    warm_rows = (0, 0)  # a solve's last block: (rows swept warm, of those redone cold)

    def __init__(self) -> None:
        # a solve's row maxima by block: (data address, shape, strides, dtype) -> (lam, g,
        # row_max) of the block's last sweep in kernel units, or None once it gave up
        self._warm: dict[tuple, tuple[Any, np.ndarray, np.ndarray] | None] = {}

    def unavailable_reason(self) -> str | None:
        return _FORK_BLOCKED

    def for_solve(self) -> NumbaBackend:
        """A copy whose sweeps skip the row-maximum pass from a block's second sweep on
        (``_sweep_kernel``'s warm path), keeping each block's row maxima (one number per
        row) for the length of the solve."""
        solve = copy.copy(self)
        solve._per_solve, solve._warm = True, {}
        return solve

    def _warm_plan(
        self, part: np.ndarray, whole: bool, probs: bool, lam_c: Any, g_c: np.ndarray
    ) -> tuple[tuple | None, np.ndarray | None, Any]:
        """(cache key or None, previous row maxima or None, delta) for one kernel block.

        Warm (row maxima returned) when this solve swept the same block at the same lam
        before and no row's shift can overshoot its maximum by more than WARM_SLACK:
        with steps d_j = g_j - g_j(then), c_i - m_i <= max_j d_j - min_j d_j.
        """
        n_labels = part.shape[1]
        usable = WARM_MIN_LABELS <= n_labels <= WARM_MAX_LABELS and not probs
        if not (self._per_solve and whole and usable):  # (converted blocks are new arrays)
            return None, None, 0.0
        key = (part.__array_interface__["data"][0], part.shape, part.strides, part.dtype.str)
        if key in self._warm and self._warm[key] is None:  # this block gave up: cold
            return None, None, 0.0
        if key not in self._warm and len(self._warm) >= MAX_WARM_BLOCKS:
            return None, None, 0.0
        previous = self._warm.get(key)
        if previous is None or previous[0] != lam_c:  # first sweep of this block or stage
            return key, None, 0.0
        g_then = previous[1]
        moving = np.isfinite(g_then) & np.isfinite(g_c)
        if not np.array_equal(moving, np.isfinite(g_c)):  # a label came back from -inf
            return key, None, 0.0
        steps = g_c[moving].astype(np.float64) - g_then[moving]
        if steps.size == 0 or steps.max() - steps.min() > WARM_SLACK - 1.0:
            return key, None, 0.0
        return key, previous[2], max(float(steps.max()), 0.0)

    def _sweep_part(
        self, part: np.ndarray, whole: bool, probs: bool, lam_c: Any, g_c: np.ndarray
    ) -> np.ndarray:
        """Per-chunk column sums of one kernel block (warm where ``_warm_plan`` allows)."""
        n_rows, n_labels = part.shape
        n_chunks = _n_chunks(n_rows, n_labels)
        sums = np.zeros((n_chunks, n_labels))
        redone = np.zeros(n_chunks, dtype=np.int64)
        key, row_max, delta = self._warm_plan(part, whole, probs, lam_c, g_c)
        warm = row_max is not None
        if key is not None and not warm:
            row_max = np.full(n_rows, -np.inf, dtype=g_c.dtype)
        elif key is None:
            row_max = np.empty(1, dtype=g_c.dtype)  # not kept: nothing to write
        kernel_args = (part, probs, lam_c, g_c, n_chunks, sums, row_max, key is not None)
        with _parallel_section():
            _sweep_kernel(*kernel_args, warm, g_c.dtype.type(delta), redone)
        part_sum = sums.sum(axis=0)
        if warm and g_c.dtype == np.float32:
            tiny = (part_sum < n_rows * WARM_TINY_MASS) & (g_c > -np.inf)
            if tiny.any():  # terms a warm shift may have flushed: this sweep again, cold
                sums[:] = 0.0
                with _parallel_section():
                    _sweep_kernel(*kernel_args, False, g_c.dtype.type(0.0), redone)
                part_sum = sums.sum(axis=0)
        if key is not None:
            gave_up = warm and redone.sum() > WARM_GIVE_UP * n_rows
            self._warm[key] = None if gave_up else (lam_c, g_c.copy(), row_max)
        if self._per_solve:  # (rows swept warm, of those redone cold) in this block
            self.warm_rows = (int(warm) * n_rows, int(redone.sum()))
        return part_sum

    def sweep(self, block: np.ndarray, kind: ScoreKind, lam: float, g: np.ndarray) -> ColumnStats:
        x = _as_array(block)
        n_labels = x.shape[1]
        dtype = compute_dtype(x.dtype)
        unit = _unit(dtype)
        lam_c, g_c = _scaled_params(lam, g, dtype, unit)
        probs = kind == "probs"
        colsum = np.zeros(n_labels)
        colmax = np.full(n_labels, -np.inf)  # exact where colsum_j == 0, see ColumnStats
        for part in _kernel_blocks(x):
            part_sum = self._sweep_part(part, part is x, probs, lam_c, g_c)
            colsum += part_sum
            if needs_exact_colmax(part_sum, g_c):  # underflowed: one more read
                n_chunks = _n_chunks(*part.shape)
                maxima = np.empty((n_chunks, n_labels), dtype=dtype)
                with _parallel_section():
                    _colmax_kernel(part, probs, lam_c, g_c, n_chunks, maxima)
                np.maximum(colmax, maxima.max(axis=0), out=colmax)
        return ColumnStats(colsum, colmax / unit)

    def _rowwise(self, kernel, block: np.ndarray, kind: ScoreKind, lam: float, g, *outs):
        """Run a row-wise kernel over ``block`` (converted part by part) into ``outs``.

        The codes kernel works in kernel units (it exponentiates); labels and top_labels
        in natural units, with the NumPy backend's roundings.
        """
        x = _as_array(block)
        dtype = compute_dtype(x.dtype)
        unit = _unit(dtype) if kernel is _codes_kernel else 1.0
        lam_c, g_c = _scaled_params(lam, g, dtype, unit)
        start = 0
        for part in _kernel_blocks(x):
            stop = start + part.shape[0]
            views = [out[start:stop] for out in outs]
            with _parallel_section():
                kernel(part, kind == "probs", lam_c, g_c, _n_chunks(*part.shape), *views)
            start = stop

    def labels(self, block: np.ndarray, kind: ScoreKind, lam: float, g: np.ndarray) -> np.ndarray:
        out = np.empty(block.shape[0], dtype=np.int64)
        self._rowwise(_labels_kernel, block, kind, lam, g, out)
        return out

    def codes(self, block: np.ndarray, kind: ScoreKind, lam: float, g: np.ndarray) -> np.ndarray:
        out = np.empty(block.shape, dtype=compute_dtype(block.dtype))
        self._rowwise(_codes_kernel, block, kind, lam, g, out)
        return out

    def column_logsumexp(self, block: np.ndarray, kind: ScoreKind, lam: float) -> np.ndarray:
        x = _as_array(block)
        n_labels = x.shape[1]
        dtype = compute_dtype(x.dtype)
        unit = _unit(dtype)
        lam_c, g_c = _scaled_params(lam, np.zeros(n_labels), dtype, unit)
        total = np.full(n_labels, -np.inf)
        for part in _kernel_blocks(x):
            n_chunks = _n_chunks(*part.shape)
            top = np.empty((n_chunks, n_labels), dtype=dtype)
            sums = np.zeros((n_chunks, n_labels))
            with _parallel_section():
                _column_lse_kernel(part, kind == "probs", lam_c, g_c, n_chunks, top, sums)
            with np.errstate(divide="ignore", invalid="ignore"):  # (-inf columns: log 0)
                lse = np.where(top > -np.inf, top / unit, 0.0) + np.log(sums)
            total = np.logaddexp.reduce(np.vstack([total, lse]), axis=0)
        return total

    def top_labels(
        self, block: np.ndarray, kind: ScoreKind, lam: float, g: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        n_rows, n_labels = block.shape
        k = min(k, n_labels)
        indices = np.empty((n_rows, k), dtype=np.int64)
        values = np.empty((n_rows, k), dtype=compute_dtype(block.dtype))
        self._rowwise(_top_kernel, block, kind, lam, g, indices, values)
        return indices, values

    def logprob_sum(self, block: np.ndarray, kind: ScoreKind, labels: np.ndarray) -> float:
        x = _as_array(block)
        picks = np.ascontiguousarray(labels, dtype=np.int64)
        if picks.size:
            check_label_range(int(picks.min()), int(picks.max()), x.shape[1])
        kind_code = {"logits": 0, "logprobs": 1, "probs": 2}[kind]
        total, start = 0.0, 0
        for part in _kernel_blocks(x):
            stop = start + part.shape[0]
            n_chunks = _n_chunks(*part.shape)
            parts = np.empty(n_chunks)
            dtype = compute_dtype(part.dtype)
            unit = np.array([_unit(dtype)], dtype=dtype)
            with _parallel_section():
                _logprob_kernel(part, kind_code, unit, picks[start:stop], n_chunks, parts)
            total += float(parts.sum())
            start = stop
        return total

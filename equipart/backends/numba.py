"""The Numba backend: the fused sweep as compiled kernels, one read per sweep.

Same contract and notation as ``equipart.backends.base`` (z = lam * L + g, v = z - rowmax,
Q = exp(v) / rowsum exp(v)); this module makes the sweep run near the speed of one read of
the scores.

Parallelism and determinism
    The rows of a block are split into ``n_chunks`` contiguous chunks, a number that depends
    only on the block's shape (never on the thread count). The kernels are compiled
    serial and claim chunks one at a time from an atomic counter (``_run``): on the
    calling thread alone for small blocks, with helper threads of this module's own
    (``_Team``: no OpenMP or TBB runtime, so forked children run the kernels too) for
    larger ones, scheduled dynamically so that a helper on a busy core takes fewer chunks
    instead of holding up the call. Each chunk accumulates its own float64 column
    partials, and the partials are merged in chunk order. The result is therefore
    bit-identical for any ``NUMBA_NUM_THREADS`` / ``numba.set_num_threads`` and any
    schedule. The kernels call no BLAS.

Memory
    Per thread and call: a few K-vectors and, for inputs that are not C-contiguous, a
    buffer of ``SUB_ROWS`` rows (the row block is copied there, in the compute precision,
    in the order of the input's strides). Column partials: ``n_chunks x K`` float64,
    capped at ``PARTIALS_BYTES``. A solve's backend (``for_solve``) also keeps one number
    per row of each block for its warm sweeps (``_sweep_kernel``). Nothing of size N x K
    is ever allocated by a sweep.

Precision
    float32 inputs compute in float32 (float16 and bfloat16 too, widened as they are read),
    everything else in float64; column sums accumulate over ``SUB_ROWS`` rows in the
    compute precision and then in float64. ``labels`` and ``top_labels`` form
    z = float(lam) * L + float(g) in the compute precision with separate roundings (no
    FMA), exactly as the NumPy backend does, so they agree with it bit for bit (for
    ``probs`` up to the 1-ulp differences between libm's and NumPy's ``log``).

exp
    Numba has no vectorised ``exp`` on this stack (no SVML-patched LLVM), and the scalar
    libm call costs ~10x a read of the scores. The sweep and codes kernels therefore work
    in base-2 units (lam and g multiplied by log2 e, see ``_unit``) and compute 2^w for
    w <= 0 with ``_exp_units``: n = roundeven(w), r = w - n (exact), 2^r by the
    polynomial interpolating it at the Chebyshev nodes of [-1/2, 1/2] (degree 6 in
    float32, relative error 2.5e-9; degree 11 in float64, 4e-18), and n added to the
    exponent bits. It is exact at 0, within 1 ulp of the correctly rounded value
    elsewhere (tests/test_numba.py), and returns 0 below 2^``EXP2_FLOOR`` (about 2.4e-38;
    2^``EXP2_FLOOR_F64``, 4.5e-308, in float64; libm would return subnormals) and for
    -inf. Such terms only matter in column sums that underflow anyway, and there the
    driver uses ``colmax``, computed exactly (by ``_colmax_kernel``) wherever a column
    sum is zero.
"""

from __future__ import annotations

import decimal
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .base import BlockCheck, ColumnStats, ScoreKind, check_label_range
from .numpy import NumpyBackend, compute_dtype, possible_rows

__all__ = ["BFloat16Bits", "NumbaBackend"]

if numba.config.DISABLE_JIT:  # the kernels' LLVM intrinsics cannot run as Python
    raise ImportError("Numba's JIT is disabled (NUMBA_DISABLE_JIT=1)")

SUB_ROWS = 64  # rows per sub-block: column sums flush to float64 once per sub-block
ROW_PAD = 64  # the sweep's scratch rows are padded to a multiple of this many labels
# From this many labels on, a warm row is shifted and exponentiated in one pass; below,
# in two (see ``_sweep_kernel``): the faster of the two on either side, in side tests
# on the 2-core AMD EPYC (float32 and float64, K = 250 and 1,000)
FUSED_MIN_LABELS = 512
MIN_CHUNK_ROWS = 128  # fewest rows per chunk: float64 partials stay <= 3.2% of float32 rows
MAX_CHUNKS = 256  # most chunks (the merge reads n_chunks x K partials)
PARTIALS_BYTES = 16 << 20  # cap on the float64 partials of one sweep
CONVERT_ELEMENTS = 1 << 20  # block size when integer input is converted
# Blocks of fewer scores run on one thread (see ``_run``): below it, waking a helper costs
# more than it saves (the crossover measured by benchmarks/bench_numba.py)
PARALLEL_MIN_ELEMENTS = 1 << 19
# A kernel call whose caller waited for its helpers' last chunks longer than this share of
# its own working time, beyond the one chunk a helper may rightly still hold (a helper
# descheduled by a busy core), runs the calls of the next HELPER_PAUSE_S seconds on the
# calling thread alone (see ``_run`` and ``_helpers_late``)
HELPER_WAIT_SHARE = 0.25
HELPER_PAUSE_S = 0.25
# ... beyond also a helper's wake-up: its queue's signal and the GIL take up to about 0.1
# ms on the 2-core development VM when idle (a descheduled helper costs a scheduler time
# slice, milliseconds)
HELPER_WAKE_S = 2e-4

# Fast-math for the kernels: reassociation (vectorised reductions) and FMA contraction,
# but no "ninf", because g_j = -inf (zero-target labels) and log(0) (probabilities) are
# legitimate values. ``labels``/``top_labels`` run without "contract" so that z has the
# same roundings as in the NumPy backend.
_FAST = {"nnan", "nsz", "arcp", "reassoc", "contract", "afn"}
_EXACT_Z = {"nnan", "nsz", "arcp", "reassoc", "afn"}
_CHECK = {"nsz", "reassoc", "contract"}  # values may be NaN or inf: no "nnan", "ninf"
_NO_REASSOC = {"nnan", "nsz", "arcp", "contract", "afn"}
_OPTS = {"cache": True, "nogil": True}
_KIND_CODES = {"logits": 0, "logprobs": 1, "probs": 2}  # the kernels' ``kind_code``

_F32 = np.float32
# Both precisions work in base-2 units: z2 = z * log2(e), so that exp(v) = 2^(v log2 e)
# needs no multiply and the range reduction w = n + r (n = round(w)) is exact.
LOG2E = 1.0 / math.log(2.0)
EXP2_FLOOR = _F32(-125.0)  # exp2 returns 0 below: 2^-125 = 2.4e-38, near float32's normal floor
EXP2_FLOOR_F64 = -1021.0  # the same for float64: 2^-1021 = 4.5e-308
# A warm sweep's shift may exceed a row's maximum by up to WARM_SLACK kernel units (log2:
# the largest term is then at least 2^-30) and fall short of it by rounding only; past
# WARM_SLACK_UP the exp would leave its domain, and the row is redone cold.
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
# Terms below 2^EXP2_FLOOR flush to 0, so a warm shift up to WARM_SLACK above a row's
# maximum loses terms between 2^floor and 2^(floor + 30) of it that the cold sweep keeps;
# they matter only to a column whose whole mass is below 2^(floor + 35) per row, which is
# then swept again cold.
WARM_TINY_MASS = {np.dtype(np.float32): 2.0**-90, np.dtype(np.float64): 2.0**-986}


def _exp2_coefficients(degree: int) -> list[Fraction]:
    """Power-basis coefficients, exact rationals, of the polynomial interpolating 2^r at
    (float64 roundings of) the degree + 1 Chebyshev nodes of [-1/2, 1/2], with 2^r taken
    to 40 digits: what is left in them is their final rounding to the kernel's precision
    (a float64 or long double computation leaves errors of several ulp in the
    coefficients above degree 2, enough to take the float64 exp2 past 1 ulp)."""
    n = degree + 1
    with decimal.localcontext() as context:
        context.prec = 40
        ln2 = decimal.Decimal(2).ln()
        nodes = [Fraction(math.cos(math.pi * (k + 0.5) / n) / 2) for k in range(n)]
        values = [
            Fraction((decimal.Decimal(t.numerator) / t.denominator * ln2).exp()) for t in nodes
        ]
    # the Vandermonde system sum_i c_i t^i = 2^t at the nodes, by exact Gaussian elimination
    rows = [[t**i for i in range(n)] + [value] for t, value in zip(nodes, values, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(rows[r][col]))
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(col + 1, n):
            factor = rows[r][col] / rows[col][col]
            rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    coefs = [Fraction(0)] * n
    for r in reversed(range(n)):
        known = sum(rows[r][i] * coefs[i] for i in range(r + 1, n))
        coefs[r] = (rows[r][n] - known) / rows[r][r]
    return coefs


# 2^r on [-1/2, 1/2]. float32: degree 6 (relative error 2.5e-9 = 0.04 float32 ulp);
# float64: degree 11 (relative error 4e-18 = 0.04 float64 ulp). The constant terms round to
# exactly 1, so both are exact at r = 0.
_EXP2_POLY = tuple(_F32(c) for c in _exp2_coefficients(6))
_EXP2_POLY_F64 = tuple(float(c) for c in _exp2_coefficients(11))


def _bitcast_intrinsic(source: types.Type, target: types.Type, llvm_target: ir.Type):
    """An intrinsic reinterpreting the bits of ``source`` as ``target`` (an LLVM bitcast:
    free, and vectorisable)."""

    def typer(typingctx, value):
        if value != source:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], llvm_target)

        return target(source), codegen

    typer.__name__ = typer.__qualname__ = f"_bits_{source}_to_{target}"
    return intrinsic(typer)


_f32_bits = _bitcast_intrinsic(types.float32, types.int32, ir.IntType(32))
_f32_from_bits = _bitcast_intrinsic(types.int32, types.float32, ir.FloatType())
_f64_bits = _bitcast_intrinsic(types.float64, types.int64, ir.IntType(64))
_f64_from_bits = _bitcast_intrinsic(types.int64, types.float64, ir.DoubleType())


@intrinsic
def _round_even(typingctx, value):
    """value rounded to the nearest integer (ties to even), as LLVM's roundeven."""
    if value not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.roundeven", [ty], ir.FunctionType(ty, [ty]))
        return builder.call(fn, args)

    return value(value), codegen



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


@intrinsic
def _fetch_add(typingctx, counters, index):
    """Atomically add 1 to ``counters[index]`` (a C-contiguous 1-D int64 array) and return
    its previous value (an LLVM ``atomicrmw add``, sequentially consistent)."""
    if not (
        isinstance(counters, types.Array)
        and counters.dtype == types.int64
        and counters.ndim == 1
        and isinstance(index, types.Integer)
    ):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        position = context.cast(builder, args[1], signature.args[1], types.intp)
        pointer = builder.gep(array.data, [position])
        one = ir.Constant(ir.IntType(64), 1)
        return builder.atomic_rmw("add", pointer, one, "seq_cst")

    return types.int64(counters, index), codegen


@njit(inline="always")
def _claim(counters):
    """The next unclaimed chunk of a kernel call (``counters[0]`` counts claims)."""
    return _fetch_add(counters, 0)


@njit(inline="always")
def _finish(counters, n_chunks):
    """Count a finished chunk (``counters[1]``); True for the call that finished the last."""
    return _fetch_add(counters, 1) == n_chunks - 1


class _Team:
    """Helper threads for the kernels: each serves kernel calls from one shared queue."""

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._size = 0
        self._lock = threading.Lock()

    def submit(self, task: Callable[[], None], copies: int) -> None:
        """Queue ``copies`` runs of ``task``, starting helper threads up to that many."""
        with self._lock:
            while self._size < copies:
                name = f"equipart-numba-{self._size}"
                threading.Thread(target=self._serve, name=name, daemon=True).start()
                self._size += 1
        for _ in range(copies):
            self._tasks.put(task)

    def _serve(self) -> None:
        while True:
            self._tasks.get()()


_TEAM = _Team()


def _new_team_in_child() -> None:
    """A forked child has none of its parent's threads: it starts its own when needed."""
    global _TEAM
    _TEAM = _Team()


os.register_at_fork(after_in_child=_new_team_in_child)


class _HelperPause:
    """Until when (``time.perf_counter``) kernel calls run without helpers."""

    until = 0.0


def _run(kernel: Callable[..., bool], n_chunks: int, n_elements: int, *args: Any) -> None:
    """``kernel(counters, *args)`` over its ``n_chunks`` chunks, with dynamic scheduling.

    Every kernel claims chunks one at a time (``_claim``) until none is left. Blocks of
    fewer than ``PARALLEL_MIN_ELEMENTS`` scores run on the calling thread alone. Larger
    ones also queue ``numba.get_num_threads() - 1`` helper calls of the same kernel: each
    claims whatever chunks remain when it starts, so a helper that a busy core delays
    takes a smaller share, or none, and the caller waits only for chunks a helper has
    claimed and not yet finished, never for a helper to start. A helper that the OS
    took off its core while it held a chunk can still hold up the caller; a call whose
    caller waited for its helpers longer than ``_helpers_late`` allows sends the kernel
    calls of the next HELPER_PAUSE_S seconds to the calling thread alone.
    """
    counters = np.zeros(2, dtype=np.int64)
    helpers = 0
    if n_elements >= PARALLEL_MIN_ELEMENTS:
        helpers = min(numba.get_num_threads(), n_chunks) - 1
    if helpers <= 0 or time.perf_counter() < _HelperPause.until:
        kernel(counters, *args)
        return
    finished = threading.Event()
    failures: list[BaseException] = []

    def helper() -> None:
        try:
            if kernel(counters, *args):
                finished.set()
        except BaseException as exc:  # surfaced in the calling thread
            failures.append(exc)
            finished.set()

    _TEAM.submit(helper, helpers)
    start = time.perf_counter()
    if not kernel(counters, *args):  # a helper finishes the last chunk: wait for it
        own = time.perf_counter() - start
        finished.wait()
        if _helpers_late(own, time.perf_counter() - start - own, n_chunks, helpers + 1):
            _HelperPause.until = time.perf_counter() + HELPER_PAUSE_S
    if failures:
        raise failures[0]


def _helpers_late(own: float, waited: float, n_chunks: int, threads: int) -> bool:
    """Whether a caller that worked ``own`` seconds and then waited ``waited`` seconds for
    its helpers' last chunks was held up by a helper off its core.

    A helper on its core may claim the last chunk just before the caller runs out of
    chunks, so the caller may rightly wait for up to one chunk, about
    own * threads / n_chunks seconds (the caller's share is n_chunks / threads chunks);
    only a wait longer than that plus HELPER_WAIT_SHARE * own, plus HELPER_WAKE_S for a
    helper's wake-up, counts. (Without the chunk allowance, a block of few chunks, such as
    1,000 x 4,096 scores in 7 chunks of 0.3 ms, could pause the helpers whenever a helper
    took the last chunk; without the wake-up allowance, a call of a few tenths of a
    millisecond, such as a sweep of 10,000 x 100 scores, paused them about once in ten
    calls on an idle machine, so that its solves ran on one thread.)
    """
    return waited > own * (HELPER_WAIT_SHARE + threads / n_chunks) + HELPER_WAKE_S


def _unit(dtype: np.dtype) -> float:
    """Kernel units per natural-log unit: log2(e) (the kernels exponentiate in base 2)."""
    return LOG2E


def _exp_units(w):
    """2^w for a non-positive number w in kernel units (base 2), float32 or float64."""
    return math.exp2(w)


@overload(_exp_units, jit_options={"fastmath": _FAST})
def _exp_units_impl(w):
    if w == types.float32:
        c0, c1, c2, c3, c4, c5, c6 = _EXP2_POLY

        def poly(r):
            return c0 + r * (c1 + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * c6)))))

        floor, bits, from_bits, int_t, mantissa = (
            EXP2_FLOOR, _f32_bits, _f32_from_bits, np.int32, np.int32(23)
        )
    elif w == types.float64:
        d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11 = _EXP2_POLY_F64

        def poly(r):
            p = d11 * r + d10
            p = (((p * r + d9) * r + d8) * r + d7) * r + d6
            return (((((p * r + d5) * r + d4) * r + d3) * r + d2) * r + d1) * r + d0

        floor, bits, from_bits, int_t, mantissa = (
            EXP2_FLOOR_F64, _f64_bits, _f64_from_bits, np.int64, np.int64(52)
        )
    else:
        return None
    poly = njit(fastmath=_FAST, inline="always")(poly)

    def exp2(w):
        # No clamp of w before the reduction: lanes with w below the floor (-inf included)
        # compute garbage (poison in LLVM's terms) that the final select discards.
        n = _round_even(w)
        r = w - n  # exact, in [-1/2, 1/2]
        p = poly(r)  # Horner, one FMA per coefficient
        # p * 2^n by adding n to p's exponent field (p in [0.7, 1.5]; where kept, the
        # biased exponent stays >= 1)
        out = int_t(bits(p) + (int_t(n) << mantissa))
        # below the floor: the bits of +0.0 (one masked move on AVX-512)
        return from_bits(out if w >= floor else int_t(0))

    return exp2


@intrinsic
def _half_to_f32(typingctx, bits):
    """The float16 whose bits are ``bits`` (uint16), widened to float32 (exact: LLVM's
    ``fpext``, which vectorises to vcvtph2ps)."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


def _widen(value):
    """A score as the kernels compute with it: float32 and float64 as they are, the bits of
    a float16 (uint16) or of a bfloat16 (int16, see ``BFloat16Bits``) widened to float32."""
    return value


@overload(_widen, inline="always")
def _widen_impl(value):
    if value == types.uint16:
        return lambda value: _half_to_f32(value)
    if value == types.int16:  # bfloat16: the high half of a float32
        return lambda value: _f32_from_bits(np.int32(np.int32(np.uint16(value)) << 16))
    return lambda value: value


def _row_buffer(x):
    """A scratch block of SUB_ROWS rows of x in the precision the kernels compute it in."""
    return np.empty((SUB_ROWS, x.shape[1]), dtype=x.dtype)


@overload(_row_buffer, inline="always")
def _row_buffer_impl(x):
    if x.dtype in (types.uint16, types.int16):  # 16-bit floats' bits: widened to float32
        return lambda x: np.empty((SUB_ROWS, x.shape[1]), dtype=np.float32)
    return lambda x: np.empty((SUB_ROWS, x.shape[1]), dtype=x.dtype)


def _load_rows(x, start, stop, buf):
    """Rows start:stop of x, C-contiguous (a view where possible; otherwise copied into
    ``buf``, a SUB_ROWS-row block of the compute precision, in the order of x's strides);
    callers read every value through ``_widen``."""
    return x[start:stop]


@overload(_load_rows)
def _load_rows_impl(x, start, stop, buf):
    # 16-bit floats' bits are widened where the row loops read them (``_widen``)
    if x.layout == "C" and (x.dtype == buf.dtype or x.dtype in (types.uint16, types.int16)):
        return lambda x, start, stop, buf: x[start:stop]

    def copy_rows(x, start, stop, buf):
        n_rows = stop - start
        n_labels = x.shape[1]
        out = buf[:n_rows]
        if x.strides[0] <= x.strides[1]:  # column-major-like: walk down the columns
            for j in range(n_labels):
                for i in range(n_rows):
                    out[i, j] = _widen(x[start + i, j])
        else:
            for i in range(n_rows):
                for j in range(n_labels):
                    out[i, j] = _widen(x[start + i, j])
        return out

    return copy_rows


def _scale_row_py(row, probs, lam, g, z):
    """z = lam * L + g for one row (L = log(row) for probabilities); returns max_j z_j."""
    m = z.dtype.type(-np.inf)
    if probs:
        for j in range(row.shape[0]):
            zj = lam * np.log(_widen(row[j])) + g[j]
            z[j] = zj
            m = _fmax(m, zj)
    else:
        for j in range(row.shape[0]):
            zj = lam * _widen(row[j]) + g[j]
            z[j] = zj
            m = _fmax(m, zj)
    return m


# z with the NumPy backend's roundings (no FMA), for the passes whose results must match
# it bit for bit (the sweep's passes form z with ``_shifted_row``)
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
def _shifted_row(row, probs, lam, g, w, shift):
    """w_j = z_j - shift for one row, z = lam * L + g (for scores formed by ``_affine``, so
    that z_j - max_k z_k <= 0 exactly; probabilities are swept cold: their shift is 0);
    returns max_j w_j. w may be longer than the row: its tail is left as it is."""
    w_max = w.dtype.type(-np.inf)
    if probs:
        for j in range(row.shape[0]):
            wj = lam * np.log(_widen(row[j])) + g[j]
            w[j] = wj
            w_max = _fmax(w_max, wj)
    else:
        for j in range(row.shape[0]):
            wj = _affine(lam, _widen(row[j]), g[j]) - shift
            w[j] = wj
            w_max = _fmax(w_max, wj)
    return w_max


@njit(fastmath=_FAST, inline="always")
def _exp_fold(w, m, e, acc, weight):
    """acc += weight * e (the column-sum update of the previous row, whose exponentials e
    still hold), then e = exp(w - m) for this row, in kernel units; returns sum_j e_j.
    Runs over the padded length of w (a multiple of ROW_PAD; past K, w = -inf and e = 0),
    so that the vectorised loop has no scalar remainder, where each exp would cost about
    as much as a vector of them."""
    s = e.dtype.type(0.0)
    for j in range(w.shape[0]):
        acc[j] += e[j] * weight
        ej = _exp_units(w[j] - m)
        e[j] = ej
        s += ej
    return s


@njit(fastmath=_FAST, inline="always")
def _shift_exp_fold(row, lam, g, shift, e, acc, weight):
    """``_shifted_row`` and ``_exp_fold`` of a row of scores in one pass (no scratch row:
    faster for wide rows, where the scalar remainder weighs little); returns sum_j e_j and
    max_j (z_j - shift)."""
    s = e.dtype.type(0.0)
    w_max = e.dtype.type(-np.inf)
    for j in range(row.shape[0]):
        acc[j] += e[j] * weight
        w = _affine(lam, _widen(row[j]), g[j]) - shift
        w_max = _fmax(w_max, w)
        ej = _exp_units(w)
        e[j] = ej
        s += ej
    return s, w_max


@njit(**_OPTS, fastmath=_FAST)
def _sweep_kernel(
    counters, x, probs, lam, g, n_chunks, colsum_parts, row_max, track, warm, delta, redone
):
    """Per-chunk float64 column sums of Q for one sweep, and each row's maximum of z.

    Each row is worked on in two passes while it is in cache: z (or z - shift) into a
    scratch row w with its maximum, then exp, the row sum and the previous row's
    column-sum update (the accumulator is loaded and stored once per row). Cold (``warm``
    False): w = z and the exp pass subtracts the row maximum m. Warm: the row is shifted by
    c = m_prev + delta, where m_prev is its maximum in the previous sweep (``row_max`` on
    entry) and delta the largest increase of any g_j since then, so max_j z_j <= c; the
    first pass then gives this sweep's maximum c + max_j (z_j - c) for free and checks the
    shift: a row where max_j (z_j - c) is above WARM_SLACK_UP (the shift did not bound the
    row: not expected, but then nothing is assumed) or below -WARM_SLACK (too loose a
    shift) is redone cold. For K >= FUSED_MIN_LABELS a warm row takes one pass
    (``_shift_exp_fold``), checked after its column-sum update. Either way Q = e / sum e
    is the same up to rounding. With ``track`` the row's maximum is written to
    ``row_max`` (N long; otherwise it may be a 1-element dummy), and each chunk counts its
    warm rows that were redone cold in ``redone[c]``. Scores only (probabilities keep the
    cold path: their logarithm pass is the costly one). The column maximum of v is not
    computed here (see ``_colmax_kernel``).
    """
    n_rows, n_labels = x.shape
    zero, one, none = g.dtype.type(0.0), g.dtype.type(1.0), g.dtype.type(-np.inf)
    slack, slack_up = g.dtype.type(-WARM_SLACK), g.dtype.type(WARM_SLACK_UP)
    fused = warm and n_labels >= FUSED_MIN_LABELS
    padded = -(-n_labels // ROW_PAD) * ROW_PAD
    buf = np.empty((SUB_ROWS, n_labels), dtype=g.dtype)
    w = np.full(padded, none, dtype=g.dtype)  # the row, shifted (past K: -inf)
    e = np.zeros(padded, dtype=g.dtype)  # exp of the row awaiting its column update
    acc = np.empty(padded, dtype=g.dtype)
    last = False
    c = _claim(counters)
    while c < n_chunks:
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        total = colsum_parts[c]
        misses = 0
        for b0 in range(r0, r1, SUB_ROWS):
            b1 = min(b0 + SUB_ROWS, r1)
            rows = _load_rows(x, b0, b1, buf)
            acc[:] = zero
            weight = zero  # 1 / rowsum of the row held in e (0: nothing pending)
            for i in range(b1 - b0):
                shift = row_max[b0 + i] + delta if warm else none
                if shift > -np.inf and fused:
                    s, w_max = _shift_exp_fold(rows[i], lam, g, shift, e, acc, weight)
                    if slack <= w_max <= slack_up:
                        row_max[b0 + i] = shift + w_max
                        weight = one / s
                        continue
                    e[:] = zero  # redo this row cold (the previous row is already folded)
                    weight = zero
                    misses += 1
                elif shift > -np.inf:
                    w_max = _shifted_row(rows[i], probs, lam, g, w, shift)
                    if slack <= w_max <= slack_up:
                        row_max[b0 + i] = shift + w_max
                        weight = one / _exp_fold(w, zero, e, acc, weight)
                        continue
                    misses += 1  # redo this row cold
                m = _shifted_row(rows[i], probs, lam, g, w, zero)
                if track:
                    row_max[b0 + i] = m
                if m == -np.inf:  # no label reachable from this row: it carries no mass
                    continue  # (the pending row in e stays pending)
                weight = one / _exp_fold(w, m, e, acc, weight)
            for j in range(n_labels):
                total[j] += acc[j] + e[j] * weight
        redone[c] = misses
        last = _finish(counters, n_chunks)
        c = _claim(counters)
    return last


@njit(**_OPTS, fastmath=_FAST)
def _colmax_kernel(counters, x, probs, lam, g, n_chunks, colmax_parts):
    """Per-chunk column maxima of v = z - max_k z_k (the underflow guard; run only when a
    column sum of the sweep is exactly zero)."""
    n_rows, n_labels = x.shape
    zero = g.dtype.type(0.0)
    buf = np.empty((SUB_ROWS, n_labels), dtype=g.dtype)
    z = np.empty(n_labels, dtype=g.dtype)
    last = False
    c = _claim(counters)
    while c < n_chunks:
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        cmax = colmax_parts[c]
        cmax[:] = -np.inf
        for b0 in range(r0, r1, SUB_ROWS):
            b1 = min(b0 + SUB_ROWS, r1)
            rows = _load_rows(x, b0, b1, buf)
            for i in range(b1 - b0):
                m = _shifted_row(rows[i], probs, lam, g, z, zero)
                if m == -np.inf:
                    continue
                for j in range(n_labels):
                    cmax[j] = _fmax(cmax[j], z[j] - m)
        last = _finish(counters, n_chunks)
        c = _claim(counters)
    return last


@njit(**_OPTS, fastmath=_FAST)
def _column_lse_kernel(counters, x, probs, lam, g, n_chunks, top_parts, sum_parts):
    """Per chunk c, over its rows: top_parts[c, j] = max_i z_ij and sum_parts[c, j] =
    sum_i exp(z_ij - top_parts[c, j]) (float64), z = lam * L + g in kernel units: the
    raw column log-sum-exp of ``column_logsumexp`` (g = 0), two passes over the chunk."""
    n_rows, n_labels = x.shape
    zero = g.dtype.type(0.0)
    buf = _row_buffer(x)
    z = np.empty(n_labels, dtype=g.dtype)
    shift = np.empty(n_labels, dtype=g.dtype)
    last = False
    c = _claim(counters)
    while c < n_chunks:
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        top = top_parts[c]
        top[:] = -np.inf
        for b0 in range(r0, r1, SUB_ROWS):
            rows = _load_rows(x, b0, min(b0 + SUB_ROWS, r1), buf)
            for i in range(rows.shape[0]):
                _shifted_row(rows[i], probs, lam, g, z, zero)
                for j in range(n_labels):
                    top[j] = _fmax(top[j], z[j])
        for j in range(n_labels):  # 0 for a column that is -inf throughout
            shift[j] = top[j] if top[j] > -np.inf else zero
        total = sum_parts[c]
        for b0 in range(r0, r1, SUB_ROWS):
            rows = _load_rows(x, b0, min(b0 + SUB_ROWS, r1), buf)
            for i in range(rows.shape[0]):
                _shifted_row(rows[i], probs, lam, g, z, zero)
                for j in range(n_labels):
                    total[j] += _exp_units(z[j] - shift[j])
        last = _finish(counters, n_chunks)
        c = _claim(counters)
    return last


@njit(**_OPTS, fastmath=_FAST)
def _codes_kernel(counters, x, probs, lam, g, n_chunks, out):
    """out = Q for every row of x (rows sum to 1), in the compute precision."""
    n_rows, n_labels = x.shape
    zero, one = g.dtype.type(0.0), g.dtype.type(1.0)
    buf = np.empty((SUB_ROWS, n_labels), dtype=g.dtype)
    last = False
    c = _claim(counters)
    while c < n_chunks:
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        for b0 in range(r0, r1, SUB_ROWS):
            b1 = min(b0 + SUB_ROWS, r1)
            rows = _load_rows(x, b0, b1, buf)
            for i in range(b1 - b0):
                q = out[b0 + i]
                m = _shifted_row(rows[i], probs, lam, g, q, zero)
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
        last = _finish(counters, n_chunks)
        c = _claim(counters)
    return last


@njit(**_OPTS, fastmath=_EXACT_Z)
def _labels_kernel(counters, x, probs, lam, g, n_chunks, out):
    """out_i = argmax_j z_ij, the first index among ties."""
    n_rows, n_labels = x.shape
    buf = np.empty((SUB_ROWS, n_labels), dtype=g.dtype)
    z = np.empty(n_labels, dtype=g.dtype)
    last = False
    c = _claim(counters)
    while c < n_chunks:
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        for b0 in range(r0, r1, SUB_ROWS):
            b1 = min(b0 + SUB_ROWS, r1)
            rows = _load_rows(x, b0, b1, buf)
            for i in range(b1 - b0):
                top = _scale_row_exact(rows[i], probs, lam, g, z)
                best = 0  # the first index attaining the maximum (maxnum returns an operand)
                while z[best] != top:
                    best += 1
                out[b0 + i] = best
        last = _finish(counters, n_chunks)
        c = _claim(counters)
    return last


@njit(fastmath=_EXACT_Z, inline="always")
def _top_of_row(z, idx, val):
    """The k = idx.shape[0] largest entries of z, best first, the lower index first among
    equal values (as a stable descending sort), into idx and val: one stable sort where
    k is large, else insertion into the sorted top list (strict > keeps ties stable)."""
    k, n_labels = idx.shape[0], z.shape[0]
    if k * k > 8 * n_labels:
        order = np.argsort(-z, kind="mergesort")
        for t in range(k):
            idx[t] = order[t]
            val[t] = z[order[t]]
        return
    filled = 0
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


@njit(**_OPTS, fastmath=_EXACT_Z)
def _top_kernel(counters, x, probs, lam, g, n_chunks, indices, values):
    """The k = indices.shape[1] largest z_ij per row, best first, lower index on ties."""
    n_rows, n_labels = x.shape
    buf = np.empty((SUB_ROWS, n_labels), dtype=g.dtype)
    z = np.empty(n_labels, dtype=g.dtype)
    last = False
    c = _claim(counters)
    while c < n_chunks:
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        for b0 in range(r0, r1, SUB_ROWS):
            b1 = min(b0 + SUB_ROWS, r1)
            rows = _load_rows(x, b0, b1, buf)
            for i in range(b1 - b0):
                _scale_row_exact(rows[i], probs, lam, g, z)
                _top_of_row(z, indices[b0 + i], values[b0 + i])
        last = _finish(counters, n_chunks)
        c = _claim(counters)
    return last


@njit(fastmath=_FAST)
def _exp_sum(row, n_labels, m, unit):
    """sum_j exp(x_j - m) over the row's first ``n_labels`` entries, in kernel units and
    the compute precision that ``unit`` holds the kernel unit in: the row's log-sum-exp is
    m + log of it (the objective's and the value check's normalisers)."""
    s = unit[0] * 0
    for j in range(n_labels):
        s += _exp_units((_widen(row[j]) - m) * unit[0])
    return s


@njit(**_OPTS, fastmath=_FAST)
def _logprob_kernel(counters, x, kind_code, unit, labels, n_chunks, parts):
    """parts[c] = sum over chunk c of log P_i,labels_i (kind_code 0 logits, 1 logprobs,
    2 probs). For logits the row's log-sum-exp is subtracted: log P_il = x_il - m_i -
    log sum_j exp(x_ij - m_i), the sum taken in the compute precision (``unit`` holds the
    kernel unit in it) and everything else in float64."""
    n_rows, n_labels = x.shape
    buf = np.empty((SUB_ROWS, n_labels), dtype=unit.dtype)
    last = False
    c = _claim(counters)
    while c < n_chunks:
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        total = 0.0
        for b0 in range(r0, r1, SUB_ROWS):
            b1 = min(b0 + SUB_ROWS, r1)
            if kind_code != 0:
                for i in range(b0, b1):
                    picked = np.float64(_widen(x[i, labels[i]]))
                    if kind_code == 1:
                        total += picked
                    else:
                        total += np.log(picked) if picked > 0.0 else -np.inf
                continue
            rows = _load_rows(x, b0, b1, buf)
            for i in range(b1 - b0):
                row = rows[i]
                m = _widen(row[0])
                for j in range(1, n_labels):
                    m = _fmax(m, _widen(row[j]))
                s = _exp_sum(row, n_labels, m, unit)
                picked = np.float64(_widen(row[labels[b0 + i]]))
                total += _log_softmax_at(picked, np.float64(m), np.float64(s))
        parts[c] = total
        last = _finish(counters, n_chunks)
        c = _claim(counters)
    return last


@njit(**_OPTS, fastmath=_CHECK)
def _check_kernel(
    counters, x, kind_code, unit, n_chunks, finite, minima, maxima, row_best, deviation,
    normaliser, support,
):
    """Per chunk: no NaN or +inf, the minimum, the maximum, the lowest row maximum; with
    kind_code 0 (logits whose log-normalisers are asked for) the sum of the rows'
    log sum_j exp(x_ij), each taken as ``_logprob_kernel`` takes it (m_i +
    log sum_j exp(x_ij - m_i), the sum in the compute precision that ``unit`` holds the
    kernel unit in); with kind_code 2 (probabilities) max_i |sum_j x_ij - 1| and the
    number of positive entries of each column (``support``, (C, K); unused otherwise);
    with kind_code 1 neither.

    NaN and +inf: the sum of x_ij * 0 over the entries other than -inf is 0 when there
    are none and NaN otherwise (no "nnan"/"ninf" fast-math here, so the product is kept;
    -inf, an impossible label, is left out); the extremes are only read when it is 0.
    """
    n_rows, n_labels = x.shape
    buf = _row_buffer(x)
    zero = unit[0] * 0
    last = False
    c = _claim(counters)
    while c < n_chunks:
        r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
        poison = 0.0
        low, high, lowest_best = np.inf, -np.inf, np.inf
        dev, lse = 0.0, 0.0
        for b0 in range(r0, r1, SUB_ROWS):
            b1 = min(b0 + SUB_ROWS, r1)
            rows = _load_rows(x, b0, b1, buf)
            for i in range(b1 - b0):
                row = rows[i]
                row_poison, bottom, top = zero, _widen(row[0]), _widen(row[0])
                for j in range(n_labels):
                    w = _widen(row[j])
                    row_poison += (w if w != -np.inf else zero) * zero
                    bottom = _fmin(bottom, w)
                    top = _fmax(top, w)
                poison += row_poison
                best = np.float64(top)
                low = _fmin(low, np.float64(bottom))
                high = _fmax(high, best)
                lowest_best = _fmin(lowest_best, best)
                if kind_code == 0:
                    e = _exp_sum(row, n_labels, top, unit)
                    lse += best + math.log(np.float64(e)) if best > -np.inf else -np.inf
                elif kind_code == 2:
                    s = 0.0
                    for j in range(n_labels):
                        s += np.float64(_widen(row[j]))
                        support[c, j] += _widen(row[j]) > 0
                    dev = max(dev, abs(s - 1.0))
        finite[c] = math.isfinite(poison)
        minima[c] = low
        maxima[c] = high
        row_best[c] = lowest_best
        deviation[c] = dev
        normaliser[c] = lse
        last = _finish(counters, n_chunks)
        c = _claim(counters)
    return last


@njit(cache=True)
def _warm_delta(g_then, g_now):
    """The shift delta = max(0, max_j (g_j - g_j(then))) of a warm sweep, or -1 where it
    must be cold: a label came back from -inf, no label is finite, or the steps of g
    spread by more than WARM_SLACK - 1 (some row's terms could all fall below 2^-WARM_SLACK
    of its shift)."""
    low, high = np.inf, -np.inf
    for j in range(g_now.shape[0]):
        if g_now[j] == -np.inf:
            continue
        if g_then[j] == -np.inf:
            return -1.0
        step = np.float64(g_now[j]) - np.float64(g_then[j])
        low, high = min(low, step), max(high, step)
    if high == -np.inf or high - low > WARM_SLACK - 1.0:
        return -1.0
    return max(high, 0.0)


# below it, a (non-negative) float64 is 0: _any_below(colsum, _ABOVE_ZERO, g) is
# ``needs_exact_colmax``
_ABOVE_ZERO = float(np.finfo(np.float64).smallest_subnormal)


@njit(cache=True)
def _any_below(colsum, bound, g):
    """Whether some label with a finite dual has a column sum below ``bound``."""
    for j in range(colsum.shape[0]):
        if colsum[j] < bound and g[j] > -np.inf:
            return True
    return False


def _n_chunks(n_rows: int, n_labels: int) -> int:
    """Parallel chunks for a block: a function of its shape only (never of the threads)."""
    by_rows = max(1, n_rows // MIN_CHUNK_ROWS)
    by_memory = max(1, PARTIALS_BYTES // (16 * max(n_labels, 1)))
    return int(min(by_rows, MAX_CHUNKS, by_memory))


@dataclass(frozen=True)
class BFloat16Bits:
    """bfloat16 scores, which NumPy cannot view (the torch backend's CPU bfloat16 tensors),
    as their bit patterns: ``bits`` is an (n, K) int16 view of their memory, any strides.
    The kernels widen each value to float32 (exact) as they read it, so nothing is copied
    and a solve's warm sweeps apply as for float32 arrays."""

    bits: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bits.shape

    @property
    def dtype(self) -> np.dtype:
        """The precision the kernels compute in (float32)."""
        return np.dtype(np.float32)


def _kernel_blocks(x: np.ndarray | BFloat16Bits) -> Iterator[tuple[np.ndarray, bool]]:
    """(block, True) for an array the kernels read as it is: float32, float64, float16 (as
    its uint16 bits) and ``BFloat16Bits`` (as int16), any strides; otherwise (integers,
    bool) consecutive row blocks converted to float64, each with False."""
    if isinstance(x, BFloat16Bits):
        yield x.bits.view(np.int16), True
        return
    if x.dtype in (np.float32, np.float64):
        yield x, True
        return
    if x.dtype == np.float16:
        yield x.view(np.uint16), True
        return
    dtype = compute_dtype(x.dtype)
    step = max(1, CONVERT_ELEMENTS // max(x.shape[1], 1))
    for start in range(0, x.shape[0], step):
        part = np.asarray(x[start : start + step], dtype=dtype)
        part.flags.writeable = False
        yield part, False


def _as_array(block: Any) -> np.ndarray | BFloat16Bits:
    """A read-only plain ndarray view of the block (memmaps included), checked to be 2-D;
    ``BFloat16Bits`` as they are.

    Read-only for every input, so that writable and read-only arrays share one compiled
    specialisation of each kernel (the kernels never write to the scores).
    """
    if isinstance(block, BFloat16Bits):
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


_BFLOAT16_NEG_INF = np.int16(-128)  # the bits of bfloat16 -inf (0xff80) as an int16


def _possible_rows(x: np.ndarray | BFloat16Bits) -> np.ndarray:
    """Per label, the number of rows whose score is above -inf (int64, (K,))."""
    if isinstance(x, BFloat16Bits):
        return np.count_nonzero(x.bits.view(np.int16) != _BFLOAT16_NEG_INF, axis=0)
    return possible_rows(x)


class NumbaSolveState:
    """One solve's warm sweeps (``NumbaBackend.new_state``)."""

    def __init__(self) -> None:
        # by block, (data address, shape, strides, dtype) -> (lam, g, row_max) of its last
        # sweep in kernel units, or None once it gave up
        self.blocks: dict[tuple, tuple[Any, np.ndarray, np.ndarray] | None] = {}
        self.warm_rows = (0, 0)  # the last block: (rows swept warm, of those redone cold)
        # float64 blocks read as they are and swept with float32 arithmetic (the driver's
        # coarse stages: ``equipart.solver.COARSE_TOL``); other dtypes are unaffected
        self.coarse = False


class NumbaBackend(NumpyBackend):
    """NumPy arrays and memmaps, swept by parallel Numba kernels (see the module docs).

    Shares the NumPy backend's array handling (accepts, shape_dtype, head, concat,
    stack) and replaces every pass over the scores with a compiled kernel.
    """

    name = "numba"

    reports_log_normaliser = True

    def check(
        self, block: np.ndarray, kind: ScoreKind, log_normaliser: bool = False
    ) -> BlockCheck:
        x = _as_array(block)
        probs = kind == "probs"
        normalise = log_normaliser and kind == "logits"
        kind_code = 2 if probs else 0 if normalise else 1  # (see _check_kernel)
        dtype = compute_dtype(x.dtype)
        unit = np.array([_unit(dtype)], dtype=dtype)
        valid, min_value, max_value, deviation = True, np.inf, -np.inf, 0.0
        min_row_max, normaliser = np.inf, 0.0
        support = np.zeros(x.shape[1], dtype=np.int64) if probs else None
        for part, _ in _kernel_blocks(x):
            n_chunks = _n_chunks(*part.shape)
            finite = np.empty(n_chunks, dtype=np.bool_)
            minima, maxima, row_best, dev, lse = (np.empty(n_chunks) for _ in range(5))
            counts = np.zeros((n_chunks, x.shape[1] if probs else 0), dtype=np.int64)
            stats = (finite, minima, maxima, row_best, dev, lse, counts)
            _run(_check_kernel, n_chunks, part.size, part, kind_code, unit, n_chunks, *stats)
            valid = valid and bool(finite.all())
            min_value = min(min_value, float(minima.min()))
            max_value = max(max_value, float(maxima.max()))
            min_row_max = min(min_row_max, float(row_best.min()))
            deviation = max(deviation, float(dev.max()))
            normaliser += float(lse.sum())
            if support is not None:
                support += counts.sum(axis=0)
        if not probs and valid and min_value == -np.inf:  # masked labels: a second pass
            support = _possible_rows(x)
        return BlockCheck(
            valid,
            min_value,
            deviation,
            max_value,
            support,
            min_row_max=min_row_max,
            log_normaliser=normaliser if normalise and valid else np.nan,
        )

    def new_state(self) -> NumbaSolveState:
        """Each block's row maxima, kept for the length of a solve: its sweeps skip the
        row-maximum pass from a block's second sweep on (``_sweep_kernel``'s warm path)."""
        return NumbaSolveState()

    def _warm_plan(
        self, state: NumbaSolveState | None, part: np.ndarray, whole: bool, probs: bool,
        lam_c: Any, g_c: np.ndarray,
    ) -> tuple[tuple | None, np.ndarray | None, Any]:
        """(cache key or None, previous row maxima or None, delta) for one kernel block.

        Warm (row maxima returned) when this solve swept the same block at the same lam
        before and no row's shift can overshoot its maximum by more than WARM_SLACK:
        with steps d_j = g_j - g_j(then), c_i - m_i <= max_j d_j - min_j d_j.
        """
        n_labels = part.shape[1]
        usable = WARM_MIN_LABELS <= n_labels <= WARM_MAX_LABELS and not probs
        if not (state is not None and whole and usable):  # (converted blocks are new arrays)
            return None, None, 0.0
        key = (part.__array_interface__["data"][0], part.shape, part.strides, part.dtype.str)
        if key in state.blocks and state.blocks[key] is None:  # this block gave up: cold
            return None, None, 0.0
        if key not in state.blocks and len(state.blocks) >= MAX_WARM_BLOCKS:
            return None, None, 0.0
        previous = state.blocks.get(key)
        if previous is None or previous[0] != lam_c or previous[1].dtype != g_c.dtype:
            # first sweep of this block, of this stage or in this precision
            return key, None, 0.0
        delta = _warm_delta(previous[1], g_c)
        return (key, None, 0.0) if delta < 0.0 else (key, previous[2], delta)

    def _sweep_part(
        self, state: NumbaSolveState | None, part: np.ndarray, whole: bool, probs: bool,
        lam_c: Any, g_c: np.ndarray,
    ) -> np.ndarray:
        """Per-chunk column sums of one kernel block (warm where ``_warm_plan`` allows)."""
        n_rows, n_labels = part.shape
        n_chunks = _n_chunks(n_rows, n_labels)
        sums = np.zeros((n_chunks, n_labels))
        redone = np.zeros(n_chunks, dtype=np.int64)
        key, row_max, delta = self._warm_plan(state, part, whole, probs, lam_c, g_c)
        warm = row_max is not None
        if key is not None and not warm:
            row_max = np.full(n_rows, -np.inf, dtype=g_c.dtype)
        elif key is None:
            row_max = np.empty(1, dtype=g_c.dtype)  # not kept: nothing to write
        kernel_args = (part, probs, lam_c, g_c, n_chunks, sums, row_max, key is not None)
        _run(_sweep_kernel, n_chunks, part.size, *kernel_args, warm, g_c.dtype.type(delta), redone)
        part_sum = sums.sum(axis=0)
        if warm and _any_below(part_sum, n_rows * WARM_TINY_MASS[g_c.dtype], g_c):
            # terms a warm shift may have flushed: this sweep again, cold
            sums[:] = 0.0
            cold = (False, g_c.dtype.type(0.0), redone)
            _run(_sweep_kernel, n_chunks, part.size, *kernel_args, *cold)
            part_sum = sums.sum(axis=0)
        if key is not None:
            gave_up = warm and redone.sum() > WARM_GIVE_UP * n_rows
            state.blocks[key] = None if gave_up else (lam_c, g_c.copy(), row_max)
        if state is not None:  # (rows swept warm, of those redone cold) in this block
            state.warm_rows = (int(warm) * n_rows, int(redone.sum()))
        return part_sum

    def sweep(self, block: np.ndarray, kind: ScoreKind, lam: float, g: np.ndarray) -> ColumnStats:
        return self.sweep_with(None, block, kind, lam, g)

    def sweep_with(
        self, state: NumbaSolveState | None, block: np.ndarray, kind: ScoreKind, lam: float,
        g: np.ndarray,
    ) -> ColumnStats:
        x = _as_array(block)
        n_labels = x.shape[1]
        dtype = compute_dtype(x.dtype)
        if state is not None and state.coarse and dtype == np.float64:
            dtype = np.dtype(np.float32)  # the kernels load rows into float32 scratch
        unit = _unit(dtype)
        lam_c, g_c = _scaled_params(lam, g, dtype, unit)
        probs = kind == "probs"
        colsum = np.zeros(n_labels)
        colmax = np.full(n_labels, -np.inf)  # exact where colsum_j == 0, see ColumnStats
        for part, whole in _kernel_blocks(x):
            part_sum = self._sweep_part(state, part, whole, probs, lam_c, g_c)
            colsum += part_sum
            if _any_below(part_sum, _ABOVE_ZERO, g_c):  # a sum underflowed: one more read
                n_chunks = _n_chunks(*part.shape)
                maxima = np.empty((n_chunks, n_labels), dtype=dtype)
                _run(_colmax_kernel, n_chunks, part.size, part, probs, lam_c, g_c, n_chunks, maxima)
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
        for part, _ in _kernel_blocks(x):
            stop = start + part.shape[0]
            views = [out[start:stop] for out in outs]
            n_chunks = _n_chunks(*part.shape)
            _run(kernel, n_chunks, part.size, part, kind == "probs", lam_c, g_c, n_chunks, *views)
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
        for part, _ in _kernel_blocks(x):
            n_chunks = _n_chunks(*part.shape)
            top = np.empty((n_chunks, n_labels), dtype=dtype)
            sums = np.zeros((n_chunks, n_labels))
            args = (part, kind == "probs", lam_c, g_c, n_chunks, top, sums)
            _run(_column_lse_kernel, n_chunks, part.size, *args)
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
        kind_code = _KIND_CODES[kind]
        dtype = compute_dtype(x.dtype)
        unit = np.array([_unit(dtype)], dtype=dtype)
        total, start = 0.0, 0
        for part, _ in _kernel_blocks(x):
            stop = start + part.shape[0]
            n_chunks = _n_chunks(*part.shape)
            parts = np.empty(n_chunks)
            args = (part, kind_code, unit, picks[start:stop], n_chunks, parts)
            _run(_logprob_kernel, n_chunks, part.size, *args)
            total += float(parts.sum())
            start = stop
        return total

"""The CuPy backend: CuPy arrays on the GPU, results on the input's device.

The sweep over float32 and float16 scores (K <= 8192) is one CUDA kernel (a ``RawModule``
compiled by NVRTC on first use, per dtype and width) that reads each element of L once:
a persistent grid of thread blocks walks the rows (block b takes rows b, b + B, ...); the
256 threads of a block own fixed columns j = t + 256 c, keep the row's values in registers
through a block-wide max, exp2 and block-wide sum, and accumulate their columns' colsum
in float32 registers. The next row's loads are issued before the current row's
reductions (two rows in registers), so memory traffic continues across the barriers. Each
block writes one row of (B, K) partials, which are merged in a fixed order (float64 sum):
deterministic, no atomics. The maths is that of ``equipart.backends.base`` in base 2, as
in the torch backend's Triton kernel. As there, the column maxima are not computed in the
kernel: the driver needs them only where a column sum underflowed to 0, and then the
blockwise CuPy path supplies them (``ColumnStats``).

Other dtypes (float64, integers) and wider K use CuPy array operations blockwise over
rows (no N x K temporaries). Computation is float32 for half and single precision,
float64 otherwise; column statistics are float64 and cross to the host once per sweep.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import cache
from typing import Any

import cupy as cp
import numpy as np

from .base import (
    Backend,
    BlockCheck,
    ColumnStats,
    ScoreKind,
    check_label_range,
    needs_exact_colmax,
)
from .numpy import compute_dtype, row_blocks

__all__ = ["CupyBackend"]

BLOCK_ELEMENTS = 1 << 24
THREADS = 256
MAX_COLS_PER_THREAD = 32  # K <= 8192 in registers
SM_REGISTERS = 65536  # 32-bit registers per multiprocessor (sm_50 to sm_90)
LOG2E = math.log2(math.e)

_SOURCE = r"""
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float load_value(const float* p) { return *p; }
__device__ __forceinline__ float load_value(const unsigned short* p) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(*p));
    return f;
}

__device__ __forceinline__ float block_max(float v, float* red) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();  // red may still be read by the previous reduction
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    v = (threadIdx.x & 31) < (THREADS >> 5) ? red[threadIdx.x & 31] : NEG_INF;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float block_sum(float v, float* red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    v = (threadIdx.x & 31) < (THREADS >> 5) ? red[threadIdx.x & 31] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ void load_row(const SCALAR* xr, long long stride_col,
                                         int n_labels, float* out) {
#pragma unroll
    for (int c = 0; c < CPT; ++c) {
        int j = threadIdx.x + c * THREADS;
        out[c] = j < n_labels ? load_value(xr + j * stride_col) : 1.0f;  // padding: g = -inf
    }
}

extern "C" __global__ void __launch_bounds__(THREADS)
sweep_kernel(const SCALAR* __restrict__ x, const float* __restrict__ g2,
             float* __restrict__ sums,
             long long n_rows, int n_labels, long long stride_row, long long stride_col,
             float scale) {
    __shared__ float red[32];
    float g[CPT], acc_sum[CPT], v[CPT], next[CPT];
#pragma unroll
    for (int c = 0; c < CPT; ++c) {
        int j = threadIdx.x + c * THREADS;
        g[c] = j < n_labels ? g2[j] : NEG_INF;
        acc_sum[c] = 0.0f;
    }
    long long row = blockIdx.x;
    if (row < n_rows) load_row(x + row * stride_row, stride_col, n_labels, next);
    for (; row < n_rows; row += gridDim.x) {
        float m = NEG_INF;
#pragma unroll
        for (int c = 0; c < CPT; ++c) {
            float value = next[c];
            if (IS_PROBS) value = log2f(value);
            v[c] = value * scale + g[c];
            m = fmaxf(m, v[c]);
        }
        long long following = row + gridDim.x;
        if (following < n_rows) load_row(x + following * stride_row, stride_col, n_labels, next);
        m = block_max(m, red);
        float s = 0.0f;
#pragma unroll
        for (int c = 0; c < CPT; ++c) {
            v[c] = exp2f(v[c] - m);  // -inf stays -inf: m is finite for a valid row
            s += v[c];
        }
        float inv = 1.0f / block_sum(s, red);
#pragma unroll
        for (int c = 0; c < CPT; ++c) acc_sum[c] += v[c] * inv;
    }
#pragma unroll
    for (int c = 0; c < CPT; ++c) {
        int j = threadIdx.x + c * THREADS;
        if (j < n_labels) sums[(long long)blockIdx.x * n_labels + j] = acc_sum[c];
    }
}
"""


@cache
def _kernel(scalar: str, cols_per_thread: int, is_probs: bool) -> cp.RawKernel:
    defines = (
        f"#define SCALAR {scalar}\n#define CPT {cols_per_thread}\n"
        f"#define THREADS {THREADS}\n#define IS_PROBS {int(is_probs)}\n"
    )
    module = cp.RawModule(code=defines + _SOURCE, options=("--std=c++14",))
    return module.get_function("sweep_kernel")


_KERNEL_SCALARS = {np.dtype(np.float32): "float", np.dtype(np.float16): "unsigned short"}


def _row_blocks(n_rows: int, n_labels: int) -> Iterator[slice]:
    return row_blocks(n_rows, n_labels, BLOCK_ELEMENTS)


def _scaled(x: cp.ndarray, kind: ScoreKind, lam: float, g: cp.ndarray) -> cp.ndarray:
    """A new block z = lam * L + g in the compute precision (``x`` is not modified)."""
    dtype = compute_dtype(x.dtype)
    if kind == "probs":
        z = cp.log(x.astype(dtype))
        z *= dtype.type(lam)
    else:
        z = x.astype(dtype) * dtype.type(lam)
    z += g
    return z


def _normalise_rows(z: cp.ndarray) -> cp.ndarray:
    """In place: v = z - rowmax(z), then Q = exp(v) / rowsum(exp(v)). Returns v's colmax."""
    z -= z.max(axis=1, keepdims=True)
    colmax = z.max(axis=0)
    cp.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return colmax


def _kernel_colsum(block: cp.ndarray, kind: ScoreKind, lam: float, g: np.ndarray) -> cp.ndarray:
    """Column sums of one sweep by the fused kernel, merged in float64 ((K,), on device)."""
    n_rows, n_labels = block.shape
    kernel = _kernel(_KERNEL_SCALARS[block.dtype], -(-n_labels // THREADS), kind == "probs")
    # as many blocks as are resident at once (registers allocated per thread in 8s), at most
    # 4 per SM: a persistent grid with no second wave
    per_sm = min(4, SM_REGISTERS // (THREADS * (-(-kernel.num_regs // 8) * 8)))
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    n_blocks = max(1, min(n_rows, sms * max(1, per_sm)))
    sums = cp.empty((n_blocks, n_labels), dtype=cp.float32)
    g2 = cp.asarray(np.asarray(g, dtype=np.float64) * LOG2E, dtype=cp.float32)
    scale = lam if kind == "probs" else lam * LOG2E
    item = block.itemsize
    kernel(
        (n_blocks,),
        (THREADS,),
        (
            block,
            g2,
            sums,
            np.int64(n_rows),
            np.int32(n_labels),
            np.int64(block.strides[0] // item),
            np.int64(block.strides[1] // item),
            np.float32(scale),
        ),
    )
    return sums.sum(axis=0, dtype=cp.float64)


def _blockwise_stats(
    block: cp.ndarray, kind: ScoreKind, lam: float, g: np.ndarray
) -> tuple[cp.ndarray, cp.ndarray]:
    """(colsum float64, exact colmax) by CuPy array operations over row blocks."""
    n_rows, n_labels = block.shape
    dtype = compute_dtype(block.dtype)
    g_d = cp.asarray(g, dtype=dtype)
    colsum = cp.zeros(n_labels, dtype=cp.float64)
    colmax = cp.full(n_labels, -cp.inf, dtype=dtype)
    for rows in _row_blocks(n_rows, n_labels):
        z = _scaled(block[rows], kind, lam, g_d)
        cp.maximum(colmax, _normalise_rows(z), out=colmax)
        colsum += z.sum(axis=0, dtype=cp.float64)
    return colsum, colmax


class CupyBackend(Backend):
    """CuPy arrays; the fused sweep kernel for float32 and float16 scores."""

    name = "cupy"

    @staticmethod
    def accepts(scores: Any) -> bool:
        return isinstance(scores, cp.ndarray)

    def shape_dtype(self, scores: cp.ndarray) -> tuple[tuple[int, ...], np.dtype]:
        return tuple(scores.shape), scores.dtype

    def head(self, scores: cp.ndarray, index: int) -> cp.ndarray:
        return scores[index]

    def uses_kernel(self, block: cp.ndarray) -> bool:
        """Whether ``sweep`` runs the fused CUDA kernel on this block."""
        cols = -(-block.shape[1] // THREADS)
        return block.dtype in _KERNEL_SCALARS and cols <= MAX_COLS_PER_THREAD

    def check(self, block: cp.ndarray, kind: ScoreKind) -> BlockCheck:
        with block.device:
            lows, highs, lowest_bests, deviations = [], [], [], []
            support = cp.zeros(block.shape[1], dtype=cp.int64)
            for rows in _row_blocks(*block.shape):
                x = block[rows]
                lows.append(x.min().astype(cp.float64))
                row_max = x.max(axis=1)
                highs.append(row_max.max().astype(cp.float64))
                lowest_bests.append(row_max.min().astype(cp.float64))
                if kind == "probs":
                    sums = x.sum(axis=1, dtype=cp.float64)
                    deviations.append(cp.abs(sums - 1.0).max())
                    support += cp.count_nonzero(x > 0, axis=0)
            # min and max propagate NaN, and +inf is the maximum: no NaN or +inf iff both
            # extremes are numbers and the maximum is below +inf (-inf: an impossible label)
            low, high = cp.stack(lows).min(), cp.stack(highs).max()
            lowest_best = cp.stack(lowest_bests).min()
            deviation = cp.stack(deviations).max() if deviations else cp.zeros_like(low)
            host = cp.stack([low, deviation, high, lowest_best]).get()
            valid = not (np.isnan(host[0]) or np.isnan(host[2])) and host[2] < np.inf
            counts = support.get() if kind == "probs" else None
            if kind != "probs" and valid and host[0] == -np.inf:  # masked labels: 2nd pass
                counts = sum(
                    cp.count_nonzero(block[rows] > -cp.inf, axis=0)
                    for rows in _row_blocks(*block.shape)
                ).get()
        return BlockCheck(valid, *map(float, host[:3]), counts, min_row_max=float(host[3]))

    def sweep(self, block: cp.ndarray, kind: ScoreKind, lam: float, g: np.ndarray) -> ColumnStats:
        with block.device:
            if not self.uses_kernel(block):
                colsum, colmax = _blockwise_stats(block, kind, lam, g)
                host = cp.stack([colsum, colmax.astype(cp.float64)]).get()
                return ColumnStats(host[0].copy(), host[1].copy())
            colsum = _kernel_colsum(block, kind, lam, g).get()
            colmax = np.full_like(colsum, -np.inf)
            if needs_exact_colmax(colsum, g):
                colmax = _blockwise_stats(block, kind, lam, g)[1].astype(cp.float64).get()
        return ColumnStats(colsum, colmax)

    def labels(self, block: cp.ndarray, kind: ScoreKind, lam: float, g: np.ndarray) -> cp.ndarray:
        with block.device:
            g_d = cp.asarray(g, dtype=compute_dtype(block.dtype))
            out = cp.empty(block.shape[0], dtype=cp.int64)
            for rows in _row_blocks(*block.shape):
                out[rows] = _scaled(block[rows], kind, lam, g_d).argmax(axis=1)
        return out

    def codes(self, block: cp.ndarray, kind: ScoreKind, lam: float, g: np.ndarray) -> cp.ndarray:
        dtype = compute_dtype(block.dtype)
        with block.device:
            g_d = cp.asarray(g, dtype=dtype)
            out = cp.empty(block.shape, dtype=dtype)
            for rows in _row_blocks(*block.shape):
                z = _scaled(block[rows], kind, lam, g_d)
                _normalise_rows(z)
                out[rows] = z
        return out

    def column_logsumexp(self, block: cp.ndarray, kind: ScoreKind, lam: float) -> np.ndarray:
        """Blockwise CuPy operations on the block's device (one pass, O(K) to the host)."""
        n_labels = block.shape[1]
        with block.device:
            zeros = cp.zeros(n_labels, dtype=compute_dtype(block.dtype))
            total = cp.full(n_labels, -cp.inf, dtype=cp.float64)
            for rows in _row_blocks(*block.shape):
                z = _scaled(block[rows], kind, lam, zeros)
                top = z.max(axis=0)
                top = cp.where(top > -cp.inf, top, 0).astype(z.dtype)  # a column all -inf
                z -= top
                cp.exp(z, out=z)
                part = cp.log(z.sum(axis=0, dtype=cp.float64)) + top
                total = cp.logaddexp(total, part)
            return total.get()

    def top_labels(
        self, block: cp.ndarray, kind: ScoreKind, lam: float, g: np.ndarray, k: int
    ) -> tuple[cp.ndarray, cp.ndarray]:
        """The k best labels per row by a stable descending sort (ties: lower index first)."""
        n_rows, n_labels = block.shape
        k = min(int(k), n_labels)
        dtype = compute_dtype(block.dtype)
        with block.device:
            g_d = cp.asarray(g, dtype=dtype)
            indices = cp.empty((n_rows, k), dtype=cp.int64)
            values = cp.empty((n_rows, k), dtype=dtype)
            for rows in _row_blocks(n_rows, n_labels):
                z = _scaled(block[rows], kind, lam, g_d)
                order = cp.argsort(-z, axis=1)[:, :k]  # CuPy's sort is stable
                indices[rows] = order
                values[rows] = cp.take_along_axis(z, order, axis=1)
        return indices, values

    def logprob_sum(self, block: cp.ndarray, kind: ScoreKind, labels: Any) -> float:
        with block.device:
            labels = cp.asarray(labels, dtype=cp.int64)
            if labels.size:  # (take_along_axis would wrap -1 round to the last label)
                low, high = cp.stack([labels.min(), labels.max()]).get().tolist()
                check_label_range(low, high, block.shape[1])
            total = cp.zeros((), dtype=cp.float64)
            for rows in _row_blocks(*block.shape):
                x = block[rows]
                picked = cp.take_along_axis(x, labels[rows, None], axis=1)[:, 0]
                picked = picked.astype(cp.float64)
                if kind == "probs":
                    picked = cp.log(picked)
                elif kind == "logits":
                    z = x.astype(cp.float64)
                    top = z.max(axis=1)
                    picked = (picked - top) - cp.log(cp.exp(z - top[:, None]).sum(axis=1))
                total += picked.sum()
            return float(total.get())

    def concat(self, parts: list[cp.ndarray]) -> cp.ndarray:
        return parts[0] if len(parts) == 1 else cp.concatenate(parts, axis=0)

    def stack(self, parts: list[cp.ndarray]) -> cp.ndarray:
        return cp.stack(parts, axis=0)

    def to_numpy(self, array: Any) -> np.ndarray:
        return array.get() if isinstance(array, cp.ndarray) else np.asarray(array)

    def from_numpy(self, array: np.ndarray, like: Any) -> cp.ndarray:
        with like.device if isinstance(like, cp.ndarray) else cp.cuda.Device():
            return cp.asarray(array)

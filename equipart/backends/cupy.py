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
array-API sweep supplies them (``ColumnStats``).

Every other pass, and the sweep over other dtypes (float64, integers) and wider K, are the
array-API passes of ``ArrayAPIBackend``, blockwise over rows (no N x K temporaries), on
the array's device. Computation is float32 for half and single precision, float64
otherwise; column statistics are float64 and cross to the host once per call.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from functools import cache
from typing import Any

import cupy as cp
import numpy as np

from .array_api import ArrayAPIBackend
from .base import ColumnStats, ScoreKind, needs_exact_colmax

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


class CupyBackend(ArrayAPIBackend):
    """CuPy arrays; the fused sweep kernel for float32 and float16 scores."""

    name = "cupy"
    block_elements = BLOCK_ELEMENTS

    @staticmethod
    def accepts(scores: Any) -> bool:
        return isinstance(scores, cp.ndarray)

    def shape_dtype(self, scores: cp.ndarray) -> tuple[tuple[int, ...], np.dtype]:
        return tuple(scores.shape), scores.dtype

    def uses_kernel(self, block: cp.ndarray) -> bool:
        """Whether ``sweep`` runs the fused CUDA kernel on this block."""
        cols = -(-block.shape[1] // THREADS)
        return block.dtype in _KERNEL_SCALARS and cols <= MAX_COLS_PER_THREAD

    def _scope(self, x: cp.ndarray) -> AbstractContextManager:
        return x.device

    def _exp(self, xp: Any, v: cp.ndarray) -> cp.ndarray:
        return cp.exp(v, out=v)

    def _top_k(self, xp: Any, z: cp.ndarray, k: int) -> cp.ndarray:
        return cp.argsort(-z, axis=1)[:, :k]  # CuPy's sort is stable

    def sweep(self, block: cp.ndarray, kind: ScoreKind, lam: float, g: np.ndarray) -> ColumnStats:
        if not self.uses_kernel(block):
            return super().sweep(block, kind, lam, g)
        with block.device:
            colsum = _kernel_colsum(block, kind, lam, g).get()
        colmax = np.full_like(colsum, -np.inf)
        if needs_exact_colmax(colsum, g):  # a column sum underflowed: the exact maxima
            colmax = super().sweep(block, kind, lam, g).colmax
        return ColumnStats(colsum, colmax)

    def to_numpy(self, array: Any) -> np.ndarray:
        return array.get() if isinstance(array, cp.ndarray) else np.asarray(array)

    def from_numpy(self, array: np.ndarray, like: Any) -> cp.ndarray:
        with like.device if isinstance(like, cp.ndarray) else cp.cuda.Device():
            return cp.asarray(array)

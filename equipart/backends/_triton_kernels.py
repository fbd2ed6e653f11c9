"""Triton kernels of the torch backend: the fused Sinkhorn sweep in one read of the scores.

Imported only by ``equipart.backends.torch`` and only when Triton imports; nothing here
runs unless a CUDA tensor (or, under ``TRITON_INTERPRET=1``, a CPU tensor in the tests) is
passed.

The sweep kernel (see ``equipart.backends.base`` for the maths) runs a persistent grid of
P programs. Program p walks the row tiles p, p + P, p + 2P, ... of BLOCK_M rows each; a
tile holds BLOCK_M whole rows (BLOCK_K = next power of two >= K columns, padding masked),
so every element of L is loaded from memory exactly once per sweep and the row maximum,
row sum and normalised Q are all formed in registers. Working in base 2,

    z2_ij = s * L_ij + g2_j          s = lam * log2(e), g2 = g * log2(e)  (L_ij = log2 x_ij
                                     for probabilities, s = lam then)
    v2_ij = z2_ij - max_k z2_ik,     e_ij = 2^v2_ij,   Q_ij = e_ij / sum_k e_ik,

the program accumulates colsum_j += Q_ij and colmax_j = max(colmax_j, v2_ij) over its
rows in float32 registers, and writes one row of partials (colsum, colmax * ln 2) to a
(P, K) buffer at the end. The caller merges the P partials in a fixed order (a float64
sum over the program axis, a max), so a sweep is deterministic for a given grid: no
atomics. Scores are read in their stored precision (float32, bfloat16, float16) and
converted to float32 in registers; nothing touches the tensor cores, so no TF32 anywhere.

Rounding: each program sums about N / P rows of Q (each <= 1) in float32; the relative
error of a column mass is about sqrt(N / P) * 2^-24 in practice (~4e-6 at ImageNet scale
with P = 264), far inside the solver's default tolerance of 1e-3.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

__all__ = ["MAX_BLOCK_K", "SweepConfig", "sweep_config", "sweep_partials"]

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
# Largest padded row the one-read kernel holds in registers (BLOCK_M * BLOCK_K values per
# program); wider rows go to the blockwise torch path.
MAX_BLOCK_K = 16384
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _sweep_kernel(
    x_ptr,
    g2_ptr,
    sum_ptr,
    max_ptr,
    n_rows,
    n_labels,
    stride_row,
    stride_col,
    scale,
    n_programs,
    tiles_per_program,
    IS_PROBS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)
    col_ok = cols < n_labels
    # padded columns carry g2 = -inf, so they never win a max and exponentiate to 0
    g2 = tl.load(g2_ptr + cols, mask=col_ok, other=float("-inf"))
    col_offsets = cols.to(tl.int64) * stride_col
    acc_sum = tl.zeros([BLOCK_K], dtype=tl.float32)
    acc_max = tl.full([BLOCK_K], float("-inf"), dtype=tl.float32)
    for step in range(tiles_per_program):
        # tiles past the end are fully masked and add nothing
        rows = (pid + step * n_programs) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        ptrs = x_ptr + rows.to(tl.int64)[:, None] * stride_row + col_offsets[None, :]
        # padding reads 1 (log 1 = 0): padded rows stay finite and are weighted out below
        x = tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=1.0).to(tl.float32)
        if IS_PROBS:
            x = tl.log2(x)
        z = x * scale + g2[None, :]
        row_max = tl.max(z, axis=1)
        v = z - row_max[:, None]
        e = tl.exp2(v)
        inv_sum = tl.where(row_ok, 1.0 / tl.sum(e, axis=1), 0.0)
        acc_sum += tl.sum(e * inv_sum[:, None], axis=0)
        v_rows = tl.where(row_ok[:, None], v, float("-inf"))
        acc_max = tl.maximum(acc_max, tl.max(v_rows, axis=0))
    out = pid.to(tl.int64) * n_labels + cols
    tl.store(sum_ptr + out, acc_sum, mask=col_ok)
    tl.store(max_ptr + out, acc_max * 0.6931471805599453, mask=col_ok)


class SweepConfig:
    """Tile shape and launch parameters of the sweep kernel for one (K, dtype)."""

    __slots__ = ("block_m", "block_k", "num_warps", "programs_per_sm")

    def __init__(self, block_m: int, block_k: int, num_warps: int, programs_per_sm: int):
        self.block_m = block_m
        self.block_k = block_k
        self.num_warps = num_warps
        self.programs_per_sm = programs_per_sm

    def __repr__(self) -> str:
        return (
            f"SweepConfig(block_m={self.block_m}, block_k={self.block_k}, "
            f"num_warps={self.num_warps}, programs_per_sm={self.programs_per_sm})"
        )


def sweep_config(n_labels: int) -> SweepConfig | None:
    """The default tile for K labels (about 8192 values per tile), None if K is too wide."""
    block_k = triton.next_power_of_2(max(n_labels, 16))
    if block_k > MAX_BLOCK_K:
        return None
    block_m = max(1, min(16, 8192 // block_k))
    num_warps = 4 if block_k <= 1024 else 8 if block_k <= 4096 else 16
    return SweepConfig(block_m, block_k, num_warps, programs_per_sm=2)


def _n_programs(x: torch.Tensor, n_tiles: int, config: SweepConfig) -> int:
    if x.is_cuda:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    else:  # the Triton interpreter (tests): a few programs exercise the grid stride
        sms = 2
    return max(1, min(n_tiles, sms * config.programs_per_sm))


def sweep_partials(
    x: torch.Tensor,
    g: torch.Tensor,
    lam: float,
    is_probs: bool,
    config: SweepConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Column statistics of one sweep over the (n, K) tensor ``x``.

    ``g`` is the column dual as a float32 tensor on ``x``'s device. Returns
    (colsum float64 (K,), colmax float32 (K,)) on that device, merged from the
    per-program partials in a fixed order.
    """
    n_rows, n_labels = x.shape
    config = config or sweep_config(n_labels)
    if config is None:
        raise ValueError(f"scores: K={n_labels} exceeds the kernel's {MAX_BLOCK_K} columns")
    n_tiles = triton.cdiv(n_rows, config.block_m)
    n_programs = _n_programs(x, n_tiles, config)
    sums = torch.empty((n_programs, n_labels), dtype=torch.float32, device=x.device)
    maxes = torch.empty((n_programs, n_labels), dtype=torch.float32, device=x.device)
    g2 = g * LOG2E
    scale = float(lam) if is_probs else float(lam) * LOG2E
    _sweep_kernel[(n_programs,)](
        x,
        g2,
        sums,
        maxes,
        n_rows,
        n_labels,
        x.stride(0),
        x.stride(1),
        scale,
        n_programs,
        triton.cdiv(n_tiles, n_programs),
        IS_PROBS=is_probs,
        BLOCK_M=config.block_m,
        BLOCK_K=config.block_k,
        num_warps=config.num_warps,
    )
    return sums.sum(dim=0, dtype=torch.float64), maxes.amax(dim=0)

"""Triton kernels of the torch backend: the fused Sinkhorn sweep in one read of the scores.

Imported only by ``equipart.backends.torch`` and only when Triton imports; nothing here
runs unless a CUDA tensor (or, under ``TRITON_INTERPRET=1``, a CPU tensor in the tests) is
passed.

The sweep kernel (see ``equipart.backends.base`` for the maths) runs a persistent grid of
P programs. Program p walks the row tiles p, p + P, p + 2P, ... of BLOCK_M rows each; a
tile holds BLOCK_M whole rows (padding masked), so every element of L is loaded from
memory exactly once per sweep and the row maximum, row sum and normalised Q are all formed
in registers. Working in base 2,

    z2_ij = s * L_ij + g_j log2(e)   s = lam * log2(e)  (L_ij = log2 x_ij for
                                     probabilities, s = lam then)
    v2_ij = z2_ij - max_k z2_ik,     e_ij = 2^v2_ij,   Q_ij = e_ij / sum_k e_ik,

the program accumulates colsum_j += Q_ij over its rows in float32 registers and writes one
row of partials to a (P, K) buffer at the end. The caller merges the P partials in a fixed
order (a float64 sum over the program axis), so a sweep is deterministic for a given grid:
no atomics. Scores are read in their stored precision (float32, bfloat16, float16) and
converted to float32 in registers; nothing touches the tensor cores, so no TF32 anywhere.

The column maximum colmax_j = max_i v_ij is left out of the sweep unless asked for
(``with_max``): the driver reads it only where a column sum underflowed to exactly 0
(``ColumnStats``), which the caller sees on the host. Without it each element costs one
exp2 and no max, and the row stays one set of registers.

Variants of the same maths, chosen by ``SweepConfig.variant``:

* ``"tile"``: the loop above as written, always with the column maximum. Column masks and row
  strides are opaque to the compiler, so every element is a separate 4- or 2-byte load,
  and a tile is loaded only after the previous one is reduced.
* ``"pipe"``: the same loop with 16-byte loads (the row stride and K are passed with the
  alignment they provably have, so the compiler may vectorise) and, with ``prefetch``,
  the next tile's load issued before the current tile is reduced (two tiles in registers;
  the loads are in flight during the two block-wide reductions and the exp2 pass).
  Padded rows are weighted out through their row maximum and row weight (per-row
  scalars), not per element.
* ``"async"``: the ``"pipe"`` loop without the register prefetch, handed to Triton's
  software pipeliner (``tl.range(num_stages=S)``): tiles go through shared memory with
  asynchronous copies, S - 1 tiles ahead.
* ``"split"``: the ``"pipe"`` + prefetch loop (or, with ``num_stages`` >= 2, the
  ``"async"`` one) with each row held as cdiv(K, C) <= 4 chunks of C = ``block_k`` lanes
  (3 x 1024 = 3072 lanes for K = 3000 instead of 4096).
  The chunks share one layout, so the row max and row sum combine element-wise across
  chunks before one block-wide reduction each over C lanes.

Column partials stay in registers across the whole persistent loop in every variant and
are written once per program.

Rounding: each program sums about N / P rows of Q (each <= 1) in float32; the relative
error of a column mass is about sqrt(N / P) * 2^-24 in practice (~4e-6 at ImageNet scale
with P = 396), far inside the solver's default tolerance of 1e-3.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = [
    "MAX_BLOCK_K",
    "TUNED_CONFIGS",
    "VARIANTS",
    "SweepConfig",
    "sweep_config",
    "sweep_stats",
]

if int(triton.__version__.split(".")[0]) < 3:  # tl.range(num_stages=...) and the layouts used
    raise ImportError(f"the fused sweep needs Triton >= 3.0, found {triton.__version__}")

LOG2E = math.log2(math.e)
# Largest padded row the one-read kernel holds in registers (BLOCK_M * BLOCK_K values per
# program); wider rows go to the blockwise torch path.
MAX_BLOCK_K = 16384
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _sweep_kernel(
    x_ptr,
    g_ptr,
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
    """The reference loop (``"tile"``): column sums and column maxima (in natural units)."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)
    col_ok = cols < n_labels
    # padded columns carry g2 = -inf, so they never win a max and exponentiate to 0
    g2 = tl.load(g_ptr + cols, mask=col_ok, other=float("-inf")) * 1.4426950408889634
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


@triton.jit
def _tile_stats(x, g2, row_ok, scale, acc_sum, IS_PROBS: tl.constexpr):
    """Fold one (BLOCK_M, BLOCK_K) tile of scores into the column sums.

    Padded rows (``row_ok`` false) get row maximum +inf, so every e is 0 and their row
    weight is 0: per-row scalars only, no per-element masking.
    """
    x = x.to(tl.float32)
    if IS_PROBS:
        x = tl.log2(x)
    z = x * scale + g2[None, :]
    row_max = tl.where(row_ok, tl.max(z, axis=1), float("inf"))
    e = tl.exp2(z - row_max[:, None])
    inv_sum = tl.where(row_ok, 1.0 / tl.sum(e, axis=1), 0.0)
    return acc_sum + tl.sum(e * inv_sum[:, None], axis=0)


@triton.jit
def _load_tile(x_ptr, rows, row_ok, col_offsets, col_ok, stride_row, ROW_ALIGN: tl.constexpr):
    # every row offset is a multiple of ROW_ALIGN elements (the host checked the stride)
    offsets = tl.multiple_of(rows.to(tl.int64) * stride_row, ROW_ALIGN)
    ptrs = x_ptr + offsets[:, None] + col_offsets[None, :]
    # padding reads 0, which is what an asynchronous copy's zero-fill gives, so masked
    # lanes cost no select: padded columns have g2 = -inf, so z = -inf there (for
    # probabilities too: log2 0 = -inf), and padded rows are weighted out by their row
    # maximum (+inf) and row weight (0) in the callers
    return tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)


@triton.jit
def _sweep_kernel_pipe(
    x_ptr,
    g_ptr,
    sum_ptr,
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
    ROW_ALIGN: tl.constexpr,
    COL_ALIGN: tl.constexpr,
    PREFETCH: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)
    # K is a multiple of COL_ALIGN, so comparing whole groups of COL_ALIGN columns is the
    # same mask as cols < K, constant over each group: the compiler can vectorise the load
    col_ok = (cols // COL_ALIGN) < (n_labels // COL_ALIGN)
    g2 = tl.load(g_ptr + cols, mask=cols < n_labels, other=float("-inf")) * 1.4426950408889634
    col_offsets = cols.to(tl.int64) * stride_col
    acc_sum = tl.zeros([BLOCK_K], dtype=tl.float32)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    if PREFETCH:
        x = _load_tile(x_ptr, rows, row_ok, col_offsets, col_ok, stride_row, ROW_ALIGN)
    # tiles past the end (and the prefetch after the last tile) are fully masked: no reads
    for _ in tl.range(tiles_per_program, num_stages=NUM_STAGES):
        next_rows = rows + n_programs * BLOCK_M
        next_ok = next_rows < n_rows
        if PREFETCH:
            x_next = _load_tile(
                x_ptr, next_rows, next_ok, col_offsets, col_ok, stride_row, ROW_ALIGN
            )
            acc_sum = _tile_stats(x, g2, row_ok, scale, acc_sum, IS_PROBS)
            x = x_next
        else:
            x = _load_tile(x_ptr, rows, row_ok, col_offsets, col_ok, stride_row, ROW_ALIGN)
            acc_sum = _tile_stats(x, g2, row_ok, scale, acc_sum, IS_PROBS)
        rows = next_rows
        row_ok = next_ok
    out = pid.to(tl.int64) * n_labels + cols
    tl.store(sum_ptr + out, acc_sum, mask=cols < n_labels)


@triton.jit
def _load_chunk(
    x_ptr,
    row_offsets,
    row_ok,
    n_labels,
    stride_col,
    C: tl.constexpr,
    CHUNK: tl.constexpr,
    COL_ALIGN: tl.constexpr,
):
    """Columns [C * CHUNK, (C + 1) * CHUNK) of a tile (``_load_tile``: masks, padding)."""
    cols = C * CHUNK + tl.arange(0, CHUNK)
    col_ok = (cols // COL_ALIGN) < (n_labels // COL_ALIGN)
    ptrs = x_ptr + row_offsets[:, None] + (cols.to(tl.int64) * stride_col)[None, :]
    return tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)


@triton.jit
def _load_chunks(
    x_ptr,
    rows,
    row_ok,
    n_labels,
    stride_row,
    stride_col,
    CHUNK: tl.constexpr,
    N_CHUNKS: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    COL_ALIGN: tl.constexpr,
):
    """The N_CHUNKS (<= 4) column chunks of one row tile; absent chunks repeat chunk 0."""
    row_offsets = tl.multiple_of(rows.to(tl.int64) * stride_row, ROW_ALIGN)
    x0 = _load_chunk(x_ptr, row_offsets, row_ok, n_labels, stride_col, 0, CHUNK, COL_ALIGN)
    x1 = x0
    x2 = x0
    x3 = x0
    if N_CHUNKS > 1:
        x1 = _load_chunk(x_ptr, row_offsets, row_ok, n_labels, stride_col, 1, CHUNK, COL_ALIGN)
    if N_CHUNKS > 2:
        x2 = _load_chunk(x_ptr, row_offsets, row_ok, n_labels, stride_col, 2, CHUNK, COL_ALIGN)
    if N_CHUNKS > 3:
        x3 = _load_chunk(x_ptr, row_offsets, row_ok, n_labels, stride_col, 3, CHUNK, COL_ALIGN)
    return x0, x1, x2, x3


@triton.jit
def _chunk_z(x, g2, scale, IS_PROBS: tl.constexpr):
    x = x.to(tl.float32)
    if IS_PROBS:
        x = tl.log2(x)
    return x * scale + g2[None, :]


@triton.jit
def _chunk_exp(z, row_max, acc_max, WITH_MAX: tl.constexpr):
    """e = 2^(z - rowmax) of one chunk; with WITH_MAX, the chunk's column maxima of
    z - rowmax are folded into ``acc_max`` (padded rows give -inf: they never count)."""
    v = z - row_max[:, None]
    if WITH_MAX:
        acc_max = tl.maximum(acc_max, tl.max(v, axis=0))
    return tl.exp2(v), acc_max


@triton.jit
def _split_stats(
    x0,
    x1,
    x2,
    x3,
    g0,
    g1,
    g2,
    g3,
    row_ok,
    scale,
    s0,
    s1,
    s2,
    s3,
    m0,
    m1,
    m2,
    m3,
    N_CHUNKS: tl.constexpr,
    IS_PROBS: tl.constexpr,
    WITH_MAX: tl.constexpr,
):
    """Fold one tile held as N_CHUNKS column chunks into the per-chunk column sums (and,
    with WITH_MAX, column maxima).

    The chunks share one layout, so the row maximum and row sum are first combined
    element-wise across chunks (in-thread) and then reduced once over CHUNK lanes: two
    block-wide reductions per row, as in ``_tile_stats``, over fewer padded lanes. Each
    element is exponentiated once; e replaces z in the same registers.
    """
    e0 = _chunk_z(x0, g0, scale, IS_PROBS)
    e1 = e0
    e2 = e0
    e3 = e0
    z_max = e0
    if N_CHUNKS > 1:
        e1 = _chunk_z(x1, g1, scale, IS_PROBS)
        z_max = tl.maximum(z_max, e1)
    if N_CHUNKS > 2:
        e2 = _chunk_z(x2, g2, scale, IS_PROBS)
        z_max = tl.maximum(z_max, e2)
    if N_CHUNKS > 3:
        e3 = _chunk_z(x3, g3, scale, IS_PROBS)
        z_max = tl.maximum(z_max, e3)
    row_max = tl.where(row_ok, tl.max(z_max, axis=1), float("inf"))
    e0, m0 = _chunk_exp(e0, row_max, m0, WITH_MAX)
    e_sum = e0
    if N_CHUNKS > 1:
        e1, m1 = _chunk_exp(e1, row_max, m1, WITH_MAX)
        e_sum += e1
    if N_CHUNKS > 2:
        e2, m2 = _chunk_exp(e2, row_max, m2, WITH_MAX)
        e_sum += e2
    if N_CHUNKS > 3:
        e3, m3 = _chunk_exp(e3, row_max, m3, WITH_MAX)
        e_sum += e3
    inv_sum = tl.where(row_ok, 1.0 / tl.sum(e_sum, axis=1), 0.0)[:, None]
    s0 += tl.sum(e0 * inv_sum, axis=0)
    if N_CHUNKS > 1:
        s1 += tl.sum(e1 * inv_sum, axis=0)
    if N_CHUNKS > 2:
        s2 += tl.sum(e2 * inv_sum, axis=0)
    if N_CHUNKS > 3:
        s3 += tl.sum(e3 * inv_sum, axis=0)
    return s0, s1, s2, s3, m0, m1, m2, m3


@triton.jit
def _chunk_dual(g_ptr, n_labels, C: tl.constexpr, CHUNK: tl.constexpr):
    """g2 = g log2(e) for columns [C * CHUNK, (C + 1) * CHUNK); padding gets -inf."""
    cols = C * CHUNK + tl.arange(0, CHUNK)
    return tl.load(g_ptr + cols, mask=cols < n_labels, other=float("-inf")) * 1.4426950408889634


@triton.jit
def _store_chunk(
    sum_ptr,
    max_ptr,
    out_row,
    n_labels,
    acc_sum,
    acc_max,
    C: tl.constexpr,
    CHUNK: tl.constexpr,
    WITH_MAX: tl.constexpr,
):
    cols = C * CHUNK + tl.arange(0, CHUNK)
    tl.store(sum_ptr + out_row + cols, acc_sum, mask=cols < n_labels)
    if WITH_MAX:  # in natural units
        tl.store(max_ptr + out_row + cols, acc_max * 0.6931471805599453, mask=cols < n_labels)


@triton.jit
def _sweep_kernel_split(
    x_ptr,
    g_ptr,
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
    CHUNK: tl.constexpr,
    N_CHUNKS: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    COL_ALIGN: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    WITH_MAX: tl.constexpr,
):
    """The ``"pipe"`` loop with each row held as N_CHUNKS chunks of CHUNK lanes.

    K is covered by N_CHUNKS * CHUNK >= K lanes (3 x 1024 = 3072 for K = 3000 instead of
    4096). Chunks past N_CHUNKS only repeat chunk 0 and are never used (constexpr branches).
    NUM_STAGES = 1 prefetches the next tile into registers (two tiles in registers);
    NUM_STAGES = S >= 2 leaves the loads to Triton's software pipeliner instead (tiles in
    shared memory, S - 1 ahead): more bytes in flight per multiprocessor than registers
    allow, which a bf16 row (half the bytes per register of fp32) needs. WITH_MAX also
    accumulates and writes the column maxima (``max_ptr``; unused otherwise).
    """
    pid = tl.program_id(0)
    g0 = _chunk_dual(g_ptr, n_labels, 0, CHUNK)
    s0 = tl.zeros([CHUNK], dtype=tl.float32)
    m0 = tl.full([CHUNK], float("-inf"), dtype=tl.float32)
    # absent chunks carry chunk 0's values, never read: the compiler drops them
    g1 = g0
    g2 = g0
    g3 = g0
    s1 = s0
    s2 = s0
    s3 = s0
    m1 = m0
    m2 = m0
    m3 = m0
    if N_CHUNKS > 1:
        g1 = _chunk_dual(g_ptr, n_labels, 1, CHUNK)
    if N_CHUNKS > 2:
        g2 = _chunk_dual(g_ptr, n_labels, 2, CHUNK)
    if N_CHUNKS > 3:
        g3 = _chunk_dual(g_ptr, n_labels, 3, CHUNK)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    if NUM_STAGES == 1:  # register prefetch: the next tile is loaded before this one is used
        x0, x1, x2, x3 = _load_chunks(
            x_ptr, rows, row_ok, n_labels, stride_row, stride_col, CHUNK, N_CHUNKS, ROW_ALIGN,
            COL_ALIGN,
        )  # fmt: skip
    # tiles past the end (and the prefetch after the last tile) are fully masked: no reads
    for _ in tl.range(tiles_per_program, num_stages=NUM_STAGES):
        next_rows = rows + n_programs * BLOCK_M
        next_ok = next_rows < n_rows
        if NUM_STAGES == 1:
            y0, y1, y2, y3 = _load_chunks(
                x_ptr, next_rows, next_ok, n_labels, stride_row, stride_col, CHUNK, N_CHUNKS,
                ROW_ALIGN, COL_ALIGN,
            )  # fmt: skip
        else:  # Triton's pipeliner stages this load through shared memory, S - 1 tiles ahead
            x0, x1, x2, x3 = _load_chunks(
                x_ptr, rows, row_ok, n_labels, stride_row, stride_col, CHUNK, N_CHUNKS,
                ROW_ALIGN, COL_ALIGN,
            )  # fmt: skip
        s0, s1, s2, s3, m0, m1, m2, m3 = _split_stats(
            x0, x1, x2, x3, g0, g1, g2, g3, row_ok, scale, s0, s1, s2, s3, m0, m1, m2, m3,
            N_CHUNKS, IS_PROBS, WITH_MAX,
        )  # fmt: skip
        if NUM_STAGES == 1:
            x0 = y0
            x1 = y1
            x2 = y2
            x3 = y3
        rows = next_rows
        row_ok = next_ok
    out_row = pid.to(tl.int64) * n_labels
    _store_chunk(sum_ptr, max_ptr, out_row, n_labels, s0, m0, 0, CHUNK, WITH_MAX)
    if N_CHUNKS > 1:
        _store_chunk(sum_ptr, max_ptr, out_row, n_labels, s1, m1, 1, CHUNK, WITH_MAX)
    if N_CHUNKS > 2:
        _store_chunk(sum_ptr, max_ptr, out_row, n_labels, s2, m2, 2, CHUNK, WITH_MAX)
    if N_CHUNKS > 3:
        _store_chunk(sum_ptr, max_ptr, out_row, n_labels, s3, m3, 3, CHUNK, WITH_MAX)


VARIANTS = ("tile", "pipe", "async", "split")
MAX_CHUNKS = 4


@dataclass(frozen=True)
class SweepConfig:
    """Tile shape, kernel variant and launch parameters of the sweep for one (K, dtype).

    ``block_m`` rows of ``block_k`` (a power of two >= K) columns per tile; ``num_warps``
    warps and ``programs_per_sm`` x (number of SMs) programs; ``variant`` one of
    ``VARIANTS``; ``prefetch`` (``"pipe"`` only) loads the next tile before reducing the
    current one; ``num_stages`` (``"async"``: >= 2; ``"split"``: 1 or more) is the
    software-pipeline depth.
    For ``"split"``, ``block_k`` is the chunk width: a row is held as cdiv(K, block_k)
    <= ``MAX_CHUNKS`` chunks; with ``num_stages`` 1 it prefetches into registers
    (``prefetch`` is left False), with more it is software-pipelined.
    """

    block_m: int
    block_k: int
    num_warps: int
    programs_per_sm: int
    variant: str = "tile"
    prefetch: bool = False
    num_stages: int = 1

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {self.variant!r}")
        for name in ("block_m", "block_k", "num_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"{name}: expected a power of two, got {value}")
        if self.programs_per_sm < 1:
            raise ValueError(f"programs_per_sm: expected >= 1, got {self.programs_per_sm}")
        if self.prefetch and self.variant != "pipe":
            raise ValueError("prefetch: only the 'pipe' variant prefetches")
        if self.variant == "async" and self.num_stages < 2:
            raise ValueError("num_stages: the 'async' variant pipelines, so >= 2")
        if self.variant in ("tile", "pipe") and self.num_stages != 1:
            raise ValueError(f"num_stages: 1 for the {self.variant!r} variant")


# The defaults, keyed by (scores dtype, BLOCK_K); other keys use the rule in sweep_config.
# Chosen by benchmarks/gpu_check.py's tuning stage on NVIDIA H200 cards at K = 3000
# (BLOCK_K = 4096), N = 1,281,167, lam = 25 (benchmarks/results/gpu_nvidia_h200.json):
# the 'split' variant, 3 chunks of 1024 lanes; fp32 with register prefetch, 3.41-3.51 ms
# = 0.98-0.99x the read pass; bf16 software-pipelined through shared memory, 2.22-2.57 ms
# = 1.21-1.38x (2.42-2.44 ms with register prefetch in the same runs). gpu_check.py
# prints the entries to put here.
TUNED_CONFIGS: dict[tuple[torch.dtype, int], SweepConfig] = {
    (torch.float32, 4096): SweepConfig(2, 1024, 4, 3, variant="split"),
    (torch.bfloat16, 4096): SweepConfig(2, 1024, 4, 3, variant="split", num_stages=3),
}


def sweep_config(n_labels: int, dtype: torch.dtype | None = None) -> SweepConfig | None:
    """The default config for K labels of scores in ``dtype``, None if K is too wide.

    ``TUNED_CONFIGS`` where it has an entry, otherwise the ``"pipe"`` variant with
    prefetch and about 8192 values per tile (about 1.6x faster than ``"tile"`` for both
    dtypes at K = 3000 on the H200: ``benchmarks/results/gpu_nvidia_h200.json``).
    """
    block_k = triton.next_power_of_2(max(n_labels, 16))
    if block_k > MAX_BLOCK_K:
        return None
    if (dtype, block_k) in TUNED_CONFIGS:
        return TUNED_CONFIGS[dtype, block_k]
    return _generic_config(block_k, "pipe")


def _generic_config(block_k: int, variant: str) -> SweepConfig:
    block_m = max(1, min(16, 8192 // block_k))
    num_warps = 4 if block_k <= 1024 else 8 if block_k <= 4096 else 16
    return SweepConfig(block_m, block_k, num_warps, 2, variant, prefetch=variant == "pipe")


def _n_programs(x: torch.Tensor, n_tiles: int, config: SweepConfig) -> int:
    if x.is_cuda:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    else:  # the Triton interpreter (tests): a few programs exercise the grid stride
        sms = 2
    return max(1, min(n_tiles, sms * config.programs_per_sm))


def _check_config(n_labels: int, config: SweepConfig) -> None:
    n_chunks = triton.cdiv(n_labels, config.block_k)
    if config.variant == "split" and n_chunks > MAX_CHUNKS:
        raise ValueError(
            f"config: block_k={config.block_k} splits K={n_labels} into {n_chunks} chunks;"
            f" the 'split' variant takes at most {MAX_CHUNKS}"
        )
    if config.variant != "split" and config.block_k < n_labels:
        raise ValueError(f"config: block_k={config.block_k} is narrower than K={n_labels}")


def sweep_stats(
    x: torch.Tensor,
    g: torch.Tensor,
    lam: float,
    is_probs: bool,
    config: SweepConfig | None = None,
    with_max: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Column statistics of one sweep over the (n, K) tensor ``x``.

    ``g`` is the column dual as a float32 tensor on ``x``'s device (natural units).
    Returns (colsum float64 (K,), colmax float32 (K,) or None) on that device: the column
    maxima of z - rowmax (natural units) only ``with_max``, from the ``"split"`` kernel
    when that is the config's variant and from the ``"tile"`` kernel otherwise. The
    per-program partials are merged in a fixed order, so the result is deterministic for
    a given config and device.
    """
    n_rows, n_labels = x.shape
    config = config or sweep_config(n_labels, x.dtype)
    if config is None:
        raise ValueError(f"scores: K={n_labels} exceeds the kernel's {MAX_BLOCK_K} columns")
    _check_config(n_labels, config)
    if with_max and config.variant not in ("split", "tile"):
        config = _generic_config(triton.next_power_of_2(max(n_labels, 16)), "tile")
    elif with_max and config.variant == "split" and config.programs_per_sm > 1:
        # the maxima take registers (ptxas, sm_90, K = 3000, 2 rows / 4 warps: bf16 126 ->
        # 168, fp32 168 -> 248 per thread), so one program fewer per SM stays resident
        config = dataclasses.replace(config, programs_per_sm=config.programs_per_sm - 1)
    n_tiles = triton.cdiv(n_rows, config.block_m)
    n_programs = _n_programs(x, n_tiles, config)
    sums = torch.empty((n_programs, n_labels), dtype=torch.float32, device=x.device)
    # the tile kernel always writes maxima; the split kernel only with_max
    maxes = torch.empty_like(sums) if with_max or config.variant == "tile" else sums
    scale = float(lam) if is_probs else float(lam) * LOG2E
    grid = (n_programs,)
    shape_args = (
        n_rows,
        n_labels,
        x.stride(0),
        x.stride(1),
        scale,
        n_programs,
        triton.cdiv(n_tiles, n_programs),
    )
    # gcd with 16 is the largest power of two <= 16 dividing each (0 -> 16)
    alignment = dict(ROW_ALIGN=math.gcd(x.stride(0), 16), COL_ALIGN=math.gcd(n_labels, 16))
    common = dict(IS_PROBS=is_probs, BLOCK_M=config.block_m, num_warps=config.num_warps)
    if config.variant == "split":
        _sweep_kernel_split[grid](
            x,
            g,
            sums,
            maxes,
            *shape_args,
            **common,
            **alignment,
            CHUNK=config.block_k,
            N_CHUNKS=triton.cdiv(n_labels, config.block_k),
            NUM_STAGES=config.num_stages,
            WITH_MAX=with_max,
        )
    elif config.variant == "tile":
        _sweep_kernel[grid](x, g, sums, maxes, *shape_args, **common, BLOCK_K=config.block_k)
    else:
        _sweep_kernel_pipe[grid](
            x,
            g,
            sums,
            *shape_args,
            **common,
            **alignment,
            BLOCK_K=config.block_k,
            PREFETCH=config.prefetch,
            NUM_STAGES=config.num_stages,
        )
    colsum = sums.sum(dim=0, dtype=torch.float64)
    return colsum, maxes.amax(dim=0) if with_max else None

"""The torch backend: torch tensors on CPU and CUDA, results on the input's device.

Precision: float16, bfloat16 and float32 scores are read as stored and computed in
float32; float64 and integer scores in float64. Column statistics are accumulated in
float64 and cross to the host once per sweep, (K,) column sums from the Triton kernel and
(2, K) sums and maxima from the torch path (the driver's only view of the data);
everything N-sized (labels, codes, top-k candidates) stays on the input's device.

Two sweep strategies (``TorchBackend(kernel=...)``):

* ``"triton"``: the fused one-read kernel of ``equipart.backends._triton_kernels`` (CUDA
  tensors with float32/bfloat16/float16 scores and K <= 16384).
* ``"torch"``: pure torch, blockwise over rows (blocks of ``BLOCK_ELEMENTS`` on CPU,
  ``CUDA_BLOCK_ELEMENTS`` on CUDA), so the largest temporary is one block, never N x K.
  It reads each block a few times (max, exp, sums), which costs bandwidth on a GPU.

``"auto"`` (the registry's default) uses Triton where it applies on CUDA, and on the CPU
the Numba backend's kernels where Numba is installed (float16, float32 and float64 scores
they read through a NumPy view of the tensor's memory, without a copy, and return
tensors: the same results as ``NumbaBackend`` on ``tensor.numpy()``; the 200k x 1k demo
solves in 1.2 s this way against 25.6 s on the torch path, 2-core CPU,
benchmarks/results/memory_200k.json; bfloat16, which NumPy lacks, they read through an
int16 view of its bits, ``BFloat16Bits``, widening each value to float32 as they read it,
so results are those of ``NumbaBackend`` on ``tensor.float().numpy()``),
and the blockwise torch path otherwise (no Numba).
Inputs are detached and never modified; no GPU memory is touched unless a CUDA tensor is
passed. Nothing here uses matrix units, so TF32 never enters a reduction.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from importlib.util import find_spec
from typing import Any

import numpy as np
import torch

from .base import (
    Backend,
    BlockCheck,
    ColumnStats,
    ScoreKind,
    check_label_range,
    needs_exact_colmax,
)

try:
    from . import _triton_kernels
except ImportError:  # no Triton (CPU-only torch builds): the blockwise torch path only
    _triton_kernels = None

__all__ = ["TorchBackend", "compute_dtype", "triton_available"]

BLOCK_ELEMENTS = 1 << 19
CUDA_BLOCK_ELEMENTS = 1 << 24  # 64 MB of float32 per temporary: well under 1 GiB in all
KERNELS = ("auto", "triton", "torch")
MAX_GRAPHS = 8  # captured sweeps per solve (heads x blocks of one lam stage); more stay eager


# CPU dtypes that the Numba kernels read: through a NumPy view, bfloat16 (which NumPy
# lacks) through an int16 view of its bits (``BFloat16Bits``)
HOST_DTYPES = (torch.float16, torch.float32, torch.float64, torch.bfloat16)
# dtypes with torch's reductions; the others (float8 kinds, uint16 to uint64) are refused
# naming scores, and complex and bool ones by the shared dtype check
READABLE_DTYPES = frozenset(
    (*HOST_DTYPES, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    + (torch.bool, torch.complex64, torch.complex128)
)


def _numba_backend() -> Backend | None:
    """The Numba backend for CPU tensors, or None (with a warning where Numba is installed
    but cannot run: no writable kernel cache, ``NUMBA_DISABLE_JIT=1``, ...)."""
    if find_spec("numba") is None:
        return None
    try:
        from .numba import NumbaBackend

        return NumbaBackend()
    except Exception as exc:  # any failure of the optional fast path: the torch path
        warnings.warn(
            f"the Numba kernels for CPU tensors are unavailable ({type(exc).__name__}: "
            f"{exc}); the torch backend uses its blockwise torch path",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def triton_available() -> bool:
    """Whether the fused Triton sweep can be used (Triton imports)."""
    return _triton_kernels is not None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half, bfloat16 and single precision, float64 for everything else."""
    if dtype in (torch.float16, torch.bfloat16, torch.float32):
        return torch.float32
    return torch.float64


def _row_blocks(x: torch.Tensor) -> Iterator[slice]:
    n_rows, n_labels = x.shape
    budget = CUDA_BLOCK_ELEMENTS if x.is_cuda else BLOCK_ELEMENTS
    step = max(1, budget // max(n_labels, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _dual(g: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """g in the compute precision on ``device``: rounded on the host, one small copy."""
    host = np.asarray(g, dtype=np.float32 if dtype == torch.float32 else np.float64)
    return torch.from_numpy(host).to(device)


def _scaled(x: torch.Tensor, kind: ScoreKind, lam: float, g: torch.Tensor) -> torch.Tensor:
    """A new block z = lam * L + g in the compute precision (``x`` is not modified)."""
    dtype = compute_dtype(x.dtype)
    z = torch.log(x.to(dtype)) if kind == "probs" else x.to(dtype) * lam
    if kind == "probs":
        z *= lam
    z += g
    return z


def _normalise_rows(z: torch.Tensor) -> torch.Tensor:
    """In place: v = z - rowmax(z), then Q = exp(v) / rowsum(exp(v)). Returns v's colmax.

    exp of v below ``log(tiny) + 1`` (tiny: the smallest normal number) is flushed to
    exactly 0, where the NumPy backend's exp gives at most a subnormal: on x86 CPUs torch's
    exp takes a slow path for subnormal results (about 10x slower on blocks where most
    entries underflow, as at large lam). The column maxima, taken before, keep the
    underflow guard of ``ColumnStats.log_mass``.
    """
    z -= z.amax(dim=1, keepdim=True)
    colmax = z.amax(dim=0)
    floor = math.log(torch.finfo(z.dtype).tiny) + 1.0
    keep = z >= floor
    z.clamp_(min=floor).exp_()
    z.mul_(keep)
    z /= z.sum(dim=1, keepdim=True)
    return colmax


class _CapturedSweep:
    """The Triton sweep of one fixed CUDA tensor at one lam, captured as a CUDA graph.

    g goes in and the column sums come out through fixed buffers (pinned on the host, so
    both copies are asynchronous): a sweep then costs the host one graph launch, two small
    copies and one synchronisation, instead of the Triton launcher's and torch's per-call
    Python work, during which the GPU would idle (54-73 us for ``sweep_stats`` on a 4-row
    tensor on the H200 machine: benchmarks/results/gpu_round_trip_nvidia_h200_run5 to
    _run8.json). The graph reads the tensor's memory at each replay, so it sees the tensor
    as it is then. Each graph keeps its scratch (the (P, K) float32 partials, 4.75 MB at
    K = 3000 and P = 396) in its own memory pool until the solve's backend is dropped.
    Sweeps that also compute the column maxima (after an underflow) are not captured.
    """

    def __init__(self, x: torch.Tensor, lam: float, is_probs: bool) -> None:
        n_labels = x.shape[1]
        self.g_host = torch.empty(n_labels, dtype=torch.float32, pin_memory=True)
        self.colsum_host = torch.empty(n_labels, dtype=torch.float64, pin_memory=True)
        self.g = torch.zeros(n_labels, dtype=torch.float32, device=x.device)
        self.graph = torch.cuda.CUDAGraph()
        # capture on a side stream, without torch.cuda.graph's synchronise / gc /
        # empty_cache; the kernel was compiled by an eager sweep of the same key before
        current = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            self.graph.capture_begin(capture_error_mode="thread_local")
            try:
                self.colsum = _triton_kernels.sweep_stats(x, self.g, lam, is_probs)[0]
            finally:
                self.graph.capture_end()
        current.wait_stream(side)

    def __call__(self, g: np.ndarray) -> np.ndarray:
        self.g_host.numpy()[:] = g  # rounded to float32, as the eager path does
        self.g.copy_(self.g_host, non_blocking=True)
        self.graph.replay()
        self.colsum_host.copy_(self.colsum, non_blocking=True)
        torch.cuda.current_stream(self.g.device).synchronize()
        return self.colsum_host.numpy().copy()


class TorchBackend(Backend):
    """torch tensors on any device; the fused Triton sweep on CUDA where available.

    ``for_solve`` returns a copy of this backend for one solve's loop, which keeps two
    kinds of state for that solve only: captured CUDA graphs of its sweeps (a CUDA tensor
    swept a second time with the same kind and lam replays one; ``capture_graphs=False``
    turns this off) and, once a column sum has underflowed, the column maxima computed in
    every later sweep of the solve instead of by a second pass.
    """

    name = "torch"

    def __init__(self, kernel: str = "auto", capture_graphs: bool = True) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
        if kernel == "triton" and not triton_available():
            raise ValueError("kernel: 'triton' needs Triton installed; use 'auto' or 'torch'")
        self.kernel = kernel
        self.capture_graphs = capture_graphs
        self._per_solve = False
        # (tensor, kind, lam) -> its captured sweep, None while seen once;
        # keys whose capture failed stay eager
        self._graphs: dict[tuple, _CapturedSweep | None] = {}
        self._failed: set[tuple] = set()
        self._with_max = False
        self._host: Backend | None = None  # the Numba backend, built at the first CPU tensor
        self._host_tried = kernel != "auto"

    def for_solve(self) -> TorchBackend:
        solve = copy.copy(self)  # subclasses and settings carry over
        solve._per_solve = True
        solve._graphs, solve._failed, solve._with_max = {}, set(), False
        if self._host is not None:  # its warm sweeps, for this solve only
            solve._host = self._host.for_solve()
        return solve

    def _host_view(self, block: torch.Tensor) -> Any:
        """A CPU block as the Numba kernels read it (a NumPy view; for bfloat16, a
        ``BFloat16Bits`` view of its bits), or None for the torch path."""
        if self._host_tried and self._host is None:
            return None
        if block.device.type != "cpu" or block.dtype not in HOST_DTYPES:
            return None
        if not self._host_tried:  # first CPU tensor: load Numba now (CUDA users never do)
            host = _numba_backend()
            self._host = host.for_solve() if host is not None and self._per_solve else host
            self._host_tried = True  # (after _host: a concurrent call sees None or both)
            if self._host is None:
                return None
        x = block.detach()
        if x.dtype == torch.bfloat16:  # NumPy has no bfloat16: its bits, widened by the kernels
            from .numba import BFloat16Bits

            return BFloat16Bits(x.view(torch.int16).numpy())
        return x.resolve_conj().resolve_neg().numpy()

    @staticmethod
    def accepts(scores: Any) -> bool:
        return isinstance(scores, torch.Tensor)

    def shape_dtype(self, scores: torch.Tensor) -> tuple[tuple[int, ...], str]:
        if scores.layout != torch.strided:
            raise TypeError(
                f"scores: {scores.layout} tensors are not supported; pass a dense tensor "
                "(scores.to_dense())"
            )
        if scores.dtype not in READABLE_DTYPES:  # torch has no reductions for these
            raise TypeError(
                f"scores: {scores.dtype} tensors are not supported (torch cannot reduce "
                "them); pass scores.float(), or scores.to(torch.int64) for unsigned integers"
            )
        return tuple(scores.shape), str(scores.dtype).removeprefix("torch.")

    def head(self, scores: torch.Tensor, index: int) -> torch.Tensor:
        return scores[index]

    def uses_triton(self, block: torch.Tensor) -> bool:
        """Whether ``sweep`` runs the fused Triton kernel on this block."""
        if self.kernel == "torch" or _triton_kernels is None:
            return False
        fits = (
            block.dtype in _triton_kernels.SUPPORTED_DTYPES
            and _triton_kernels.sweep_config(block.shape[1]) is not None
        )
        if self.kernel == "triton":  # forced (tests run it on CPU under TRITON_INTERPRET=1)
            return fits
        return fits and block.is_cuda

    def check(self, block: torch.Tensor, kind: ScoreKind) -> BlockCheck:
        if (view := self._host_view(block)) is not None:
            return self._host.check(view, kind)
        x_all = block.detach()
        lows, highs, lowest_bests, deviations = [], [], [], []
        support = torch.zeros(x_all.shape[1], dtype=torch.int64, device=x_all.device)
        for rows in _row_blocks(x_all):
            x = x_all[rows]
            lows.append(x.amin().to(torch.float64))
            row_max = x.amax(dim=1)
            highs.append(row_max.amax().to(torch.float64))
            lowest_bests.append(row_max.amin().to(torch.float64))
            if kind == "probs":
                sums = x.sum(dim=1, dtype=torch.float64)
                deviations.append((sums - 1.0).abs().amax())
                support += (x > 0).sum(dim=0)
        # amin / amax propagate NaN, and +inf is the maximum: no NaN or +inf iff both
        # extremes are numbers and the maximum is below +inf (-inf may be the minimum: an
        # impossible label). (torch.isfinite's block temporaries left 12 to 495 MiB more
        # resident after this check of the 200k x 1k demo, varying from run to run;
        # without them, 5 MiB in four runs.)
        low, high = torch.stack(lows).amin(), torch.stack(highs).amax()
        lowest_best = torch.stack(lowest_bests).amin()
        deviation = torch.stack(deviations).amax() if deviations else torch.zeros_like(low)
        host = torch.stack([low, deviation, high, lowest_best]).cpu().tolist()
        valid = not (math.isnan(host[0]) or math.isnan(host[2])) and host[2] < math.inf
        counts = support.cpu().numpy() if kind == "probs" else None
        if kind != "probs" and valid and host[0] == -math.inf:  # masked labels: a 2nd pass
            counts = sum(
                (x_all[rows] > -math.inf).sum(dim=0) for rows in _row_blocks(x_all)
            ).cpu().numpy()
        return BlockCheck(valid, *host[:3], counts, min_row_max=host[3])

    def sweep(self, block: torch.Tensor, kind: ScoreKind, lam: float, g: np.ndarray) -> ColumnStats:
        if (view := self._host_view(block)) is not None:
            return self._host.sweep(view, kind, lam, g)
        x_all = block.detach()
        if self.uses_triton(x_all):
            return self._triton_sweep(x_all, kind, lam, g)
        dtype = compute_dtype(x_all.dtype)
        g_t = _dual(g, dtype, x_all.device)
        colsum = torch.zeros(x_all.shape[1], dtype=torch.float64, device=x_all.device)
        colmax = torch.full((x_all.shape[1],), -torch.inf, dtype=dtype, device=x_all.device)
        for rows in _row_blocks(x_all):
            z = _scaled(x_all[rows], kind, lam, g_t)
            torch.maximum(colmax, _normalise_rows(z), out=colmax)
            colsum += z.sum(dim=0, dtype=torch.float64)
        host = torch.stack([colsum, colmax.to(torch.float64)]).cpu().numpy()
        return ColumnStats(host[0].copy(), host[1].copy())

    def _captured(self, x: torch.Tensor, kind: ScoreKind, lam: float) -> _CapturedSweep | None:
        """The captured sweep for this key, capturing it at the key's second sweep."""
        if not (self._per_solve and self.capture_graphs and x.is_cuda):
            return None
        if torch.cuda.is_current_stream_capturing():
            return None
        key = (x.data_ptr(), x.shape, x.stride(), x.dtype, x.device, kind, float(lam))
        if key not in self._graphs:
            if any(k[-1] != key[-1] for k in self._graphs):  # a new lam stage: drop the old
                self._graphs.clear()
            self._graphs[key] = None  # seen once: this sweep runs (and compiles) eagerly
            return None
        if self._graphs[key] is not None or key in self._failed:
            return self._graphs[key]
        if sum(v is not None for v in self._graphs.values()) < MAX_GRAPHS:
            try:
                self._graphs[key] = _CapturedSweep(x, lam, kind == "probs")
            except Exception as exc:  # capture unsupported here (torch, Triton, driver)
                self._failed.add(key)
                warnings.warn(
                    f"CUDA graph capture of the sweep failed ({type(exc).__name__}: {exc}); "
                    "this tensor's sweeps run eagerly (same results, more host time)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self._graphs[key]

    def _stats(self, x: torch.Tensor, kind: ScoreKind, lam: float, g: np.ndarray, with_max: bool):
        """(colsum, colmax) on the host, float64; colmax -inf unless ``with_max``."""
        captured = None if with_max else self._captured(x, kind, lam)
        if captured is not None:
            return captured(g), np.full(x.shape[1], -np.inf)
        g_t = _dual(g, torch.float32, x.device)
        colsum, colmax = _triton_kernels.sweep_stats(x, g_t, lam, kind == "probs", None, with_max)
        if colmax is None:
            return colsum.cpu().numpy(), np.full(x.shape[1], -np.inf)
        host = torch.stack([colsum, colmax.to(torch.float64)]).cpu().numpy()
        return host[0].copy(), host[1].copy()

    def _triton_sweep(
        self, x: torch.Tensor, kind: ScoreKind, lam: float, g: np.ndarray
    ) -> ColumnStats:
        """The fused kernel: column sums, one (K,) copy to the host. The column maxima are
        needed only where a column sum underflowed to 0 with g finite (``ColumnStats``):
        then the sweep is rerun computing them, and a solve's backend computes them in
        every later sweep instead of rerunning (one pass; its cost against the plain sweep
        is what benchmarks/gpu_check.py reports as ``kernel_with_max_ms``)."""
        with torch.cuda.device(x.device) if x.is_cuda else nullcontext():
            colsum, colmax = self._stats(x, kind, lam, g, self._with_max)
            if not self._with_max and needs_exact_colmax(colsum, g):
                self._with_max = self._per_solve
                colsum, colmax = self._stats(x, kind, lam, g, True)
        return ColumnStats(colsum, colmax)

    def labels(
        self, block: torch.Tensor, kind: ScoreKind, lam: float, g: np.ndarray
    ) -> torch.Tensor:
        if (view := self._host_view(block)) is not None:
            return torch.from_numpy(self._host.labels(view, kind, lam, g))
        x_all = block.detach()
        g_t = _dual(g, compute_dtype(x_all.dtype), x_all.device)
        out = torch.empty(x_all.shape[0], dtype=torch.int64, device=x_all.device)
        for rows in _row_blocks(x_all):
            out[rows] = _scaled(x_all[rows], kind, lam, g_t).argmax(dim=1)
        return out

    def codes(
        self, block: torch.Tensor, kind: ScoreKind, lam: float, g: np.ndarray
    ) -> torch.Tensor:
        if (view := self._host_view(block)) is not None:
            return torch.from_numpy(self._host.codes(view, kind, lam, g))
        x_all = block.detach()
        dtype = compute_dtype(x_all.dtype)
        g_t = _dual(g, dtype, x_all.device)
        out = torch.empty(x_all.shape, dtype=dtype, device=x_all.device)
        for rows in _row_blocks(x_all):
            z = _scaled(x_all[rows], kind, lam, g_t)
            _normalise_rows(z)
            out[rows] = z
        return out

    def column_logsumexp(self, block: torch.Tensor, kind: ScoreKind, lam: float) -> np.ndarray:
        """The Numba kernel for CPU tensors where installed; blockwise torch operations
        otherwise (one pass, O(K) to the host)."""
        if (view := self._host_view(block)) is not None:
            return self._host.column_logsumexp(view, kind, lam)
        x_all = block.detach()
        dtype = compute_dtype(x_all.dtype)
        zeros = torch.zeros(x_all.shape[1], dtype=dtype, device=x_all.device)
        parts = []
        for rows in _row_blocks(x_all):
            z = _scaled(x_all[rows], kind, lam, zeros)
            top = z.amax(dim=0)
            top = torch.where(top > -torch.inf, top, torch.zeros_like(top))  # a column all -inf
            z -= top
            z.exp_()
            parts.append(torch.log(z.sum(dim=0, dtype=torch.float64)) + top)
        return torch.logsumexp(torch.stack(parts), dim=0).cpu().numpy()

    def top_labels(
        self, block: torch.Tensor, kind: ScoreKind, lam: float, g: np.ndarray, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best labels per row, ties to the lower index (see ``Backend.top_labels``).

        In float32 the order is exact and O(K) per row: each value maps to an
        order-preserving int32 key, packed with the reversed column index into one int64,
        so ``topk`` sees no ties. In float64 a stable descending sort is used.
        """
        if (view := self._host_view(block)) is not None:
            indices, values = self._host.top_labels(view, kind, lam, g, k)
            return torch.from_numpy(indices), torch.from_numpy(values)
        x_all = block.detach()
        n_rows, n_labels = x_all.shape
        k = min(int(k), n_labels)
        dtype = compute_dtype(x_all.dtype)
        g_t = _dual(g, dtype, x_all.device)
        indices = torch.empty((n_rows, k), dtype=torch.int64, device=x_all.device)
        values = torch.empty((n_rows, k), dtype=dtype, device=x_all.device)
        if dtype == torch.float32:
            reversed_cols = (2**32 - 1) - torch.arange(n_labels, device=x_all.device)
        for rows in _row_blocks(x_all):
            z = _scaled(x_all[rows], kind, lam, g_t)
            if dtype == torch.float32:
                z += 0.0  # -0.0 -> +0.0, so equal values get equal keys
                bits = z.view(torch.int32).to(torch.int64)
                keys = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
                keys = keys * 2**32 + reversed_cols
                order = torch.topk(keys, k, dim=1, largest=True, sorted=True).indices
            else:
                order = torch.sort(z, dim=1, descending=True, stable=True).indices[:, :k]
            indices[rows] = order
            values[rows] = torch.gather(z, 1, order)
        return indices, values

    def logprob_sum(self, block: torch.Tensor, kind: ScoreKind, labels: Any) -> float:
        if (view := self._host_view(block)) is not None:
            return self._host.logprob_sum(view, kind, self.to_numpy(labels))
        x_all = block.detach()
        labels = torch.as_tensor(labels, device=x_all.device).to(torch.int64)
        if labels.numel():  # (on CUDA an index out of range is a device-side assert)
            check_label_range(*torch.stack([labels.min(), labels.max()]).tolist(), x_all.shape[1])
        total = torch.zeros((), dtype=torch.float64, device=x_all.device)
        for rows in _row_blocks(x_all):
            x = x_all[rows]
            picked = torch.gather(x, 1, labels[rows, None])[:, 0].to(torch.float64)
            if kind == "probs":
                picked = torch.log(picked)
            elif kind == "logits":
                z = x.to(torch.float64)
                top = z.amax(dim=1)
                picked = (picked - top) - torch.log(torch.exp(z - top[:, None]).sum(dim=1))
            total += picked.sum()
        return float(total.item())

    def concat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def stack(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(parts, dim=0)

    def to_numpy(self, array: Any) -> np.ndarray:
        if isinstance(array, torch.Tensor):
            array = array.detach()
            if array.dtype == torch.bfloat16:  # NumPy has no bfloat16: widen, exactly
                array = array.float()
            return array.cpu().resolve_conj().resolve_neg().numpy()
        return np.asarray(array)

    def from_numpy(self, array: np.ndarray, like: Any) -> torch.Tensor:
        device = like.device if isinstance(like, torch.Tensor) else None
        return torch.as_tensor(np.ascontiguousarray(array), device=device)

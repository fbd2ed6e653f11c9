"""The torch backend: torch tensors on CPU and CUDA, results on the input's device.

Precision: float16, bfloat16 and float32 scores are read as stored and computed in
float32; float64 and integer scores in float64. Column statistics are accumulated in
float64 and cross to the host once per sweep, (K,) column sums from the Triton kernel and
(2, K) sums and maxima from the torch path (the driver's only view of the data);
everything N-sized (labels, codes, top-k candidates) stays on the input's device.

Two sweep strategies (``TorchBackend(kernel=...)``):

* ``"triton"``: the fused one-read kernel of ``equipart.backends._triton_kernels`` (CUDA
  tensors with float32/bfloat16/float16 scores and K <= 16384).
* ``"torch"``: the array-API passes of ``ArrayAPIBackend``, blockwise over rows (blocks
  of ``BLOCK_ELEMENTS`` on CPU, ``CUDA_BLOCK_ELEMENTS`` on CUDA), so the largest
  temporary is one block, never N x K. It reads each block a few times (max, exp, sums),
  which costs bandwidth on a GPU.

``"auto"`` (the registry's default) uses Triton where it applies on CUDA. For float16,
bfloat16, float32 and float64 CPU tensors, ``for_scores`` (called by the registry when it
chooses the backend) returns ``NumbaTensorBackend`` where Numba is installed: the Numba
backend's kernels read the tensor's memory through a NumPy view, without a copy, and
return tensors: the same results as ``NumbaBackend`` on ``tensor.numpy()``; the 200k x 1k
demo solves in 1.2 s this way against 25.6 s on the torch path, 2-core CPU,
benchmarks/results/memory_200k.json. bfloat16, which NumPy lacks, they read through an
int16 view of its bits (``BFloat16Bits``), widening each value to float32 as they read
it, so results are those of ``NumbaBackend`` on ``tensor.float().numpy()``.
Inputs are detached and never modified; no GPU memory is touched unless a CUDA tensor is
passed. Nothing here uses matrix units, so TF32 never enters a reduction.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import Any

import numpy as np
import torch

from .array_api import ArrayAPIBackend, row_blocks
from .base import Backend, BlockCheck, ColumnStats, ScoreKind, needs_exact_colmax

try:
    from . import _triton_kernels
except ImportError:  # no Triton (CPU-only torch builds): the blockwise torch path only
    _triton_kernels = None

__all__ = ["NumbaTensorBackend", "TorchBackend", "triton_available"]

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
    (
        *HOST_DTYPES,
        *(torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64),
        *(torch.bool, torch.complex64, torch.complex128),
    )
)


def _numba_backend() -> Backend | None:
    """The Numba backend for CPU tensors, or None (with a warning where Numba is installed
    but cannot run: no writable kernel cache, ``NUMBA_DISABLE_JIT=1``, ...)."""
    if find_spec("numba") is None:
        return None
    try:
        from .numba import NumbaBackend

        numba = NumbaBackend()
    except Exception as exc:  # any failure of the optional fast path: the torch path
        warnings.warn(
            f"the Numba kernels for CPU tensors are unavailable ({type(exc).__name__}: "
            f"{exc}); the torch backend uses its blockwise torch path",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    return numba if numba.unavailable_reason() is None else None


def triton_available() -> bool:
    """Whether the fused Triton sweep can be used (Triton imports)."""
    return _triton_kernels is not None


def _dual(g: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """g in the compute precision on ``device``: rounded on the host, one small copy."""
    host = np.asarray(g, dtype=np.float32 if dtype == torch.float32 else np.float64)
    return torch.from_numpy(host).to(device)


class _CapturedSweep:
    """The Triton sweep of one fixed CUDA tensor at one lam, captured as a CUDA graph.

    g goes in and the column sums come out through fixed buffers (pinned on the host, so
    both copies are asynchronous): a sweep then costs the host one graph launch, two small
    copies and one synchronisation, instead of the Triton launcher's and torch's per-call
    Python work, during which the GPU would idle (54 us for ``sweep_stats`` on a 4-row
    tensor on the H200 machine: benchmarks/results/gpu_round_trip_nvidia_h200.json). The
    graph reads the tensor's memory at each replay, so it sees the tensor
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


@dataclass
class _SolveState:
    """One solve's Triton sweeps: (tensor, kind, lam) -> its captured sweep (None while
    seen once), the keys whose capture failed (they stay eager), and whether the sweeps
    compute the column maxima (from the first underflow on)."""

    graphs: dict[tuple, _CapturedSweep | None] = field(default_factory=dict)
    failed: set[tuple] = field(default_factory=set)
    with_max: bool = False


class TorchBackend(ArrayAPIBackend):
    """torch tensors on any device; the fused Triton sweep on CUDA where available.

    A solve's loop (``for_solve``: a ``Session``) keeps two kinds of state for that solve
    only: captured CUDA graphs of its Triton sweeps (a CUDA tensor swept a second time with
    the same kind and lam replays one; ``capture_graphs=False`` turns this off) and, once a
    column sum has underflowed, the column maxima computed in every later sweep of the
    solve instead of by a second pass. ``kernel="torch"`` keeps none.
    """

    name = "torch"

    def __init__(self, kernel: str = "auto", capture_graphs: bool = True) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
        if kernel == "triton" and not triton_available():
            raise ValueError("kernel: 'triton' needs Triton installed; use 'auto' or 'torch'")
        self.kernel = kernel
        self.capture_graphs = capture_graphs
        self._cpu: Backend | None = None  # the Numba route, built at the first CPU tensor
        self._cpu_tried = kernel != "auto"

    def for_scores(self, scores: Any) -> Backend:
        """``NumbaTensorBackend`` for float16, bfloat16, float32 and float64 CPU tensors
        where ``kernel="auto"`` and Numba runs here; this backend otherwise."""
        host = isinstance(scores, torch.Tensor) and scores.device.type == "cpu"
        if not (host and scores.dtype in HOST_DTYPES) or (self._cpu_tried and self._cpu is None):
            return self
        if not self._cpu_tried:  # first CPU tensor: load Numba now (CUDA users never do)
            numba = _numba_backend()
            self._cpu = None if numba is None else NumbaTensorBackend(numba)
            self._cpu_tried = True  # (after _cpu: a concurrent call sees None or both)
        return self._cpu if self._cpu is not None else self

    def new_state(self) -> _SolveState | None:
        return None if self.kernel == "torch" else _SolveState()

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

    # -- the array-API passes' hooks --------------------------------------------------------

    def _data(self, block: torch.Tensor) -> torch.Tensor:
        return block.detach()

    def _rows(self, x: torch.Tensor) -> Iterator[slice]:
        budget = CUDA_BLOCK_ELEMENTS if x.is_cuda else BLOCK_ELEMENTS
        return row_blocks(x.shape[0], x.shape[1], budget)

    def _exp(self, xp: Any, v: torch.Tensor) -> torch.Tensor:
        """exp(v), with v below ``log(tiny) + 1`` (tiny: the smallest normal number)
        flushed to exactly 0, where the NumPy backend's exp gives at most a subnormal: on
        x86 CPUs torch's exp takes a slow path for subnormal results (about 10x slower on
        blocks where most entries underflow, as at large lam). The column maxima, taken
        before, keep the underflow guard of ``ColumnStats.log_mass``."""
        floor = math.log(torch.finfo(v.dtype).tiny) + 1.0
        keep = v >= floor
        return v.clamp_(min=floor).exp_().mul_(keep)

    def _top_k(self, xp: Any, z: torch.Tensor, k: int) -> torch.Tensor:
        """In float32 the order is exact and O(K) per row: each value maps to an
        order-preserving int32 key, packed with the reversed column index into one int64,
        so ``topk`` sees no ties. In float64 a stable descending sort is used."""
        if z.dtype != torch.float32:
            return torch.sort(z, dim=1, descending=True, stable=True).indices[:, :k]
        z += 0.0  # -0.0 -> +0.0, so equal values get equal keys
        bits = z.view(torch.int32).to(torch.int64)
        keys = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        keys = keys * 2**32 + ((2**32 - 1) - torch.arange(z.shape[1], device=z.device))
        return torch.topk(keys, k, dim=1, largest=True, sorted=True).indices

    # -- the sweep: Triton where it applies -------------------------------------------------

    def sweep(self, block: torch.Tensor, kind: ScoreKind, lam: float, g: np.ndarray) -> ColumnStats:
        return self.sweep_with(None, block, kind, lam, g)

    def sweep_with(
        self, state: _SolveState | None, block: torch.Tensor, kind: ScoreKind, lam: float,
        g: np.ndarray,
    ) -> ColumnStats:
        x = block.detach()
        if self.uses_triton(x):
            return self._triton_sweep(state, x, kind, lam, g)
        return super().sweep(x, kind, lam, g)

    def _captured(
        self, state: _SolveState | None, x: torch.Tensor, kind: ScoreKind, lam: float
    ) -> _CapturedSweep | None:
        """The captured sweep for this key, capturing it at the key's second sweep."""
        if not (state is not None and self.capture_graphs and x.is_cuda):
            return None
        if torch.cuda.is_current_stream_capturing():
            return None
        graphs = state.graphs
        key = (x.data_ptr(), x.shape, x.stride(), x.dtype, x.device, kind, float(lam))
        if key not in graphs:
            if any(k[-1] != key[-1] for k in graphs):  # a new lam stage: drop the old
                graphs.clear()
            graphs[key] = None  # seen once: this sweep runs (and compiles) eagerly
            return None
        if graphs[key] is not None or key in state.failed:
            return graphs[key]
        if sum(v is not None for v in graphs.values()) < MAX_GRAPHS:
            try:
                graphs[key] = _CapturedSweep(x, lam, kind == "probs")
            except Exception as exc:  # capture unsupported here (torch, Triton, driver)
                state.failed.add(key)
                warnings.warn(
                    f"CUDA graph capture of the sweep failed ({type(exc).__name__}: {exc}); "
                    "this tensor's sweeps run eagerly (same results, more host time)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return graphs[key]

    def _stats(
        self, state: _SolveState | None, x: torch.Tensor, kind: ScoreKind, lam: float,
        g: np.ndarray, with_max: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(colsum, colmax) on the host, float64; colmax -inf unless ``with_max``."""
        captured = None if with_max else self._captured(state, x, kind, lam)
        if captured is not None:
            return captured(g), np.full(x.shape[1], -np.inf)
        g_t = _dual(g, torch.float32, x.device)
        colsum, colmax = _triton_kernels.sweep_stats(x, g_t, lam, kind == "probs", None, with_max)
        if colmax is None:
            return colsum.cpu().numpy(), np.full(x.shape[1], -np.inf)
        host = torch.stack([colsum, colmax.to(torch.float64)]).cpu().numpy()
        return host[0].copy(), host[1].copy()

    def _triton_sweep(
        self, state: _SolveState | None, x: torch.Tensor, kind: ScoreKind, lam: float,
        g: np.ndarray,
    ) -> ColumnStats:
        """The fused kernel: column sums, one (K,) copy to the host. The column maxima are
        needed only where a column sum underflowed to 0 with g finite (``ColumnStats``):
        then the sweep is rerun computing them, and a solve computes them in every later
        sweep instead of rerunning (one pass; its cost against the plain sweep is what
        benchmarks/gpu_check.py reports as ``kernel_with_max_ms``)."""
        with_max = state is not None and state.with_max
        with torch.cuda.device(x.device) if x.is_cuda else nullcontext():
            colsum, colmax = self._stats(state, x, kind, lam, g, with_max)
            if not with_max and needs_exact_colmax(colsum, g):
                if state is not None:
                    state.with_max = True
                colsum, colmax = self._stats(state, x, kind, lam, g, True)
        return ColumnStats(colsum, colmax)

    # -- small arrays between the host and the tensors' device -----------------------------

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


class NumbaTensorBackend(TorchBackend):
    """CPU tensors through the Numba backend's kernels (what ``TorchBackend.for_scores``
    picks for float16, bfloat16, float32 and float64 CPU tensors where Numba runs).

    Each pass reads the tensor's memory through a NumPy view (bfloat16 through
    ``BFloat16Bits``, an int16 view of its bits) and returns what the Numba backend
    returns, N-sized results as tensors sharing its output memory.
    """

    def __init__(self, numba: Backend) -> None:
        super().__init__(kernel="auto")  # (the factored fused passes read this kernel)
        self.numba = numba

    def for_scores(self, scores: Any) -> Backend:
        return self

    def new_state(self) -> Any:
        return self.numba.new_state()

    def unavailable_reason(self) -> str | None:
        return self.numba.unavailable_reason()

    def _view(self, block: torch.Tensor) -> Any:
        """The block as the Numba kernels read it: a NumPy view, or ``BFloat16Bits``."""
        if block.device.type != "cpu" or block.dtype not in HOST_DTYPES:
            raise TypeError(
                f"scores: a {block.device.type} {block.dtype} block reached the Numba kernels "
                "for CPU tensors, which read float16, bfloat16, float32 and float64 CPU "
                "tensors; give every block the first block's device and dtype, or pass "
                "backend=TorchBackend(kernel='torch')"
            )
        x = block.detach()
        if x.dtype == torch.bfloat16:  # NumPy has no bfloat16: its bits, widened by the kernels
            from .numba import BFloat16Bits

            return BFloat16Bits(x.view(torch.int16).numpy())
        return x.resolve_conj().resolve_neg().numpy()

    def check(self, block: torch.Tensor, kind: ScoreKind) -> BlockCheck:
        return self.numba.check(self._view(block), kind)

    def sweep(self, block: torch.Tensor, kind: ScoreKind, lam: float, g: np.ndarray) -> ColumnStats:
        return self.numba.sweep(self._view(block), kind, lam, g)

    def sweep_with(
        self, state: Any, block: torch.Tensor, kind: ScoreKind, lam: float, g: np.ndarray
    ) -> ColumnStats:
        return self.numba.sweep_with(state, self._view(block), kind, lam, g)

    def column_logsumexp(self, block: torch.Tensor, kind: ScoreKind, lam: float) -> np.ndarray:
        return self.numba.column_logsumexp(self._view(block), kind, lam)

    def labels(self, block: torch.Tensor, kind: ScoreKind, lam: float, g: np.ndarray) -> Any:
        return torch.from_numpy(self.numba.labels(self._view(block), kind, lam, g))

    def codes(self, block: torch.Tensor, kind: ScoreKind, lam: float, g: np.ndarray) -> Any:
        return torch.from_numpy(self.numba.codes(self._view(block), kind, lam, g))

    def top_labels(
        self, block: torch.Tensor, kind: ScoreKind, lam: float, g: np.ndarray, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        indices, values = self.numba.top_labels(self._view(block), kind, lam, g, k)
        return torch.from_numpy(indices), torch.from_numpy(values)

    def logprob_sum(self, block: torch.Tensor, kind: ScoreKind, labels: Any) -> float:
        return self.numba.logprob_sum(self._view(block), kind, self.to_numpy(labels))

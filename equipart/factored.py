r"""Factored scores: features times prototypes, computed a block of rows at a time.

Prototype heads (SwAV, SeLa with prototypes, k-means) score N points against K labels
through two small factors, the points' features x_i (N x d) and the labels' prototypes
c_j (K x d):

    metric="dot"          s_ij = scale <x_i, c_j>
    metric="cosine"       s_ij = scale <x_i, c_j> / (|x_i| |c_j|)
    metric="sqeuclidean"  s_ij = scale (2 <x_i, c_j> - |c_j|^2)
                               = -scale |x_i - c_j|^2 + scale |x_i|^2

(for "sqeuclidean" the row term scale |x_i|^2 is left out: a per-row constant of logits
changes neither Q, nor the labels, the codes or the objective, and leaving it out keeps
the float digits of the differences between labels when points lie far from the origin).
At ImageNet scale the N x K float32 matrix is 15 GB while the factors are 0.7 GB, so
``Factored`` never forms it: every pass of a solve computes one block of rows with one
GEMM (prototypes prepared once: scaled, normalised or doubled) and hands it to the
backend's kernel while it is hot. Memory is the factors, one block and the O(N + K) state.

How a pass runs, by backend:

* Numba (NumPy arrays, and CPU float32/float64 torch tensors under the torch backend's
  default kernel): the sweep is one parallel region (``equipart._factored_numba``). Each
  thread takes a chunk of rows and, for a sub-block of them at a time, calls BLAS
  (``np.dot``, single-threaded inside the region) into a buffer of a few hundred KB and
  runs the sweep's row loops on it while it is in cache. The other passes (validation,
  labels, candidates, codes, objective) compute blocks of about ``HOST_BLOCK_BYTES`` with
  the library's GEMM and hand them to the backend.
* NumPy, torch (CPU or CUDA) and CuPy otherwise: every pass computes blocks of about
  ``HOST_BLOCK_BYTES`` (``DEVICE_BLOCK_BYTES`` on a GPU) with the library's GEMM
  (cuBLAS on a GPU) into one reused buffer and hands each to the backend's sweep kernel.

``to_dense()`` returns the matrix the solver sees (built from the same blocks), for
checks and for ``rounding="exact"``, which needs it whole.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends import get_backend
from .backends.base import Backend, BlockCheck, ColumnStats, ScoreKind
from .validation import check_choice, check_positive_int, check_positive_real

__all__ = ["Factored", "FactoredBackend", "FactoredSource", "RowRange"]

METRICS = ("dot", "cosine", "sqeuclidean")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
HOST_BLOCK_BYTES = 16 << 20  # scores per computed block in host memory (4,096 rows at K=1,000)
DEVICE_BLOCK_BYTES = 256 << 20  # ... on a GPU, where larger GEMMs and kernels pay off
CHECK_ELEMENTS = 1 << 22  # features read per step of the construction checks (host arrays)


# --------------------------------------------------------------------------- libraries
class _NumpyLike:
    """The array operations ``Factored`` needs, for NumPy and CuPy (the same calls)."""

    def __init__(self, xp: Any, name: str) -> None:
        self.xp = xp
        self.name = name

    def dtype_name(self, x: Any) -> str:
        return str(x.dtype)

    def device(self, x: Any) -> Any:
        return getattr(x, "device", "cpu")

    def all_finite(self, x: Any) -> bool:
        step = max(1, CHECK_ELEMENTS // max(1, x.shape[-1]))
        rows = x.reshape(-1, x.shape[-1])
        return all(
            bool(self.xp.isfinite(rows[i : i + step]).all()) for i in range(0, rows.shape[0], step)
        )

    def squared_norms(self, x: Any) -> Any:
        """sum_k x_ik^2 along the last axis, accumulated in float64, as float64."""
        out = self.xp.empty(x.shape[:-1], dtype=self.xp.float64)
        flat, rows = out.reshape(-1), x.reshape(-1, x.shape[-1])
        step = max(1, CHECK_ELEMENTS // max(1, x.shape[-1]))
        for i in range(0, rows.shape[0], step):
            part = rows[i : i + step].astype(self.xp.float64)
            flat[i : i + step] = self.xp.einsum("ij,ij->i", part, part)
        return out

    def cast(self, x: Any, like: Any) -> Any:
        return x.astype(like.dtype)

    def scale_rows(self, x: Any, factors: Any) -> Any:
        return x * factors[:, None]

    def transpose(self, x: Any) -> Any:
        return self.xp.swapaxes(self.xp.ascontiguousarray(x), -1, -2)

    def empty(self, shape: tuple[int, ...], like: Any, dtype: Any = None) -> Any:
        return self.xp.empty(shape, dtype=like.dtype if dtype is None else dtype)

    def matmul(self, a: Any, b: Any, out: Any) -> Any:
        return self.xp.matmul(a, b, out=out)

    def to_host(self, x: Any) -> np.ndarray:
        return x.get() if self.name == "cupy" else np.asarray(x)

    def int32(self, x: Any) -> Any:
        return x.astype(self.xp.int32, copy=False)

    def host_view(self, x: Any) -> np.ndarray | None:
        """A NumPy view of x's memory (None on a GPU)."""
        return np.asarray(x) if self.name == "numpy" else None


class _Torch:
    """The array operations ``Factored`` needs, for torch tensors (any device)."""

    name = "torch"

    def __init__(self, torch: Any) -> None:
        self.torch = torch

    def dtype_name(self, x: Any) -> str:
        return str(x.dtype).removeprefix("torch.")

    def device(self, x: Any) -> Any:
        return x.device

    def all_finite(self, x: Any) -> bool:
        # amin / amax propagate NaN, and an infinity is an extreme: finite iff both are
        if x.numel() == 0:
            return True
        extremes = self.torch.stack([x.detach().amin(), x.detach().amax()]).float()
        return bool(self.torch.isfinite(extremes).all())

    def squared_norms(self, x: Any) -> Any:
        wide = x.detach().to(self.torch.float64)
        return (wide * wide).sum(dim=-1)

    def cast(self, x: Any, like: Any) -> Any:
        return x.to(like.dtype)

    def scale_rows(self, x: Any, factors: Any) -> Any:
        return x * factors[:, None]

    def transpose(self, x: Any) -> Any:
        return x.contiguous().transpose(-1, -2)

    def empty(self, shape: tuple[int, ...], like: Any, dtype: Any = None) -> Any:
        dtype = like.dtype if dtype is None else dtype
        return self.torch.empty(shape, dtype=dtype, device=like.device)

    def matmul(self, a: Any, b: Any, out: Any) -> Any:
        return self.torch.matmul(a.detach(), b, out=out)

    def int32(self, x: Any) -> Any:
        return x.to(self.torch.int32)

    def to_host(self, x: Any) -> np.ndarray:
        x = x.detach()
        if x.dtype == self.torch.bfloat16:
            x = x.float()
        return x.cpu().numpy()

    def host_view(self, x: Any) -> np.ndarray | None:
        if x.device.type != "cpu" or x.dtype not in (self.torch.float32, self.torch.float64):
            return None
        return x.detach().numpy()


def _library(x: Any, name: str) -> _NumpyLike | _Torch:
    """The operations for x's array library; TypeError naming ``name`` otherwise."""
    module = type(x).__module__.split(".", 1)[0]
    if isinstance(x, np.ndarray) and module == "numpy":
        if isinstance(x, np.ma.MaskedArray):
            raise TypeError(f"{name}: a masked array's mask is not read; pass {name}.filled(...)")
        return _NumpyLike(np, "numpy")
    if module == "torch":
        import torch

        if isinstance(x, torch.Tensor):
            if x.layout != torch.strided:
                raise TypeError(f"{name}: {x.layout} tensors are not supported; pass .to_dense()")
            return _Torch(torch)
    if module == "cupy":
        import cupy

        if isinstance(x, cupy.ndarray):
            return _NumpyLike(cupy, "cupy")
    raise TypeError(
        f"{name}: expected a NumPy array, a torch tensor or a CuPy array, got "
        f"{type(x).__module__}.{type(x).__name__}; convert it (np.asarray(...))"
    )


# --------------------------------------------------------------------------- validation
def _check_array(lib: Any, x: Any, name: str, dims: tuple[int, ...], what: str) -> None:
    """x has one of ``dims`` dimensions, no empty axis but the rows of features, a
    floating dtype and finite values."""
    shape = tuple(x.shape)
    if len(shape) not in dims:
        raise ValueError(f"{name}: expected {what}, got shape {shape}")
    sized = shape[1:] if name == "features" else shape
    if min(sized) == 0:
        raise ValueError(f"{name}: expected {what} with no empty axis, got shape {shape}")
    dtype = lib.dtype_name(x)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a floating-point dtype ({', '.join(FLOAT_DTYPES)}), got {dtype}; "
            "convert it (x.astype(np.float32), or x.float() in torch)"
        )
    if not lib.all_finite(x):
        raise ValueError(
            f"{name}: contains NaN or infinite values; clean them (np.nan_to_num) or drop "
            "those rows"
        )


def _check_nonzero(norms: np.ndarray, name: str) -> None:
    """Refuse zero vectors, whose cosine similarity is undefined (norms: host, any shape)."""
    zero = np.argwhere(norms == 0)
    if zero.size:
        where = ", ".join(str(tuple(int(i) for i in z)) for z in zero[:5])
        raise ValueError(
            f"{name}: {zero.shape[0]} vector(s) of zero norm (at {where}), where the cosine "
            "similarity is undefined; drop them or use metric='dot'"
        )


def _check_library(lib: Any, features: Any, prototypes: Any) -> None:
    """prototypes: the array library of the features."""
    if _library(prototypes, "prototypes").name != lib.name:
        raise TypeError(
            f"prototypes: a {type(prototypes).__module__}.{type(prototypes).__name__}, but "
            f"features are a {type(features).__module__}.{type(features).__name__}; pass "
            "both from one array library"
        )


def _check_partner(lib: Any, features: Any, prototypes: Any) -> None:
    """prototypes: the device, feature count and dtype of the features."""
    if str(lib.device(prototypes)) != str(lib.device(features)):
        raise ValueError(
            f"prototypes: on {lib.device(prototypes)}, but features are on "
            f"{lib.device(features)}; move both to one device"
        )
    if prototypes.shape[-1] != features.shape[-1]:
        raise ValueError(
            f"prototypes: {prototypes.shape[-1]} features per prototype, but features have "
            f"d={features.shape[-1]}; prototypes must be (K, d) or (H, K, d) with the same d"
        )
    if lib.dtype_name(prototypes) != lib.dtype_name(features):
        raise TypeError(
            f"prototypes: dtype {lib.dtype_name(prototypes)} differs from the features' "
            f"{lib.dtype_name(features)}; convert one to the other's dtype"
        )


# --------------------------------------------------------------------------- Factored
class Factored:
    r"""Scores given as features (N, d) and prototypes (K, d) or (H, K, d); never N x K.

    Pass it as ``scores`` to :func:`equipart.assign_labels`, :func:`equipart.sinkhorn_codes`
    or :class:`equipart.cluster.BalancedKMeans`. Each pass of a solve computes a block of
    rows of the scores with one GEMM and runs the backend's kernel on it, so memory is the
    factors plus one block (see the module docs); labels equal those of the same solve on
    ``to_dense()``, up to the rounding of the column sums' order.

    Parameters
    ----------
    features : array, shape (N, d)
        The points' features: a NumPy array (a memmap too), a torch tensor (CPU or CUDA)
        or a CuPy array, of a floating dtype; never modified. N may be 0 on a rank of a
        distributed solve.
    prototypes : array, shape (K, d) or (H, K, d)
        The labels' prototypes, in the features' library, device and dtype; (H, K, d)
        solves H heads on the same features (the (H, N, K) scores of several heads).
    metric : {"dot", "cosine", "sqeuclidean"}, default "dot"
        ``s_ij = scale <x_i, c_j>``, ``scale cos(x_i, c_j)`` or ``-scale |x_i - c_j|^2``
        (the last up to the row term scale |x_i|^2, which logits ignore).
    scale : float, default 1.0
        A factor > 0 on every score (for example 1 / temperature), in the units the
        solve's lam multiplies.
    block_rows : int, optional
        Rows per computed block for the passes that form blocks (default: about
        ``HOST_BLOCK_BYTES`` of scores, ``DEVICE_BLOCK_BYTES`` on a GPU).

    Raises
    ------
    ValueError or TypeError
        Naming the argument, for shapes, dtypes, libraries or devices that do not match,
        non-finite values, zero vectors under ``metric="cosine"``, an unknown metric or a
        scale that is not a finite number > 0.
    """

    def __init__(
        self,
        features: Any,
        prototypes: Any,
        *,
        metric: str = "dot",
        scale: float = 1.0,
        block_rows: int | None = None,
    ) -> None:
        if isinstance(features, np.matrix):
            features = np.asarray(features)
        if isinstance(prototypes, np.matrix):
            prototypes = np.asarray(prototypes)
        lib = _library(features, "features")
        _check_array(lib, features, "features", (2,), "a 2-D (N, d) array of features")
        _check_library(lib, features, prototypes)
        _check_array(lib, prototypes, "prototypes", (2, 3), "a (K, d) or (H, K, d) array")
        _check_partner(lib, features, prototypes)
        self._metric = check_choice(metric, "metric", METRICS)
        self._scale = check_positive_real(scale, "scale", "for example 1.0 or 1 / temperature")
        if block_rows is not None:
            block_rows = check_positive_int(block_rows, "block_rows")
        self._lib = lib
        self._features = features
        self._prototypes = prototypes
        self._block_rows = block_rows
        stacked = prototypes.ndim == 3
        heads = prototypes if stacked else prototypes[None]
        self._stacked = stacked
        self._shape = (heads.shape[0], features.shape[0], heads.shape[1])
        self._prepare(lib, features, heads)

    def _prepare(self, lib: Any, features: Any, heads: Any) -> None:
        """The prepared prototypes (transposed, (H, d, K)), column terms and row factors."""
        scale = self._scale
        self._row_factors = None  # 1 / |x_i| (cosine)
        self._bias = None  # -scale |c_j|^2 (sqeuclidean), (H, K)
        if self._metric == "cosine":
            row_norms = lib.squared_norms(features) ** 0.5
            proto_norms = lib.squared_norms(heads) ** 0.5
            _check_nonzero(lib.to_host(row_norms), "features")
            _check_nonzero(lib.to_host(proto_norms), "prototypes")
            self._row_factors = lib.cast(1.0 / row_norms, features)
            prepared = heads * lib.cast(scale / proto_norms, features)[..., None]
        elif self._metric == "sqeuclidean":
            prepared = heads * (2.0 * scale)
            self._bias = lib.cast(-scale * lib.squared_norms(heads), features)
        else:
            prepared = heads * scale
        # (H, d, K) transposed views of C-contiguous (H, K, d) arrays: every GEMM reads them
        # as given, and each head's (d, K) is column-major, as the fused kernel expects
        self._protos_t = lib.transpose(prepared)

    # -- what the solvers read ------------------------------------------------------------
    @property
    def features(self) -> Any:
        return self._features

    @property
    def prototypes(self) -> Any:
        return self._prototypes

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def scale(self) -> float:
        return self._scale

    @property
    def shape(self) -> tuple[int, ...]:
        """(N, K), or (H, N, K) for (H, K, d) prototypes: the shape of the scores."""
        return self._shape if self._stacked else self._shape[1:]

    @property
    def dtype(self) -> str:
        """The scores' dtype (the factors'), by name."""
        return self._lib.dtype_name(self._features)

    def __repr__(self) -> str:
        return (
            f"Factored(shape={self.shape}, d={self._features.shape[1]}, "
            f"metric={self._metric!r}, scale={self._scale!r}, library={self._lib.name!r})"
        )

    def block_rows(self) -> int:
        """Rows per computed block (see ``block_rows`` in the class docs)."""
        if self._block_rows is not None:
            return self._block_rows
        budget = DEVICE_BLOCK_BYTES if self._on_gpu() else HOST_BLOCK_BYTES
        itemsize = np.dtype("float64" if self.dtype == "float64" else "float32").itemsize
        return max(1, budget // (self._shape[2] * itemsize))

    def _on_gpu(self) -> bool:
        if self._lib.name == "torch":
            return self._features.device.type != "cpu"
        return self._lib.name == "cupy"

    def fill(self, head: int, start: int, stop: int, out: Any) -> Any:
        """Scores of rows start:stop of ``head`` written into ``out`` ((stop - start, K),
        the features' library and dtype): one GEMM, plus the column term for sqeuclidean."""
        x = self._features[start:stop]
        if self._row_factors is not None:
            x = self._lib.scale_rows(x, self._row_factors[start:stop])
        self._lib.matmul(x, self._protos_t[head], out)
        if self._bias is not None:
            out += self._bias[head]
        return out

    def pieces(self, head: int, start: int, stop: int) -> Iterator[tuple[int, Any]]:
        """(offset from start, scores) of consecutive blocks of rows start:stop, computed
        into one buffer (each block is overwritten by the next); one empty block for no
        rows."""
        step = self.block_rows()
        buffer = self._lib.empty((min(step, max(stop - start, 0)), self._shape[2]), self._features)
        for first in range(start, max(stop, start + 1), step):
            last = min(first + step, stop)
            yield first - start, self.fill(head, first, last, buffer[: last - first])

    def to_dense(self) -> Any:
        """The scores as one array, (N, K) or (H, N, K), computed by the blocks the
        solvers use (so a solve of this array sees the same values)."""
        n_heads, n_rows, n_labels = self._shape
        out = self._lib.empty((n_heads, n_rows, n_labels), self._features)
        for head in range(n_heads):
            for offset, block in self.pieces(head, 0, n_rows):
                out[head, offset : offset + block.shape[0]] = block
        return out if self._stacked else out[0]

    def fingerprint(self) -> str:
        """A digest of the metric, scale, dtype and prototypes: what every rank of a
        distributed solve must share (the features are each rank's own)."""
        host = np.ascontiguousarray(self._lib.to_host(self._prototypes), dtype=np.float64)
        digest = zlib.crc32(host.tobytes())
        return f"{self._metric}:{self._scale!r}:{self.dtype}:{host.shape}:{digest}"

    def host_factors(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
        """(features, row factors, prepared prototypes (H, d, K), column terms) as NumPy
        views where the features live in host memory as float32/float64 (the fused Numba
        sweep's inputs); ValueError otherwise."""
        view = self._lib.host_view(self._features)
        if view is None:
            raise ValueError("features: not a float32/float64 array in host memory")
        convert = self._lib.host_view
        factors = None if self._row_factors is None else convert(self._row_factors)
        bias = None if self._bias is None else convert(self._bias)
        return view, factors, convert(self._protos_t), bias

    # -- the solvers' entry ---------------------------------------------------------------
    def open(
        self, backend: str | Backend = "auto", *, allow_empty_rows: bool = False
    ) -> tuple[FactoredBackend, FactoredSource]:
        """The backend and row source a solve uses (``equipart.sources.open_source``)."""
        if self._shape[1] == 0 and not allow_empty_rows:
            raise ValueError(
                f"scores: every dimension must be non-empty, got Factored scores of shape "
                f"{self.shape} (features with no rows)"
            )
        inner = get_backend(backend, self._features)
        engine = FactoredBackend(inner, self)
        return engine, FactoredSource(engine, self)


# --------------------------------------------------------------------------- the source
@dataclass(frozen=True)
class RowRange:
    """A block of a :class:`Factored` source not yet computed: rows start:stop of a head.

    Only :class:`FactoredBackend` reads it; it has the block's ``shape`` (n, K)."""

    head: int
    start: int
    stop: int
    n_labels: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.stop - self.start, self.n_labels)


@dataclass(frozen=True, eq=False)
class FactoredSource:
    """The ``RowSource`` of a :class:`Factored`: one :class:`RowRange` of all rows per head
    (the backend computes and blocks them)."""

    backend: FactoredBackend
    factored: Factored

    @property
    def n_heads(self) -> int:
        return self.factored._shape[0]

    @property
    def n_rows(self) -> int:
        return self.factored._shape[1]

    @property
    def n_labels(self) -> int:
        return self.factored._shape[2]

    @property
    def stacked(self) -> bool:
        return self.factored._stacked

    @property
    def dtype(self) -> str:
        return self.factored.dtype

    @property
    def prototypes_key(self) -> str:
        """What the ranks of a distributed solve must agree on (``Factored.fingerprint``)."""
        return self.factored.fingerprint()

    def blocks(self, head: int) -> Iterator[RowRange]:
        yield RowRange(head, 0, self.n_rows, self.n_labels)


def _merge_checks(
    reports: list[BlockCheck], rows: list[int], n_labels: int, kind: ScoreKind
) -> BlockCheck:
    """One report for disjoint pieces of rows (``rows[i]`` rows in ``reports[i]``; NaN
    fields: not reported, ignored). As the backends report it, the support of logits and
    log-probabilities is given only where some piece holds -inf, each piece without -inf
    counting all its rows; it is None where a piece that needs it did not report it."""
    counts = []
    for report, n_rows in zip(reports, rows, strict=True):
        counted = report.support
        if counted is None and kind != "probs" and report.min_value > -np.inf:
            counted = np.full(n_labels, n_rows, dtype=np.int64)
        counts.append(counted)
    min_value = float(np.fmin.reduce([r.min_value for r in reports]))
    wanted = kind == "probs" or min_value == -np.inf
    support = None
    if wanted and all(c is not None for c in counts):
        support = np.sum(counts, axis=0, dtype=np.int64)
    return BlockCheck(
        all(r.finite_or_neg_inf for r in reports),
        min_value,
        float(np.fmax.reduce([r.max_row_sum_deviation for r in reports])),
        float(np.fmax.reduce([r.max_value for r in reports])),
        support,
        min_row_max=float(np.fmin.reduce([r.min_row_max for r in reports])),
    )


class FactoredBackend(Backend):
    """A backend for :class:`RowRange` blocks: computes them and delegates to ``inner``.

    Blocks of any other kind go to ``inner`` unchanged. The sweep runs fused in Numba
    where ``fused_sweep`` applies (see the module docs); every other pass computes blocks
    of ``Factored.block_rows()`` rows into one buffer and runs ``inner``'s pass on each.
    """

    name = "factored"

    def __init__(self, inner: Backend, factored: Factored, fused: Any = None) -> None:
        self.inner = inner
        self.factored = factored
        self.name = inner.name
        self._fused = fused if fused is not None else _fused_passes(inner, factored)

    @staticmethod
    def accepts(scores: Any) -> bool:
        return isinstance(scores, RowRange)

    def for_solve(self) -> FactoredBackend:
        inner = self.inner.for_solve() if hasattr(self.inner, "for_solve") else self.inner
        return FactoredBackend(inner, self.factored, self._fused)

    def unavailable_reason(self) -> str | None:
        check = getattr(self.inner, "unavailable_reason", None)
        return check() if check is not None else None

    def shape_dtype(self, scores: Any) -> tuple[tuple[int, ...], Any]:
        if isinstance(scores, RowRange):
            return scores.shape, self.factored.dtype
        return self.inner.shape_dtype(scores)

    def head(self, scores: Any, index: int) -> Any:
        return self.inner.head(scores, index)

    def _pieces(self, block: RowRange) -> Iterator[tuple[int, Any]]:
        return self.factored.pieces(block.head, block.start, block.stop)

    def check(self, block: Any, kind: ScoreKind) -> BlockCheck:
        if not isinstance(block, RowRange):
            return self.inner.check(block, kind)
        reports, rows = [], []
        for _, scores in self._pieces(block):
            if scores.shape[0]:
                reports.append(self.inner.check(scores, kind))
                rows.append(scores.shape[0])
        return _merge_checks(reports, rows, block.n_labels, kind)

    def sweep(self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray) -> ColumnStats:
        if not isinstance(block, RowRange):
            return self.inner.sweep(block, kind, lam, g)
        if self._fused is not None and kind != "probs":
            return self._fused.sweep(block.head, block.start, block.stop, lam, g)
        stats = ColumnStats.empty(block.n_labels)
        for _, scores in self._pieces(block):
            if scores.shape[0]:
                stats = stats.merge(self.inner.sweep(scores, kind, lam, g))
        return stats

    def column_logsumexp(self, block: Any, kind: ScoreKind, lam: float) -> np.ndarray:
        if not isinstance(block, RowRange):
            return self.inner.column_logsumexp(block, kind, lam)
        total = np.full(block.n_labels, -np.inf)
        for _, scores in self._pieces(block):
            if scores.shape[0]:
                np.logaddexp(total, self.inner.column_logsumexp(scores, kind, lam), out=total)
        return total

    def labels(self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray) -> Any:
        if not isinstance(block, RowRange):
            return self.inner.labels(block, kind, lam, g)
        parts = [self.inner.labels(s, kind, lam, g) for _, s in self._pieces(block)]
        return self.inner.concat(parts)

    def codes(self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray) -> Any:
        if not isinstance(block, RowRange):
            return self.inner.codes(block, kind, lam, g)
        out = None
        for offset, scores in self._pieces(block):
            part = self.inner.codes(scores, kind, lam, g)
            if out is None:  # the inner backend's codes dtype, for all rows
                out = self.factored._lib.empty(block.shape, part, dtype=part.dtype)
            out[offset : offset + part.shape[0]] = part
        return out

    def top_labels(
        self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray, k: int
    ) -> tuple[Any, Any]:
        """``Backend.top_labels``, except that the indices of a :class:`RowRange` are
        int32 (labels number far fewer than 2**31): N x k candidates are the largest
        arrays of a factored solve's balanced rounding."""
        if not isinstance(block, RowRange):
            return self.inner.top_labels(block, kind, lam, g, k)
        if self._fused is not None and kind != "probs":
            found = self._fused.top_labels(block.head, block.start, block.stop, lam, g, k)
            return tuple(self.from_numpy(part, like=block) for part in found)
        parts = [self.inner.top_labels(s, kind, lam, g, k) for _, s in self._pieces(block)]
        narrow = self.factored._lib.int32
        return (
            self.inner.concat([narrow(p[0]) for p in parts]),
            self.inner.concat([p[1] for p in parts]),
        )

    def logprob_sum(self, block: Any, kind: ScoreKind, labels: Any) -> float:
        if not isinstance(block, RowRange):
            return self.inner.logprob_sum(block, kind, labels)
        total = 0.0
        for offset, scores in self._pieces(block):
            picked = labels[offset : offset + scores.shape[0]]
            total += self.inner.logprob_sum(scores, kind, picked)
        return total

    def concat(self, parts: list[Any]) -> Any:
        return self.inner.concat(parts)

    def stack(self, parts: list[Any]) -> Any:
        return self.inner.stack(parts)

    def to_numpy(self, array: Any) -> np.ndarray:
        return self.inner.to_numpy(array)

    def from_numpy(self, array: np.ndarray, like: Any) -> Any:
        if isinstance(like, RowRange):  # the features' library and device
            like = self.factored.features
        return self.inner.from_numpy(array, like=like)


def _fused_passes(inner: Backend, factored: Factored) -> Any:
    """The fused Numba passes for these factors under ``inner``, or None where they do not
    apply: factors not float32/float64 in host memory, or a backend other than Numba
    (NumPy arrays) or torch with its default kernels (CPU tensors), or Numba unable to
    run here."""
    name = getattr(inner, "name", None)
    if name == "torch" and getattr(inner, "kernel", None) != "auto":
        return None
    if name not in ("numba", "torch") or factored._lib.host_view(factored.features) is None:
        return None
    try:
        from ._factored_numba import FusedPasses
    except ModuleNotFoundError as exc:  # no Numba here: the blocks go to the inner backend
        if (exc.name or "").split(".")[0] not in ("numba", "scipy", "llvmlite"):
            raise
        return None
    fused = FusedPasses(*factored.host_factors())
    return fused if fused.unavailable_reason() is None else None

"""Row sources: how the driver walks the rows of each head.

An in-memory array (NumPy, torch, CuPy) is one block per head: the backend does its own
inner blocking. Out-of-core scores (a ``np.memmap``, a ``.npy`` path, a factory of row
blocks) are streamed block by block on every pass, so memory is O(block + N + K) however
large N x K is; a distributed solve's shard is just the local rows of any of these.
``open_source`` turns whatever the caller passed as ``scores`` into a backend and a source
implementing the ``RowSource`` protocol of ``equipart.solver``.
"""

from __future__ import annotations

import ctypes
import mmap
import numbers
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .backends import get_backend
from .backends.base import Backend
from .factored import Factored
from .validation import check_shape


@dataclass(frozen=True)
class InMemory:
    """Scores of shape (N, K) (one head) or (H, N, K), handed to the backend whole."""

    backend: Backend
    scores: Any
    n_heads: int
    n_rows: int
    n_labels: int
    stacked: bool  # whether scores has a leading head axis

    @property
    def dtype(self) -> str:
        """The scores' dtype, by name."""
        return str(self.backend.shape_dtype(self.scores)[1])

    def blocks(self, head: int) -> Iterator[Any]:
        yield self.backend.head(self.scores, head) if self.stacked else self.scores

    def sample(self, n_rows: int, pieces: int) -> InMemory:
        """About ``n_rows`` rows of every head, copied: ``pieces`` runs of equal length
        spread evenly from the first row to the last (``1 < pieces <= n_rows <= N``).

        Runs of contiguous rows are basic slices in every array library and copy at the
        speed of memory; spread over the rows they sample data ordered by class or by
        time evenly.
        """
        run = -(-n_rows // pieces)
        starts = np.linspace(0, self.n_rows - run, pieces).round().astype(np.int64)

        def rows(scores: Any) -> Any:
            return self.backend.concat([scores[start : start + run] for start in starts])

        if self.stacked:
            heads = range(self.n_heads)
            scores = self.backend.stack([rows(self.backend.head(self.scores, h)) for h in heads])
        else:
            scores = rows(self.scores)
        return replace(self, scores=scores, n_rows=run * pieces)


# Streamed sources read about this many bytes of scores per block (per head): large enough
# that per-block overheads vanish, small enough that two blocks (the one swept and the one
# read ahead) are a fraction of any budget.
BLOCK_BYTES = 32 << 20
FAULT_AROUND_BYTES = 1 << 20
# Linux's madvise advice (5.14 and later) that reads a range in and maps it, in one call
MADV_POPULATE_READ = 22


def _libc_madvise() -> Callable[[int, int, int], int] | None:
    """libc's madvise through ctypes (which releases the GIL while it runs) on Linux, else
    None. Called with (page-aligned address, length, advice); returns 0 or -1."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_MADVISE = _libc_madvise()


def _block_rows(n_labels: int, itemsize: int, block_bytes: int) -> int:
    return max(1, block_bytes // max(1, n_labels * itemsize))


def _find_mmap(array: np.ndarray) -> mmap.mmap | None:
    base: Any = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return base


@dataclass(frozen=True, eq=False)
class StreamedArray:
    """An array (typically a read-only ``np.memmap``) streamed in row blocks every pass.

    Each head of an (N, K) or (H, N, K) array is handed to the backend as consecutive
    views of ``block_rows`` rows, so a sweep touches one block (about ``BLOCK_BYTES``) at a
    time. For a read-only, C-contiguous memmap:

    * the next block is read ahead while the consumer works on this one: a helper thread
      maps it in (``madvise(MADV_POPULATE_READ)`` on Linux 5.14 and later: the disk is read
      and the pages are mapped there, so the consumer takes no page faults; elsewhere
      ``MADV_WILLNEED``, an asynchronous read into the page cache);
    * the pages of a block are unmapped from the process (``madvise(MADV_DONTNEED)``) once
      the consumer moves on: they stay in the kernel's page cache, but the process's
      resident memory stays at about two blocks instead of growing to the file size.

    Writable or copy-on-write maps are neither read ahead nor released.
    """

    backend: Backend
    scores: np.ndarray
    n_heads: int
    n_rows: int
    n_labels: int
    stacked: bool
    block_rows: int
    _map: mmap.mmap | None = field(default=None, repr=False)
    _map_address: int = field(default=0, repr=False)

    @classmethod
    def open(
        cls, backend: Backend, scores: np.ndarray, block_bytes: int | None = None, **shape: Any
    ) -> StreamedArray:
        """Wrap ``scores`` (shape already validated: n_heads, n_rows, n_labels, stacked).

        Blocks hold about ``block_bytes`` bytes (default: the module's ``BLOCK_BYTES``).
        """
        block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
        rows = _block_rows(shape["n_labels"], scores.dtype.itemsize, block_bytes)
        mapping = None
        address = 0
        releasable = (
            isinstance(scores, np.memmap)
            and scores.mode == "r"
            and scores.flags.c_contiguous
            and hasattr(mmap, "MADV_DONTNEED")
        )
        if releasable:
            mapping = _find_mmap(scores)
            if mapping is not None:
                address = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
        return cls(backend, scores, **shape, block_rows=rows, _map=mapping, _map_address=address)

    def _pages(self, block: np.ndarray, margin: int = 0) -> tuple[int, int] | None:
        """(offset, length) in the map of the pages holding ``block`` and ``margin`` bytes
        before it, or None for an empty block."""
        if self._map is None or block.nbytes == 0:
            return None
        start = block.ctypes.data - self._map_address
        stop = min(start + block.nbytes, len(self._map))
        start = max(0, start - margin)
        start -= start % mmap.PAGESIZE
        return (start, stop - start) if 0 <= start < stop else None

    def _read_ahead(self, block: np.ndarray) -> None:
        """Map ``block`` in (reading the disk where it must), run on the helper thread."""
        pages = self._pages(block)
        if pages is None:
            return
        if _MADVISE is not None:
            address = self._map_address + pages[0]
            if _MADVISE(address, pages[1], MADV_POPULATE_READ) == 0:
                return
        # an older kernel (or another OS): start an asynchronous read into the page cache
        self._map.madvise(mmap.MADV_WILLNEED, *pages)

    def _release(self, block: np.ndarray) -> None:
        # The kernel maps neighbouring cached pages on a fault ("fault-around", 64 KiB by
        # default), so the next block's first fault re-maps the tail of this one: release
        # a margin before the block too.
        pages = self._pages(block, margin=FAULT_AROUND_BYTES)
        if pages is not None:
            self._map.madvise(mmap.MADV_DONTNEED, *pages)

    @property
    def dtype(self) -> str:
        """The scores' dtype, by name."""
        return str(self.scores.dtype)

    def blocks(self, head: int) -> Iterator[np.ndarray]:
        rows = self.scores[head] if self.stacked else self.scores
        if self.n_rows == 0:  # a rank's empty shard: one (0, K) block, as an array gives
            yield rows
            return
        step = self.block_rows
        views = [rows[start : start + step] for start in range(0, self.n_rows, step)]
        if self._map is None or len(views) == 1:  # nothing to release or to overlap
            yield from views
            return
        with ThreadPoolExecutor(1, thread_name_prefix="equipart-read-ahead") as helper:
            following = views[0]
            ahead: Future = helper.submit(self._read_ahead, following)
            try:
                for index, block in enumerate(views):
                    ahead.result()  # this block is mapped in
                    following = views[index + 1] if index + 1 < len(views) else block[:0]
                    ahead = helper.submit(self._read_ahead, following)
                    try:
                        yield block
                    finally:
                        self._release(block)
            finally:  # a consumer that stopped early: the block read ahead goes too
                ahead.result()
                self._release(following)


@dataclass(frozen=True, eq=False)
class RowBlocks:
    """Scores given as a factory of row blocks: ``factory()`` yields (n_b, K) arrays.

    Pass an instance (or a bare callable) as ``scores``. The factory is called once per pass
    over the rows (one per Sinkhorn iteration, plus one for validation, one per output and
    one per widening round of ``rounding="balanced"``) and must yield the same rows in the
    same order every time; it may refill one buffer for every block, since only one block
    is held at once, so memory is O(block + N + K). Blocks may be any array the chosen
    backend reads.
    ``n_rows`` and ``n_labels`` are optional: when omitted, one extra pass counts them.
    """

    factory: Callable[[], Iterable[Any]]
    n_rows: int | None = None
    n_labels: int | None = None

    def __post_init__(self) -> None:
        if not callable(self.factory):
            raise TypeError(
                "scores: RowBlocks needs a callable that returns an iterable of (n, K) blocks, "
                f"got {type(self.factory).__name__}"
            )
        for name in ("n_rows", "n_labels"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0
            ):
                raise ValueError(f"{name}: expected None or an integer >= 0, got {value!r}")


@dataclass(frozen=True, eq=False)
class FactoryStream:
    """The ``RowSource`` of a :class:`RowBlocks`: one head, every pass checked for shape."""

    backend: Backend
    factory: Callable[[], Iterable[Any]]
    n_rows: int
    n_labels: int
    dtype: str  # the first block's, by name
    n_heads: int = 1
    stacked: bool = False

    def blocks(self, head: int) -> Iterator[Any]:
        seen = 0
        for block in self.factory():
            n_block, n_labels, stacked = _check_block(self.backend, block)
            if stacked or n_labels != self.n_labels:
                raise ValueError(
                    f"scores: the RowBlocks factory yielded a block of shape "
                    f"{tuple(self.backend.shape_dtype(block)[0])}; every block must be 2-D "
                    f"with K={self.n_labels} columns"
                )
            seen += n_block
            if seen > self.n_rows:
                break
            yield block
        if seen != self.n_rows:
            count = f"at least {seen}" if seen > self.n_rows else str(seen)
            raise ValueError(
                f"scores: the RowBlocks factory yielded {count} rows on this pass, expected "
                f"N={self.n_rows}; it must yield the same rows on every call"
            )


def _check_block(backend: Backend, block: Any) -> tuple[int, int, bool]:
    """(rows, K, stacked) of a stream's block, checked as the first one is: an array of
    the first block's library, of a real dtype, with 2 or 3 non-empty dimensions."""
    if not backend.accepts(block):
        raise TypeError(
            f"scores: the RowBlocks factory yielded a {type(block).__module__}."
            f"{type(block).__name__}; every block must be an array of the same library as "
            f"the first (the {backend.name!r} backend reads it)"
        )
    _, n_rows, n_labels, stacked = check_shape(backend, block, allow_empty_rows=True)
    return n_rows, n_labels, stacked


def _open_factory(
    spec: RowBlocks, backend: str | Backend, allow_empty_rows: bool
) -> tuple[Backend, Any]:
    """Pick the backend from the first block; count rows (one pass) unless N and K are given."""
    known = spec.n_rows is not None and spec.n_labels is not None
    first, n_rows, engine = None, 0, None
    for block in spec.factory():
        if first is None:
            first, engine = block, get_backend(backend, block)
            n_block, n_labels, stacked = _check_block(engine, block)
        else:
            n_block = _check_block(engine, block)[0]
        if known:
            break
        n_rows += n_block
    if first is None:
        raise ValueError(
            "scores: the RowBlocks factory yielded no blocks; give it at least one (n, K) block"
        )
    if stacked:
        raise ValueError(
            f"scores: RowBlocks blocks must be 2-D (rows, K), got shape {tuple(first.shape)}; "
            "stream one head at a time"
        )
    n_rows = spec.n_rows if spec.n_rows is not None else n_rows
    n_labels = spec.n_labels if spec.n_labels is not None else n_labels
    if n_labels == 0 or (n_rows == 0 and not allow_empty_rows):
        raise ValueError(
            f"scores: every dimension must be non-empty, got N={n_rows} rows, K={n_labels} labels"
        )
    dtype = str(engine.shape_dtype(first)[1])
    return engine, FactoryStream(engine, spec.factory, n_rows, n_labels, dtype)


def open_source(
    scores: Any, backend: str | Backend = "auto", *, allow_empty_rows: bool = False
) -> tuple[Backend, Any]:
    """The backend and ``RowSource`` for anything accepted as ``scores``.

    * a ``.npy`` path (str or ``os.PathLike``): opened read-only with ``mmap_mode="r"``
      and streamed as below;
    * a ``np.memmap``: streamed in row blocks of about ``BLOCK_BYTES`` (read-only maps
      release each block's pages after use, so resident memory is O(block + N + K));
    * a :class:`RowBlocks` (or a bare callable returning an iterable of blocks): streamed
      from the factory every pass;
    * a :class:`equipart.Factored` (features x prototypes): blocks computed every pass;
    * any other array: handed to the backend whole (:class:`InMemory`).

    ``allow_empty_rows`` admits N = 0 (a rank with no rows in a distributed solve).
    """
    if isinstance(scores, (str, os.PathLike)):
        scores = load_npy(scores)
    elif isinstance(scores, np.matrix):  # its methods return matrices (no keepdims)
        scores = np.asarray(scores)
    elif callable(scores) and not hasattr(scores, "shape"):
        scores = RowBlocks(scores)
    if isinstance(scores, RowBlocks):
        return _open_factory(scores, backend, allow_empty_rows)
    if isinstance(scores, Factored):
        return scores.open(backend, allow_empty_rows=allow_empty_rows)
    engine = get_backend(backend, scores)
    n_heads, n_rows, n_labels, stacked = check_shape(
        engine, scores, allow_empty_rows=allow_empty_rows
    )
    shape = {"n_heads": n_heads, "n_rows": n_rows, "n_labels": n_labels, "stacked": stacked}
    if isinstance(scores, np.memmap):
        return engine, StreamedArray.open(engine, scores, **shape)
    return engine, InMemory(engine, scores, **shape)


def load_npy(path: str | os.PathLike) -> np.memmap:
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ValueError(f"scores: {name!r} is not a file; pass an array or a path to a .npy file")
    try:
        array = np.load(name, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(
            f"scores: could not open {name!r} as a .npy array ({exc}); save scores with "
            "np.save (an .npz archive is not accepted: pass one of its arrays)"
        ) from exc
    if not isinstance(array, np.ndarray):
        raise ValueError(f"scores: {name!r} is not a single .npy array; pass one array's file")
    return array

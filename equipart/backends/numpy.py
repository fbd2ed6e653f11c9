"""The NumPy reference backend: the sweep in the log domain, block by block over rows.

Every pass walks the rows in blocks of about ``BLOCK_ELEMENTS`` elements, so the largest
temporary is one block (a few MB), never N x K. Computation is in the input's precision
(float32 for float16/float32, float64 otherwise); column statistics accumulate in float64.
Works unchanged on ``np.memmap`` inputs and on any strides.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .base import Backend, BlockCheck, ColumnStats, ScoreKind, check_label_range

BLOCK_ELEMENTS = 1 << 19


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """float32 for half and single precision input, float64 for everything else."""
    return np.dtype(np.float32) if dtype in (np.float16, np.float32) else np.dtype(np.float64)


def row_blocks(n_rows: int, n_labels: int, block_elements: int = BLOCK_ELEMENTS) -> Iterator[slice]:
    """Consecutive row slices of about ``block_elements`` scores each (at least one row)."""
    step = max(1, block_elements // max(n_labels, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _scaled(x: np.ndarray, kind: ScoreKind, lam: float, g: np.ndarray) -> np.ndarray:
    """A new block z = lam * L + g in the compute precision. Entries whose lam * L is below
    the float range become -inf (a mask at the dtype's lowest value): no mass, no warning
    (input validation keeps every row's best entry finite)."""
    dtype = compute_dtype(x.dtype)
    with np.errstate(divide="ignore", over="ignore"):
        if kind == "probs":
            z = np.log(x, dtype=dtype)
            z *= dtype.type(lam)
        else:
            z = np.multiply(x, dtype.type(lam), dtype=dtype)
    z += g.astype(dtype)
    return z


def _normalised_exp(z: np.ndarray) -> np.ndarray:
    """In place: v = z - rowmax(z), then Q = exp(v) / rowsum(exp(v)). Returns v's colmax."""
    z -= z.max(axis=1, keepdims=True)
    colmax = z.max(axis=0)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return colmax


def _top_k(z: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest entries, ordered by (-value, index).

    A partial selection (O(K) per row) finds the k largest; rows where the k-th value is
    tied with an entry left outside are redone with a stable full sort, so ties always
    keep the lower index, exactly as a stable descending sort would.
    """
    n_labels = z.shape[1]
    if k >= n_labels:
        return np.argsort(-z, axis=1, kind="stable")
    chosen = np.sort(np.argpartition(z, n_labels - k, axis=1)[:, n_labels - k :], axis=1)
    picked = np.take_along_axis(z, chosen, axis=1)
    kth = picked.min(axis=1, keepdims=True)
    tied = np.flatnonzero((z >= kth).sum(axis=1) > k)
    if tied.size:
        chosen[tied] = np.sort(np.argsort(-z[tied], axis=1, kind="stable")[:, :k], axis=1)
        picked[tied] = np.take_along_axis(z[tied], chosen[tied], axis=1)
    return np.take_along_axis(chosen, np.argsort(-picked, axis=1, kind="stable"), axis=1)


def possible_rows(block: np.ndarray) -> np.ndarray:
    """Per label, the number of rows whose score is above -inf (int64, (K,))."""
    support = np.zeros(block.shape[1], dtype=np.int64)
    for rows in row_blocks(block.shape[0], block.shape[1]):
        support += np.count_nonzero(block[rows] > -np.inf, axis=0)
    return support


class NumpyBackend(Backend):
    """Reference implementation for NumPy arrays and memmaps."""

    name = "numpy"

    @staticmethod
    def accepts(scores: Any) -> bool:
        return isinstance(scores, np.ndarray)

    def shape_dtype(self, scores: Any) -> tuple[tuple[int, ...], np.dtype]:
        if isinstance(scores, np.ma.MaskedArray):  # its mask would be silently ignored
            raise TypeError(
                "scores: a masked array's mask is not read; fill the masked entries with a "
                "mask value (scores.filled(-1e9) for logits, .filled(0) for probabilities) "
                "or pass scores.data"
            )
        return tuple(scores.shape), scores.dtype

    def head(self, scores: np.ndarray, index: int) -> np.ndarray:
        return scores[index]

    def check(self, block: np.ndarray, kind: ScoreKind) -> BlockCheck:
        valid, min_value, max_value, deviation = True, np.inf, -np.inf, 0.0
        min_row_max = np.inf
        support = np.zeros(block.shape[1], dtype=np.int64) if kind == "probs" else None
        for rows in row_blocks(block.shape[0], block.shape[1]):
            x = block[rows]
            row_max = x.max(axis=1)  # NaN in a row with NaN, +inf in one with +inf
            top = float(row_max.max())
            valid = valid and not np.isnan(row_max).any() and top < np.inf
            min_value = min(min_value, float(x.min()))
            max_value = max(max_value, top)
            min_row_max = min(min_row_max, float(row_max.min()))
            if kind == "probs":
                sums = x.sum(axis=1, dtype=np.float64)
                deviation = max(deviation, float(np.abs(sums - 1.0).max()))
                support += np.count_nonzero(x > 0, axis=0)
        if kind != "probs" and valid and min_value == -np.inf:  # masked labels: a 2nd pass
            support = possible_rows(block)
        return BlockCheck(valid, min_value, deviation, max_value, support, min_row_max=min_row_max)
    def sweep(self, block: np.ndarray, kind: ScoreKind, lam: float, g: np.ndarray) -> ColumnStats:
        colsum = np.zeros(block.shape[1])
        colmax = np.full(block.shape[1], -np.inf)
        for rows in row_blocks(block.shape[0], block.shape[1]):
            z = _scaled(block[rows], kind, lam, g)
            np.maximum(colmax, _normalised_exp(z), out=colmax)
            colsum += z.sum(axis=0, dtype=np.float64)
        return ColumnStats(colsum, colmax)

    def labels(self, block: np.ndarray, kind: ScoreKind, lam: float, g: np.ndarray) -> np.ndarray:
        out = np.empty(block.shape[0], dtype=np.int64)
        for rows in row_blocks(block.shape[0], block.shape[1]):
            out[rows] = _scaled(block[rows], kind, lam, g).argmax(axis=1)
        return out

    def codes(self, block: np.ndarray, kind: ScoreKind, lam: float, g: np.ndarray) -> np.ndarray:
        out = np.empty(block.shape, dtype=compute_dtype(block.dtype))
        for rows in row_blocks(block.shape[0], block.shape[1]):
            z = _scaled(block[rows], kind, lam, g)
            _normalised_exp(z)
            out[rows] = z
        return out

    def column_logsumexp(self, block: np.ndarray, kind: ScoreKind, lam: float) -> np.ndarray:
        n_labels = block.shape[1]
        total = np.full(n_labels, -np.inf)
        for rows in row_blocks(block.shape[0], n_labels):
            z = _scaled(block[rows], kind, lam, np.zeros(n_labels))
            top = z.max(axis=0)
            top = np.where(top > -np.inf, top, 0.0).astype(z.dtype)  # (a column all -inf)
            z -= top
            np.exp(z, out=z)
            with np.errstate(divide="ignore"):
                part = np.log(z.sum(axis=0, dtype=np.float64)) + top
            np.logaddexp(total, part, out=total)
        return total

    def top_labels(
        self, block: np.ndarray, kind: ScoreKind, lam: float, g: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        n_rows, n_labels = block.shape
        k = min(k, n_labels)
        indices = np.empty((n_rows, k), dtype=np.int64)
        values = np.empty((n_rows, k), dtype=compute_dtype(block.dtype))
        for rows in row_blocks(n_rows, n_labels):
            z = _scaled(block[rows], kind, lam, g)
            order = _top_k(z, k)
            indices[rows] = order
            values[rows] = np.take_along_axis(z, order, axis=1)
        return indices, values

    def logprob_sum(self, block: np.ndarray, kind: ScoreKind, labels: np.ndarray) -> float:
        if labels.size:  # (take_along_axis would wrap -1 round to the last label)
            check_label_range(int(labels.min()), int(labels.max()), block.shape[1])
        total = 0.0
        for rows in row_blocks(block.shape[0], block.shape[1]):
            x = block[rows]
            picked = np.take_along_axis(x, labels[rows, None], axis=1)[:, 0].astype(np.float64)
            if kind == "probs":
                with np.errstate(divide="ignore"):
                    picked = np.log(picked)
            elif kind == "logits":
                z = x.astype(np.float64)
                top = z.max(axis=1)
                # (x - top) first: top + log(sum) would lose the sum next to a large top
                picked -= top
                picked -= np.log(np.exp(z - top[:, None]).sum(axis=1))
            total += float(picked.sum())
        return total

    def concat(self, parts: list[np.ndarray]) -> np.ndarray:
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def stack(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.stack(parts, axis=0)

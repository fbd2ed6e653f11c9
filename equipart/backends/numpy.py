"""The NumPy reference backend: the array-API passes of ``ArrayAPIBackend`` on NumPy.

Every pass walks the rows in blocks of about ``BLOCK_ELEMENTS`` elements, so the largest
temporary is one block (a few MB), never N x K. Computation is in the input's precision
(float32 for float16/float32, float64 otherwise); column statistics accumulate in float64.
Works unchanged on ``np.memmap`` inputs and on any strides.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .array_api import BLOCK_ELEMENTS, ArrayAPIBackend, row_blocks

__all__ = ["BLOCK_ELEMENTS", "NumpyBackend", "compute_dtype", "possible_rows", "row_blocks"]


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """float32 for half and single precision input, float64 for everything else."""
    return np.dtype(np.float32) if dtype in (np.float16, np.float32) else np.dtype(np.float64)


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


class NumpyBackend(ArrayAPIBackend):
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

    def _exp(self, xp: Any, v: np.ndarray) -> np.ndarray:
        return np.exp(v, out=v)

    def _top_k(self, xp: Any, z: np.ndarray, k: int) -> np.ndarray:
        return _top_k(z, k)

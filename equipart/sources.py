"""Row sources: how the driver walks the rows of each head.

An in-memory array (NumPy, memmap, torch, CuPy) is one block per head: the backend does
its own inner blocking. Streaming and sharded sources (chunks read from disk, one shard per
rank) implement the same ``RowSource`` protocol of ``equipart.solver``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .backends.base import Backend


@dataclass(frozen=True)
class InMemory:
    """Scores of shape (N, K) (one head) or (H, N, K), handed to the backend whole."""

    backend: Backend
    scores: Any
    n_heads: int
    n_rows: int
    n_labels: int
    stacked: bool  # whether scores has a leading head axis

    def blocks(self, head: int) -> Iterator[Any]:
        yield self.backend.head(self.scores, head) if self.stacked else self.scores

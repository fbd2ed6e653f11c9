"""Hard labels from a solved dual g: one function per rounding, same signature.

    rounder(source, backend, head, kind, lam, g, constraint) -> labels of that head

``argmax`` gives labels_i = argmax_j (lam * L_ij + g_j), the SeLa reference rounding:
near-balanced but not exactly (its counts deviate from the target by the solve's error
plus the rounding of fractional rows).

``balanced`` gives every label a count within its integer bounds (``count_bounds``) and
is a certified exact optimum of the hard-assignment LP; see ``equipart.balanced``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .backends.base import Backend, ScoreKind
from .balanced import balanced_labels
from .marginals import ColumnConstraint
from .solver import RowSource

Rounder = Callable[[RowSource, Backend, int, ScoreKind, float, np.ndarray, ColumnConstraint], Any]


def argmax_labels(
    source: RowSource,
    backend: Backend,
    head: int,
    kind: ScoreKind,
    lam: float,
    g: np.ndarray,
    constraint: ColumnConstraint,
) -> Any:
    """labels_i = argmax_j (lam * L_ij + g_j) (first index on ties)."""
    parts = [backend.labels(block, kind, lam, g) for block in source.blocks(head)]
    return backend.concat(parts)


ROUNDERS: dict[str, Rounder] = {"argmax": argmax_labels, "balanced": balanced_labels}

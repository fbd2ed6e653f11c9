"""The JAX backend: JAX arrays on any of JAX's devices, results on the input's device.

Every pass is the array-API implementation of ``ArrayAPIBackend``; this module supplies
only what JAX does its own way. JAX arrays are immutable, so N-sized results are the row
blocks' results concatenated (one extra copy of the result). JAX computes in 32 bits
unless 64-bit types are enabled, yet the column statistics accumulate in float64 and
float64 scores (which exist only where 64-bit types were enabled when they were made)
compute in float64: every pass runs with 64-bit types enabled for its own operations
(``jax.enable_x64``), never rounding float64 scores to float32. Labels are int64, and
results keep their dtype outside the pass; arithmetic on float64 results outside a
64-bit scope is rounded by JAX to 32 bits, as for any float64 JAX array.

Registered through the ``equipart.backends`` entry-point group (``pip install
'equipart[jax]'``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .array_api import ArrayAPIBackend

__all__ = ["JaxBackend"]

try:
    _x64 = jax.enable_x64
except AttributeError:  # JAX before 0.7: the experimental context manager
    from jax.experimental import enable_x64 as _x64


class JaxBackend(ArrayAPIBackend):
    """JAX arrays, through the array-API passes."""

    name = "jax"

    @staticmethod
    def accepts(scores: Any) -> bool:
        return isinstance(scores, jax.Array)

    def shape_dtype(self, scores: jax.Array) -> tuple[tuple[int, ...], str]:
        return tuple(scores.shape), scores.dtype.name

    def _scope(self, x: Any) -> AbstractContextManager:
        return _x64(True)

    def _assemble(
        self, xp: Any, x: Any, parts: Sequence[tuple[tuple[int, ...], Any]], compute: Callable
    ) -> list[Any]:
        blocks = [compute(x[rows]) for rows in self._rows(x)]
        if not blocks:
            return [xp.empty((0, *tail), dtype=dtype) for tail, dtype in parts]
        return [xp.concat(column, axis=0) for column in zip(*blocks, strict=True)]

    def to_numpy(self, array: Any) -> np.ndarray:
        if isinstance(array, jax.Array) and array.dtype == jnp.bfloat16:
            return np.asarray(array.astype(jnp.float32))  # NumPy has no bfloat16: exact
        return np.asarray(array)

    def from_numpy(self, array: np.ndarray, like: Any) -> jax.Array:
        """``array`` on the device of ``like``, in its own dtype (int64 and float64 too)."""
        with _x64(True):
            return jax.device_put(array, like.device if isinstance(like, jax.Array) else None)

"""Every pass over the scores, written once against the array API standard.

``ArrayAPIBackend`` implements the ``Backend`` contract (see ``equipart.backends.base`` for
the notation) for any library that ``array_api_compat.array_namespace`` knows: NumPy,
torch, CuPy and JAX. Each pass walks the rows in blocks of about ``block_elements``
scores, so the largest temporary is one block, never N x K. Computation is in float32 for
16- and 32-bit floating-point scores and in float64 otherwise; column statistics
accumulate in float64 on the scores' device and cross to the host once per call.

A library's backend subclasses this one and supplies what the standard leaves to it:
``accepts``, ``shape_dtype`` and the host copies (``to_numpy``, ``from_numpy``), and
where it has something better, the hooks below (a faster top-k selection, a device scope,
an exp that flushes subnormals) or a kernel for a whole pass (the Triton and CuPy sweeps).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, ClassVar

import numpy as np
from array_api_compat import array_namespace, device

from .base import Backend, BlockCheck, ColumnStats, ScoreKind, check_label_range

__all__ = ["ArrayAPIBackend", "compute_dtype", "row_blocks"]

BLOCK_ELEMENTS = 1 << 19


def row_blocks(n_rows: int, n_labels: int, block_elements: int = BLOCK_ELEMENTS) -> Iterator[slice]:
    """Consecutive row slices of about ``block_elements`` scores each (at least one row)."""
    step = max(1, block_elements // max(n_labels, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def compute_dtype(xp: Any, dtype: Any) -> Any:
    """The namespace's float32 for floating-point dtypes of at most 32 bits (float16,
    bfloat16, float32), its float64 for everything else."""
    single = xp.isdtype(dtype, "real floating") and xp.finfo(dtype).bits <= 32
    return xp.float32 if single else xp.float64


class ArrayAPIBackend(Backend):
    """The blockwise passes for arrays of any array-API library (see the module docs)."""

    block_elements: ClassVar[int] = BLOCK_ELEMENTS

    # -- hooks: what a library may do its own way -----------------------------------------

    def _data(self, block: Any) -> Any:
        """The array the passes read (torch: detached from autograd)."""
        return block

    def _scope(self, x: Any) -> AbstractContextManager:
        """A context every pass runs in (CuPy: the array's device; JAX: 64-bit types)."""
        return nullcontext()

    def _rows(self, x: Any) -> Iterator[slice]:
        """The row blocks of ``x``."""
        return row_blocks(x.shape[0], x.shape[1], self.block_elements)

    def _exp(self, xp: Any, v: Any) -> Any:
        """exp(v) for v <= 0; may overwrite v."""
        return xp.exp(v)

    def _top_k(self, xp: Any, z: Any, k: int) -> Any:
        """Column indices of each row's k largest z, ordered by (-value, index); may
        overwrite z with equal values (-0.0 by +0.0)."""
        return xp.argsort(z, axis=1, descending=True, stable=True)[:, :k]

    def _assemble(
        self, xp: Any, x: Any, parts: Sequence[tuple[tuple[int, ...], Any]], compute: Callable
    ) -> list[Any]:
        """Arrays of shapes (n, *tail) and dtypes ``parts`` holding ``compute(x[rows])``
        (a tuple, one block per array) for every row block: written into arrays allocated
        once (libraries with immutable arrays concatenate the blocks instead)."""
        at = device(x)
        outs = [xp.empty((x.shape[0], *tail), dtype=dtype, device=at) for tail, dtype in parts]
        for rows in self._rows(x):
            for out, block in zip(outs, compute(x[rows]), strict=True):
                out[rows, ...] = block
        return outs

    # -- shared steps --------------------------------------------------------------------

    @contextmanager
    def _reading(self, block: Any) -> Iterator[tuple[Any, Any]]:
        """(x, xp): the block as the passes read it and its namespace, within ``_scope``."""
        x = self._data(block)
        with self._scope(x):
            yield x, array_namespace(x)

    def _dual(self, xp: Any, g: np.ndarray, x: Any) -> Any:
        """g in the compute precision of ``x`` on its device, rounded on the host."""
        single = compute_dtype(xp, x.dtype) == xp.float32
        host = np.asarray(g, dtype=np.float32 if single else np.float64)
        return xp.asarray(host, device=device(x))

    def _scaled(self, xp: Any, x: Any, kind: ScoreKind, lam: float, g: Any) -> Any:
        """A new block z = lam * L + g in the compute precision (``x`` is not modified).
        Entries whose lam * L is below the float range become -inf (no mass, no warning;
        input validation keeps every row's best entry finite)."""
        x = xp.astype(x, compute_dtype(xp, x.dtype), copy=False)
        with np.errstate(divide="ignore", over="ignore"):
            if kind == "probs":
                z = xp.log(x)
                z *= float(lam)
            else:
                z = x * float(lam)
            z += g
        return z

    def _normalised(self, xp: Any, z: Any) -> tuple[Any, Any]:
        """(Q, colmax of v) with v = z - rowmax(z), Q = exp(v) / rowsum(exp(v)); may
        overwrite z."""
        z -= xp.max(z, axis=1, keepdims=True)
        colmax = xp.max(z, axis=0)
        q = self._exp(xp, z)
        q /= xp.sum(q, axis=1, keepdims=True)
        return q, colmax

    def _host(self, xp: Any, values: list[Any]) -> np.ndarray:
        """Equal-shaped device arrays as one host float64 array (one copy)."""
        return self.to_numpy(xp.stack([xp.astype(v, xp.float64) for v in values]))

    # -- the Backend methods ---------------------------------------------------------------

    def head(self, scores: Any, index: int) -> Any:
        return scores[index]

    def check(self, block: Any, kind: ScoreKind) -> BlockCheck:
        with self._reading(block) as (x, xp):
            lows, highs, lowest_bests, deviations = [], [], [], []
            support = xp.zeros(x.shape[1], dtype=xp.int64, device=device(x))
            for rows in self._rows(x):
                part = x[rows]
                lows.append(xp.min(part))
                row_max = xp.max(part, axis=1)
                highs.append(xp.max(row_max))
                lowest_bests.append(xp.min(row_max))
                if kind == "probs":
                    sums = xp.sum(part, axis=1, dtype=xp.float64)
                    deviations.append(xp.max(xp.abs(sums - 1.0)))
                    support += xp.count_nonzero(part > 0, axis=0)
            counts = self.to_numpy(support) if kind == "probs" else None
            if not lows:  # no rows
                return BlockCheck(True, np.inf, 0.0, -np.inf, counts, min_row_max=np.inf)
            # min and max propagate NaN, and +inf is the maximum: no NaN or +inf iff both
            # extremes are numbers and the maximum is below +inf (-inf may be the minimum:
            # an impossible label)
            extremes = [xp.min(xp.stack(lows)), xp.max(xp.stack(highs))]
            extremes.append(xp.min(xp.stack(lowest_bests)))
            if deviations:
                extremes.append(xp.max(xp.stack(deviations)))
            low, high, lowest_best, *deviation = self._host(xp, extremes).tolist()
            deviation = deviation[0] if deviation else 0.0
            valid = not (np.isnan(low) or np.isnan(high)) and high < np.inf
            if kind != "probs" and valid and low == -np.inf:  # masked labels: a 2nd pass
                counts = self.to_numpy(
                    sum(xp.count_nonzero(x[rows] > -np.inf, axis=0) for rows in self._rows(x))
                )
        return BlockCheck(valid, low, deviation, high, counts, min_row_max=lowest_best)

    def sweep(self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray) -> ColumnStats:
        with self._reading(block) as (x, xp):
            g_d = self._dual(xp, g, x)
            colsum = xp.zeros(x.shape[1], dtype=xp.float64, device=device(x))
            colmax = xp.full(x.shape[1], -np.inf, dtype=g_d.dtype, device=device(x))
            for rows in self._rows(x):
                q, block_max = self._normalised(xp, self._scaled(xp, x[rows], kind, lam, g_d))
                colmax = xp.maximum(colmax, block_max)
                colsum += xp.sum(q, axis=0, dtype=xp.float64)
            host = self._host(xp, [colsum, colmax])
        return ColumnStats(host[0].copy(), host[1].copy())

    def labels(self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray) -> Any:
        with self._reading(block) as (x, xp):
            g_d = self._dual(xp, g, x)

            def best(part: Any) -> tuple[Any]:
                return (xp.argmax(self._scaled(xp, part, kind, lam, g_d), axis=1),)

            return self._assemble(xp, x, [((), xp.int64)], best)[0]

    def codes(self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray) -> Any:
        with self._reading(block) as (x, xp):
            g_d = self._dual(xp, g, x)

            def q(part: Any) -> tuple[Any]:
                return (self._normalised(xp, self._scaled(xp, part, kind, lam, g_d))[0],)

            return self._assemble(xp, x, [((x.shape[1],), g_d.dtype)], q)[0]

    def top_labels(
        self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray, k: int
    ) -> tuple[Any, Any]:
        with self._reading(block) as (x, xp):
            k = min(int(k), x.shape[1])
            g_d = self._dual(xp, g, x)

            def best(part: Any) -> tuple[Any, Any]:
                z = self._scaled(xp, part, kind, lam, g_d)
                order = self._top_k(xp, z, k)
                return order, xp.take_along_axis(z, order, axis=1)

            parts = [((k,), xp.int64), ((k,), g_d.dtype)]
            indices, values = self._assemble(xp, x, parts, best)
        return indices, values

    def column_logsumexp(self, block: Any, kind: ScoreKind, lam: float) -> np.ndarray:
        with self._reading(block) as (x, xp):
            zeros = self._dual(xp, np.zeros(x.shape[1]), x)
            total = xp.full(x.shape[1], -np.inf, dtype=xp.float64, device=device(x))
            for rows in self._rows(x):
                z = self._scaled(xp, x[rows], kind, lam, zeros)
                top = xp.max(z, axis=0)
                top = xp.where(top > -np.inf, top, xp.zeros_like(top))  # a column all -inf
                z -= top
                with np.errstate(divide="ignore"):
                    part = xp.log(xp.sum(xp.exp(z), axis=0, dtype=xp.float64)) + top
                total = xp.logaddexp(total, part)
            return self.to_numpy(total)

    def logprob_sum(self, block: Any, kind: ScoreKind, labels: Any) -> float:
        with self._reading(block) as (x, xp):
            labels = xp.asarray(labels, dtype=xp.int64, device=device(x))
            if labels.shape[0]:  # (take_along_axis would wrap -1 round to the last label)
                low, high = self.to_numpy(xp.stack([xp.min(labels), xp.max(labels)])).tolist()
                check_label_range(low, high, x.shape[1])
            total = xp.zeros((), dtype=xp.float64, device=device(x))
            for rows in self._rows(x):
                part = x[rows]
                picked = xp.take_along_axis(part, labels[rows, None], axis=1)[:, 0]
                picked = xp.astype(picked, xp.float64)
                with np.errstate(divide="ignore"):
                    if kind == "probs":
                        picked = xp.log(picked)
                    elif kind == "logits":
                        z = xp.astype(part, xp.float64)
                        top = xp.max(z, axis=1)
                        # (x - top) first: top + log(sum) would lose the sum next to a large top
                        picked = (picked - top) - xp.log(xp.sum(xp.exp(z - top[:, None]), axis=1))
                total += xp.sum(picked)
            return float(self.to_numpy(total))

    def concat(self, parts: list[Any]) -> Any:
        if len(parts) == 1:
            return parts[0]
        with self._scope(parts[0]):
            return array_namespace(*parts).concat(parts, axis=0)

    def stack(self, parts: list[Any]) -> Any:
        with self._scope(parts[0]):
            return array_namespace(*parts).stack(parts, axis=0)

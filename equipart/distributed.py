r"""Distributed solves over torch.distributed: every rank holds its own rows, ranks share g.

A sharded solve is the single-process solve on the concatenation of every rank's rows
(in rank order). It works because the sweep's only cross-row quantities are the per-column
statistics of ``ColumnStats``: for rows split over ranks r = 0..R-1,

    colsum_j = sum_r colsum_j^(r)        (all_reduce SUM; masses in counts, Q_ij <= 1)
    colmax_j = max_r colmax_j^(r)        (all_reduce MAX; the underflow guard)

which is the log-sum-exp of the column in a numerically safe split form (a sum of
already-normalised masses plus a running maximum), so every rank sees the same column
masses, computes the same g update and error, and therefore stops at the same iteration:
nothing rank-local enters a decision. Communication is O(K) per iteration (2K + 2 float64
numbers in two all-reduces, plus one more tiny all-reduce per check when a callback is
given); the N x K scores never move.

What else crosses ranks, once per call:

* a handshake (all_gather of a fixed-length descriptor per rank) before any solver work:
  every rank's local row count N_r (the marginals bind to the global N = sum_r N_r), and
  the arguments that must agree: the layout of the scores (K, H, their dtype, the
  prototypes of ``equipart.Factored`` scores) and the fields of the problem and options
  objects marked ``agreed`` (``equipart.problem``: lam or 1/eps, input, marginals, warm
  start, tol, max_iter, check_every, acceleration, whether a callback is given, n_iter
  for codes, rounding). A mismatch raises ValueError naming the argument on every rank;
* the final dual g, taken from group rank 0 (so the warm-start state is bit-identical);
* the objective's partial sums.

Faults. Every collective carries a failure flag. A rank whose local work raises (input
validation, reading a block, a sweep, the callback, rounding) still joins the next
collective with the flag set and then raises its own error; the other ranks raise
:class:`DistributedSolveError` naming it, at once. A rank that dies or stops calling makes
the collective fail inside torch.distributed (connection closed, or the group's timeout,
``init_process_group(timeout=...)``), which is re-raised as DistributedSolveError: never a
hang past the timeout, never a wrong answer.

``group=None`` is a single-process solve even when torch.distributed is initialised;
``group="default"`` uses the default (WORLD) process group; a ``ProcessGroup`` uses that
group (this process must be a member). Gloo groups reduce CPU tensors, NCCL groups CUDA
tensors on the current device; scores may be on any backend either way.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from .backends.base import Backend, ColumnStats, ScoreKind
from .problem import Problem, handshake_fields, handshake_values
from .result import Assignment
from .solver import asks_to_stop

__all__ = ["DistributedSolveError", "RankGroup", "SingleProcess", "open_group"]

# The descriptor every rank contributes to the handshake, after [failed, n_rows]: the
# layout of the scores and the agreed fields of the problem and options objects
# (``equipart.problem``). Numeric fields are compared as numbers; the others as CRC32
# fingerprints of a canonical text.
FIELDS, NUMERIC = handshake_fields()
# Roundings available across ranks: "argmax" needs only the shared dual; "balanced" gathers
# every rank's candidate labels once per widening round (see RankGroup.rounder).
SHARDED_ROUNDINGS = ("auto", "argmax", "balanced")


class DistributedSolveError(RuntimeError):
    """Another rank of the group failed, died or timed out during a distributed solve."""


def fingerprint(value: Any) -> float:
    """A CRC32 of a canonical text (float64 arrays by their bytes), exact in a float64."""
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value, dtype=np.float64).tobytes()
    else:
        data = repr(value).encode()
    return float(zlib.crc32(data))


def _same(a: float, b: float) -> bool:
    """Equal, or both absent (NaN: a field that call does not use)."""
    return bool(a == b or (np.isnan(a) and np.isnan(b)))


class SingleProcess:
    """The no-communication stand-in used when ``group=None``: every hook is the identity."""

    sharded = False
    reduce = None

    @contextmanager
    def validating(self) -> Iterator[None]:
        yield

    def agree(self, entry: str, problem: Problem, *settings: Any) -> int:
        return problem.n_rows

    def shard(self, problem: Problem, n_rows: int) -> Problem:
        return problem

    def wrap_callback(self, callback: Callable[[int, float], Any] | None) -> Any:
        return callback

    def rounder(self, rounding: str) -> None:
        return None

    def same_dual(self, g: np.ndarray) -> np.ndarray:
        return g

    def total_counts(self, local: Callable[[], np.ndarray], n_labels: int) -> np.ndarray:
        return local()

    def total_support(
        self, supports: list[np.ndarray | None], n_labels: int, stranded: int
    ) -> tuple[list, int]:
        return supports, stranded

    def raise_failures(self, what: str) -> None:
        pass

    @contextmanager
    def rounding(self) -> Iterator[None]:
        yield

    def finish(self, result: Assignment | None) -> Assignment:
        assert result is not None
        return result


def open_group(group: Any) -> SingleProcess | RankGroup:
    """Resolve the ``group=`` argument: None, ``"default"`` or a torch ProcessGroup."""
    if group is None:
        return SingleProcess()
    try:
        import torch.distributed as dist
    except ImportError as exc:
        raise ValueError(
            f"group: a distributed solve needs torch.distributed ({exc}); install "
            "'equipart[torch]' or pass group=None"
        ) from exc
    if not dist.is_available():
        raise ValueError("group: this torch build has no torch.distributed; pass group=None")
    if isinstance(group, str):
        if group != "default":
            raise ValueError(
                f"group: expected None, 'default' or a torch.distributed ProcessGroup, got "
                f"{group!r}"
            )
        if not dist.is_initialized():
            raise ValueError(
                "group: 'default' needs torch.distributed initialised first "
                "(dist.init_process_group(...)); pass group=None for a single-process solve"
            )
        group = dist.group.WORLD
    elif not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            "group: expected None, 'default' or a torch.distributed ProcessGroup, got "
            f"{type(group).__name__}"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(
            "group: this process is not a member of the given ProcessGroup; call only on "
            "the group's ranks"
        )
    return RankGroup(group, rank, dist.get_world_size(group))


class _Shard:
    """This rank's rows, seen with the global row count; reading failures are recorded."""

    def __init__(self, source: Any, comm: RankGroup, n_rows: int) -> None:
        self.source = source
        self.comm = comm
        self.n_heads = source.n_heads
        self.n_labels = source.n_labels
        self.stacked = source.stacked
        self.dtype = source.dtype
        self.n_rows = n_rows  # global N: the shape of the state and the objective's divisor
        self.local_rows = source.n_rows

    def blocks(self, head: int) -> Iterator[Any]:
        if self.comm.failure is not None:
            return
        iterator = iter(self.source.blocks(head))
        while True:
            try:
                block = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                self.comm.record(exc)
                return
            yield block


class _GuardedBackend:
    """Delegates to a backend; a failing sweep is recorded and contributes nothing."""

    def __init__(self, backend: Backend, comm: RankGroup) -> None:
        self._backend = backend
        self._comm = comm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def for_solve(self) -> _GuardedBackend:
        return _GuardedBackend(self._backend.for_solve(), self._comm)

    def sweep(self, block: Any, kind: ScoreKind, lam: float, g: np.ndarray) -> ColumnStats:
        if self._comm.failure is None:
            try:
                return self._backend.sweep(block, kind, lam, g)
            except Exception as exc:
                self._comm.record(exc)
        return ColumnStats.empty(g.shape[0])

    def column_logsumexp(self, block: Any, kind: ScoreKind, lam: float) -> np.ndarray:
        if self._comm.failure is None:
            try:
                return self._backend.column_logsumexp(block, kind, lam)
            except Exception as exc:
                self._comm.record(exc)
        return np.full(block.shape[1], -np.inf)


class RankGroup:
    """One rank's view of a distributed solve: collectives with failure flags."""

    sharded = True

    def __init__(self, group: Any, rank: int, world_size: int) -> None:
        import torch
        import torch.distributed as dist

        self._torch = torch
        self._dist = dist
        self.group = group
        self.rank = rank
        self.world_size = world_size
        # A pure NCCL group reduces CUDA tensors; Gloo (or a mixed "cpu:gloo,cuda:nccl"
        # group) reduces host tensors.
        uses_nccl = str(dist.get_backend(group)).lower() == "nccl"
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if uses_nccl else torch.device("cpu")
        )
        self.failure: BaseException | None = None
        self.n_reduced = 0

    # -- local failures ----------------------------------------------------------------
    def record(self, exc: BaseException) -> None:
        """Remember this rank's first local error; the next collective announces it."""
        if self.failure is None:
            self.failure = exc

    def _raise_if_failed(self, flags: np.ndarray, what: str) -> None:
        if self.failure is not None:
            raise self.failure
        n_failed = round(flags[0])
        if n_failed:
            who = (
                f"rank {round(flags[1]) - 1}"
                if n_failed == 1
                else f"{n_failed} ranks of the group"
            )
            raise DistributedSolveError(
                f"equipart: {who} (of {self.world_size}) failed before the {what}; rank "
                f"{self.rank} stops too. The cause is in that rank's own error."
            )

    # -- collectives -------------------------------------------------------------------
    def _call(self, what: str, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            operation(*args, group=self.group, **kwargs)
        except Exception as exc:
            raise DistributedSolveError(
                f"equipart: the {what} failed on rank {self.rank} of {self.world_size}: a peer "
                "died, left, or stopped calling (mismatched calls), or the process group's "
                f"timeout (init_process_group(timeout=...)) expired. Cause: {exc}"
            ) from exc

    def _tensor(self, values: np.ndarray) -> Any:
        return self._torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(
            self.device
        )

    def _sum(self, payload: np.ndarray, what: str) -> np.ndarray:
        """all_reduce SUM of [n_failed, failed_rank + 1, *payload]; raises on any failure."""
        failed = self.failure is not None
        head = np.array([1.0, self.rank + 1.0]) if failed else np.zeros(2)
        buffer = self._tensor(np.concatenate([head, np.asarray(payload, dtype=np.float64)]))
        self._call(what, self._dist.all_reduce, buffer, op=self._dist.ReduceOp.SUM)
        out = buffer.cpu().numpy()
        self._raise_if_failed(out[:2], what)
        return out[2:]

    def _max(self, payload: np.ndarray, what: str) -> np.ndarray:
        # a copy: on the CPU the tensor would share the caller's array, reduced in place
        buffer = self._tensor(np.array(payload, dtype=np.float64))
        self._call(what, self._dist.all_reduce, buffer, op=self._dist.ReduceOp.MAX)
        return buffer.cpu().numpy()

    # -- the hooks the public API calls, in order ---------------------------------------
    @contextmanager
    def validating(self) -> Iterator[None]:
        """Local input checks; a failure is announced in the handshake, then re-raised."""
        try:
            yield
        except Exception as exc:
            self.record(exc)
            self._handshake(0, {})
            raise

    def agree(self, entry: str, problem: Problem, *settings: Any) -> int:
        """The handshake: check that the call (``entry``), the layout of the scores and
        the agreed fields of ``problem`` and ``settings`` (``equipart.problem``) are the
        same on every rank; return the global N."""
        return self._handshake(problem.n_rows, handshake_values(entry, problem, *settings))

    def _handshake(self, n_rows: int, fields: dict[str, Any]) -> int:
        mine = np.full(2 + len(FIELDS), np.nan)
        mine[0] = 0.0 if self.failure is None else 1.0
        mine[1] = n_rows
        for position, name in enumerate(FIELDS):
            if name in fields and fields[name] is not None:
                value = fields[name]
                mine[2 + position] = float(value) if name in NUMERIC else fingerprint(value)
        parts = [self._tensor(np.zeros_like(mine)) for _ in range(self.world_size)]
        self._call("input handshake", self._dist.all_gather, parts, self._tensor(mine))
        table = np.stack([part.cpu().numpy() for part in parts])
        failed = np.flatnonzero(table[:, 0] > 0)
        flags = np.array([failed.size, failed[0] + 1.0 if failed.size else 0.0])
        self._raise_if_failed(flags, "input handshake (it rejected its own inputs)")
        for position, name in enumerate(FIELDS):
            column = table[:, 2 + position]
            if not all(_same(v, column[0]) for v in column):
                raise ValueError(self._disagreement(name, column))
        rounding = fields.get("rounding")
        if rounding is not None and rounding not in SHARDED_ROUNDINGS:
            raise NotImplementedError(
                f"rounding: {rounding!r} is not available across ranks yet; use one of "
                f"{SHARDED_ROUNDINGS} with group=, or gather the scores and solve in one process"
            )
        return int(table[:, 1].sum())

    def _disagreement(self, name: str, column: np.ndarray) -> str:
        if name == "entry":
            return (
                "group: the ranks called different functions (assign_labels on some, "
                "sinkhorn_codes on others); every rank of the group must make the same call"
            )
        if name in NUMERIC:
            values = ", ".join(f"rank {r}: {v:g}" for r, v in enumerate(column))
            detail = f"({values})"
        else:
            differ = [r for r, v in enumerate(column) if not _same(v, column[0])]
            detail = f"(rank 0 and rank {differ[0]} differ)"
        return (
            f"{name}: the ranks of the group passed different values {detail}; every rank of "
            f"a distributed solve must pass the same {name}"
        )

    def shard(self, problem: Problem, n_rows: int) -> Problem:
        """The problem as this rank solves it: its reads and sweeps guarded, the shard
        reporting the global row count, column statistics reduced across the ranks."""
        source = _Shard(problem.source, self, n_rows)
        backend = _GuardedBackend(problem.backend, self)
        return replace(problem, source=source, backend=backend, reduce=self.reduce)

    def reduce(self, stats: ColumnStats) -> ColumnStats:
        """The ``run_sinkhorn`` reducer: SUM of colsum, MAX of colmax over the ranks."""
        self.n_reduced += 1
        what = f"column-statistics all-reduce (sweep {self.n_reduced})"
        colsum = self._sum(stats.colsum, what)
        colmax = self._max(stats.colmax, what)
        return ColumnStats(colsum, colmax)

    def total_support(
        self, supports: list[np.ndarray | None], n_labels: int, stranded: int
    ) -> tuple[list, int]:
        """Each head's label support and the count of rows stranded on closed labels,
        summed over the ranks (one all-reduce; every rank calls it for probabilities). A
        rank whose backend did not count a support (None) sends NaN, which turns that
        head's check off on every rank."""
        payload = [np.full(n_labels, np.nan) if s is None else s for s in supports]
        total = self._sum(np.concatenate([*payload, [stranded]]), "label-support all-reduce")
        heads = np.split(total[:-1], len(supports))
        return [None if np.isnan(t).any() else t for t in heads], int(total[-1])

    def wrap_callback(self, callback: Callable[[int, float], Any] | None) -> Any:
        """A callback that stops every rank when any rank's callback returns True."""
        if callback is None:
            return None

        def synced(iteration: int, error: float) -> bool:
            stop = 0.0
            if self.failure is None:
                try:
                    stop = 1.0 if asks_to_stop(callback(iteration, error)) else 0.0
                except Exception as exc:
                    self.record(exc)
            return bool(self._sum(np.array([stop]), f"callback at iteration {iteration}")[0])

        return synced

    def same_dual(self, g: np.ndarray) -> np.ndarray:
        """Group rank 0's dual on every rank (SUM of g on rank 0 and zeros elsewhere)."""
        g = np.asarray(g, dtype=np.float64)
        mine = g.ravel() if self.rank == 0 else np.zeros(g.size)
        return self._sum(mine, "final dual exchange").reshape(g.shape)

    def total_counts(self, local: Callable[[], np.ndarray], n_labels: int) -> np.ndarray:
        """This rank's label counts (``local()``, int64 (K,)) summed over the ranks, in
        one all-reduce that every rank joins (a rank whose ``local`` fails joins it with
        its failure flag set, and every rank raises)."""
        counts = np.zeros(n_labels)
        if self.failure is None:
            try:
                counts = local()
            except Exception as exc:
                self.record(exc)
        return self._sum(counts, "label-count all-reduce").astype(np.int64)

    def rounder(self, rounding: str) -> Callable[..., Any] | None:
        """The rounder to use across ranks (None: the single-process one is correct)."""
        return self._balanced_labels if rounding == "balanced" else None

    def _balanced_labels(
        self,
        source: _Shard,
        backend: Backend,
        head: int,
        kind: ScoreKind,
        lam: float,
        g: np.ndarray,
        constraint: Any,
    ) -> Any:
        """Exact global counts: ``equipart.balanced`` on every rank's candidates at once.

        Each round, every rank ranks its rows' ``width`` best labels at the current prices
        (``Backend.top_labels``), all ranks all-gather them (O(N * width) numbers, padded
        to the largest shard), group rank 0 solves the restricted transport problem over
        all N rows (``solve_candidates``) and shares the labels, prices and certificate
        (one SUM all-reduce of N + K + 4 numbers), and every rank keeps its own rows'
        labels. Rounds widen the candidates exactly as the single-process rounder does, so
        the labels meet the global bands [lo, hi] and are a certified LP optimum.
        """
        from .balanced import FIRST_WIDTH, WIDEN, solve_candidates

        lo, hi = constraint.count_bounds()
        n_labels = lo.shape[0]
        width = min(FIRST_WIDTH, n_labels)
        prices = np.asarray(g, dtype=np.float64)
        like = None  # a block of this rank: the library and device of its labels
        while True:
            packed = np.zeros((0, 2 * width))
            if self.failure is None:
                try:
                    parts = [np.zeros((0, 2 * width))]
                    for block in source.blocks(head):  # afresh: a loader may reuse a buffer
                        idx, val = backend.top_labels(block, kind, lam, prices, width)
                        parts.append(np.hstack([backend.to_numpy(idx), backend.to_numpy(val)]))
                        like = block
                    packed = np.concatenate(parts).astype(np.float64)
                except Exception as exc:
                    self.record(exc)
            counts = np.zeros(self.world_size)
            counts[self.rank] = packed.shape[0]
            counts = self._sum(counts, "balanced-rounding shard sizes").astype(np.int64)
            padded = np.zeros((max(1, int(counts.max())), 2 * width))
            padded[: packed.shape[0]] = packed
            gathered = [self._tensor(np.zeros_like(padded)) for _ in range(self.world_size)]
            self._call(
                "balanced-rounding candidate gather",
                self._dist.all_gather,
                gathered,
                self._tensor(padded),
            )
            n_rows = int(counts.sum())
            shared = np.zeros(4 + n_labels + n_rows)
            if self.rank == 0:
                try:
                    every = np.concatenate(
                        [t.cpu().numpy()[:n] for t, n in zip(gathered, counts, strict=True)]
                    )
                    solution = solve_candidates(
                        every[:, :width].astype(np.int64),
                        every[:, width:],
                        prices,
                        lo,
                        hi,
                        complete=width == n_labels,
                    )
                    shared[:4] = [solution.certified, solution.feasible, 0.0, 0.0]
                    shared[4 : 4 + n_labels] = solution.prices
                    shared[4 + n_labels :] = solution.labels
                except Exception as exc:
                    self.record(exc)
            del gathered
            shared = self._sum(shared, "balanced-rounding result")
            certified, feasible = bool(shared[0]), bool(shared[1])
            if certified or width == n_labels:
                break
            width = min(n_labels, width * WIDEN)
            prices = shared[4 : 4 + n_labels]
        if not feasible:
            raise ValueError(
                "marginals: no labelling gives every label a count within its bounds using "
                "labels of non-zero probability; give impossible labels a zero size"
            )
        start = int(counts[: self.rank].sum())
        mine = shared[4 + n_labels + start : 4 + n_labels + start + int(counts[self.rank])]
        return backend.from_numpy(mine.astype(np.int64), like=like)

    @contextmanager
    def rounding(self) -> Iterator[None]:
        """Local rounding; a failure is recorded and announced by :meth:`finish`."""
        try:
            yield
        except Exception as exc:
            self.record(exc)

    def raise_failures(self, what: str) -> None:
        """A collective after local work with no collective of its own (the codes pass):
        this rank's recorded failure is raised here, the others get DistributedSolveError."""
        self._sum(np.zeros(0), what)

    def finish(self, result: Assignment | None) -> Assignment:
        """Sum the objective's per-rank parts (each divided by the global N already)."""
        local = 0.0 if result is None else result.objective
        total = self._sum(np.array([local]), "objective all-reduce")
        assert result is not None  # a local failure was raised by _sum
        return replace(result, objective=float(total[0]))

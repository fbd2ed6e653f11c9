"""What a solve is given: the checked problem and the options of the loop, both immutable.

The public entry points (``equipart.api``) check their arguments once
(``equipart.validation``) and build a :class:`Problem`, :class:`SolveOptions` and
:class:`OutputOptions`; the driver (``equipart.solver.run_sinkhorn``), the handshake of a
distributed solve (``equipart.distributed``), the rounding and the packaging of the result
receive these objects, never the arguments one by one. Variants (a rank's shard, one
stage's lam, the loop's wrapped callback) are made with ``dataclasses.replace``.

Fields whose metadata says ``agreed`` are those every rank of a distributed solve must pass
alike: the handshake's descriptor is derived from them (:func:`handshake_fields`), after
the entry point and the layout of the scores (:data:`LAYOUT`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .solver import column_stats, mask_depth

if TYPE_CHECKING:
    from .backends.base import Backend, ColumnStats, ScoreKind
    from .marginals import ColumnConstraint, Marginal
    from .solver import RowSource, StatsReducer
    from .validation import ScoreSummary

__all__ = ["LAYOUT", "OutputOptions", "Problem", "SolveOptions", "handshake_fields"]

AGREED = "agreed"
NUMBER, TEXT, GIVEN = "number", "text", "given"
"""How the handshake compares an agreed field: as a number (its value, named in the
message), as text (a fingerprint of its repr; arrays by their bytes), or whether it is
given (not None)."""

LAYOUT = ("entry", "n_heads", "n_labels", "dtype", "prototypes")
"""The handshake's first fields: the entry point called and the layout of the scores (the
row source's heads, labels and dtype, and the shared factors of ``Factored`` scores)."""

LAYOUT_NUMBERS = ("n_heads", "n_labels")


def agreed(how: str, argument: str | None = None) -> dict[str, str | None]:
    """Field metadata: every rank must pass this field alike, compared ``how``, and named
    ``argument`` (default: the field's name) in the message when they do not."""
    return {AGREED: how, "argument": argument}


@dataclass(frozen=True)
class SolveOptions:
    """How the Sinkhorn loop runs (checked by ``equipart.validation.solve_options``).

    Attributes
    ----------
    tol : float
        Stop when the error max_j |m_j / b_j - 1| is at most this at a check.
    max_iter : int
        Largest number of sweeps (all annealing stages together).
    check_every : int
        Test convergence (record the history, call the callback) every this many sweeps.
    acceleration : {"auto", "anderson", "overrelax", "none"}
        The column step's extrapolation (``equipart.solver``).
    callback : callable or None
        ``callback(iteration, error)`` at each check; returning True stops the solve.
    anneal : bool
        Reach a lam above ``ANNEAL_ABOVE`` through the continuation of ``lam_schedule``
        (cold starts).
    fixed_steps : int or None
        The fixed-step mode of SwAV's loop (``sinkhorn_codes``): exactly this many column
        steps, the first on the raw kernel, no convergence test, no acceleration of its
        own; ``tol``, ``max_iter``, ``check_every``, ``callback`` and ``anneal`` unused.
    """

    tol: float = field(default=1e-3, metadata=agreed(NUMBER))
    max_iter: int = field(default=1000, metadata=agreed(NUMBER))
    check_every: int = field(default=1, metadata=agreed(NUMBER))
    acceleration: str = field(default="auto", metadata=agreed(TEXT))
    callback: Callable[[int, float], Any] | None = field(default=None, metadata=agreed(GIVEN))
    anneal: bool = False
    fixed_steps: int | None = field(default=None, metadata=agreed(NUMBER, "n_iter"))


@dataclass(frozen=True)
class OutputOptions:
    """What ``assign_labels`` returns: how hard labels are made, and whether Q comes too.

    Attributes
    ----------
    rounding : {"auto", "argmax", "balanced", "exact"}
        The rounding (``equipart.rounding.round_head``).
    return_codes : bool
        Also return Q (rows sum to 1) as ``Assignment.codes``.
    """

    rounding: str = field(default="auto", metadata=agreed(TEXT))
    return_codes: bool = False


@dataclass(frozen=True, eq=False)
class Problem:
    """A checked transport problem: the scores, what they hold, lam and the label target.

    Attributes
    ----------
    source : RowSource
        The row blocks of every head (in a distributed solve, this rank's rows, reporting
        the global N as ``n_rows``).
    backend : Backend
        The backend that reads ``source``.
    lam : float
        Inverse temperature, per score unit.
    kind : {"logits", "logprobs", "probs"}
        What the scores hold.
    marginals : Marginal or None
        The label masses as given; None where ``constraint`` was bound by the caller.
    warm_start : ndarray (H, K) float64 or None
        The checked starting dual (read-only), or None for a cold start (zeros).
    constraint : ColumnConstraint or None
        ``marginals`` bound to the global N (:meth:`bound`); None until then.
    reduce : callable or None
        Merges column statistics across ranks (None in one process).
    summaries : tuple of ScoreSummary
        Per head, what the check of the values learned (support, spread, extent).
    """

    source: RowSource
    backend: Backend
    lam: float = field(metadata=agreed(NUMBER))
    kind: ScoreKind = field(default="logits", metadata=agreed(TEXT, "input"))
    marginals: Marginal | None = field(default=None, metadata=agreed(TEXT))
    warm_start: np.ndarray | None = field(default=None, metadata=agreed(TEXT))
    constraint: ColumnConstraint | None = None
    reduce: StatsReducer | None = None
    summaries: tuple[ScoreSummary, ...] = ()

    def __post_init__(self) -> None:
        if self.warm_start is not None:  # a read-only copy, as SolverState keeps g
            start = np.array(self.warm_start, dtype=np.float64)
            start.setflags(write=False)
            object.__setattr__(self, "warm_start", start)

    @property
    def n_heads(self) -> int:
        return self.source.n_heads

    @property
    def n_rows(self) -> int:
        return self.source.n_rows

    @property
    def n_labels(self) -> int:
        return self.source.n_labels

    @property
    def stacked(self) -> bool:
        """Whether the scores were given as (H, N, K)."""
        return bool(getattr(self.source, "stacked", False))

    @property
    def shape(self) -> tuple[int, ...]:
        """(H, N, K) for stacked scores, else (N, K), with the global N."""
        heads = (self.n_heads,) if self.stacked else ()
        return (*heads, self.n_rows, self.n_labels)

    @property
    def depth(self) -> float:
        """How far below a row's best a score counts as a mask (``mask_depth``)."""
        return mask_depth(self.source.dtype)

    @property
    def spread(self) -> float:
        """The largest score minus the lowest row maximum over the heads (0 if unknown)."""
        return max((summary.spread for summary in self.summaries), default=0.0)

    @property
    def g0(self) -> np.ndarray:
        """The starting dual (H, K): the warm start, or zeros."""
        if self.warm_start is None:
            return np.zeros((self.n_heads, self.n_labels))
        return np.array(self.warm_start)

    def column_stats(self, head: int, g: np.ndarray) -> ColumnStats:
        """One sweep of head ``head`` at dual g (K,), merged over its blocks and the ranks
        (``equipart.solver.column_stats``)."""
        return column_stats(self.source, self.backend, head, self.kind, self.lam, g, self.reduce)

    def bound(self) -> Problem:
        """This problem with ``marginals`` bound to its N (the global N of a shard)."""
        assert self.marginals is not None
        constraint = self.marginals.bind(self.n_rows, self.n_labels, self.lam)
        return replace(self, constraint=constraint)


def _agreed(kind: type) -> list[tuple[str, str, str]]:
    """(attribute, argument name, how compared) of the agreed fields of a dataclass."""
    return [
        (item.name, item.metadata["argument"] or item.name, item.metadata[AGREED])
        for item in fields(kind)
        if AGREED in item.metadata
    ]


AGREED_BY = (Problem, SolveOptions, OutputOptions)


def handshake_fields() -> tuple[tuple[str, ...], frozenset[str]]:
    """(names, numeric names) of the handshake's descriptor: :data:`LAYOUT`, then the
    agreed fields of :class:`Problem`, :class:`SolveOptions` and :class:`OutputOptions`
    by argument name, each once."""
    names, numeric = list(LAYOUT), set(LAYOUT_NUMBERS)
    for kind in AGREED_BY:
        for _, argument, how in _agreed(kind):
            if argument not in names:
                names.append(argument)
            if how == NUMBER:
                numeric.add(argument)
    return tuple(names), frozenset(numeric)


def handshake_values(entry: str, problem: Problem, *settings: Any) -> dict[str, Any]:
    """What this process contributes to the handshake, by argument name: ``entry``, the
    layout of ``problem.source`` and the agreed fields of ``problem`` and ``settings``
    (None: not given; a ``GIVEN`` field as whether it is given)."""
    source = problem.source
    values: dict[str, Any] = {
        "entry": entry,
        "n_heads": source.n_heads,
        "n_labels": source.n_labels,
        "dtype": source.dtype,
        "prototypes": getattr(source, "prototypes_key", None),  # Factored: shared factors
    }
    for part in (problem, *settings):
        for name, argument, how in _agreed(type(part)):
            value = getattr(part, name)
            values[argument] = (value is not None) if how == GIVEN else value
    return values

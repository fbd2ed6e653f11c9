"""What a solve returns: the immutable ``Assignment`` and the resumable ``SolverState``.

Conventions (L is the log-probability form of the scores, lam the inverse temperature):

    Q_ij = exp(lam * L_ij + f_i + g_j)        the soft assignment (rows sum to 1)
    labels_i = argmax_j (lam * L_ij + g_j)    the argmax hard labels

f (N) is a function of g (K), so g is the solver's whole state. It is kept in float64 on
the host (labels with a zero target hold -inf). For equality targets (``Uniform``,
``Counts``, ``Prior``) it is normalised so that its largest finite entry is 0; bands and
relaxed targets, whose updates depend on g's level, keep the level they converged to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Assignment", "SolverState"]


@dataclass(frozen=True, eq=False)
class SolverState:
    """The column dual ``g`` of a solve, enough to resume it (``warm_start=state``).

    Attributes
    ----------
    g : ndarray of float64, shape (K,) or (H, K)
        Log-domain column dual, one row per head for multi-head problems.
    lam : float
        The inverse temperature the dual belongs to.
    shape : tuple of int
        Shape of the scores solved, (N, K) or (H, N, K).

    Immutable (``g`` is read-only, also after pickling or copying); states compare equal
    when lam, shape and g are equal.
    """

    g: np.ndarray
    lam: float
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        # a read-only view of a read-only copy: the view cannot be made writeable again
        # (``setflags(write=True)`` raises), so a state cannot change after it is made
        owner = np.array(self.g, dtype=np.float64)
        owner.setflags(write=False)
        object.__setattr__(self, "g", owner.view())
        object.__setattr__(self, "lam", float(self.lam))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    def __reduce__(self) -> tuple:
        """Pickling and deep copies rebuild the state through its constructor (read-only)."""
        return (type(self), (self.g, self.lam, self.shape))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SolverState):
            return NotImplemented
        return (
            self.lam == other.lam
            and self.shape == other.shape
            and np.array_equal(self.g, other.g)
        )

    def __hash__(self) -> int:
        return hash((self.lam, self.shape, (self.g + 0.0).tobytes()))  # -0.0 == 0.0

    @property
    def n_labels(self) -> int:
        return int(self.g.shape[-1])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``-inf`` entries are written as None)."""
        g = [
            [None if not np.isfinite(v) else float(v) for v in row] for row in np.atleast_2d(self.g)
        ]
        return {"g": g if self.g.ndim == 2 else g[0], "lam": self.lam, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SolverState:
        """Inverse of :meth:`to_dict`."""
        g = np.array(data["g"], dtype=object)
        g = np.where(g == None, -np.inf, g).astype(np.float64)  # noqa: E711
        return cls(g=g, lam=data["lam"], shape=tuple(data["shape"]))

    def __repr__(self) -> str:
        return f"SolverState(lam={self.lam}, shape={self.shape}, g=<{self.g.shape} float64>)"


@dataclass(frozen=True, eq=False)
class Assignment:
    """The result of :func:`equipart.assign_labels` (and :func:`equipart.exact_assign`).

    Attributes
    ----------
    labels : array of int64, shape (N,) or (H, N)
        Hard labels, in the input's array library and on its device.
    state : SolverState
        The column dual; pass it back as ``warm_start=`` to resume.
    n_iter : int
        Sweeps performed (the largest over heads); 0 for ``rounding="exact"``, which
        solves the LP without a Sinkhorn sweep.
    start_sweeps : float
        The work of a sampled start, in sweeps of the whole scores (0 where none ran): a
        large cold solve first solves a sample of the rows and starts from its dual
        (``equipart.solver.SAMPLE_TOL``); its sweeps are not in ``n_iter`` or ``history``.
    converged : bool
        Whether every head reached ``error <= tol``.
    error : float
        Final convergence error, max_j |m_j / b_j - 1| (the largest over heads), of the
        best dual seen. A cold solve at lam > 64 runs through smaller lams first
        (``equipart.solver.lam_schedule``); stopped there (``max_iter`` or a callback),
        this is the error at that stage's lam, and ``state`` holds that dual rescaled to
        the lam asked for.
    history : tuple of float
        The error at each convergence check (the largest over the heads still running).
    objective : float
        Mean log-probability of the assigned labels, (1/N) sum_i log P_i,labels_i
        (averaged over heads): comparable across roundings.
    rounding : str
        The rounding that made the labels: ``"argmax"``, ``"balanced"`` or ``"exact"``
        (``rounding="auto"`` records the one it ran; heads that differ are listed in
        order, comma-separated, such as ``"argmax,balanced"``).
    codes : array or None
        The soft assignment Q (rows sum to 1), when ``return_codes=True``.
    """

    labels: Any
    state: SolverState
    n_iter: int
    converged: bool
    error: float
    history: tuple[float, ...]
    objective: float
    rounding: str
    codes: Any = field(default=None, repr=False)
    start_sweeps: float = 0.0

    def __repr__(self) -> str:
        return (
            f"Assignment(shape={self.state.shape}, rounding={self.rounding!r}, "
            f"n_iter={self.n_iter}, converged={self.converged}, error={self.error:.3g}, "
            f"objective={self.objective:.6g})"
        )

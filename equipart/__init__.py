"""equipart: optimal-transport label assignment (the self-labelling step of SeLa).

Given scores of N points over K labels, find labels that maximise the total
log-probability while every label receives its share, by solving the entropy-regularised
transport problem with a fused, log-stable Sinkhorn sweep on any array library.

    >>> import numpy as np, equipart
    >>> scores = np.random.default_rng(0).normal(size=(1000, 10)).astype(np.float32)
    >>> result = equipart.assign_labels(scores, lam=25.0)
    >>> bool(np.bincount(result.labels).min() > 0)
    True
"""

from .api import assign_labels, sinkhorn_codes
from .distributed import DistributedSolveError
from .exact import exact_assign
from .factored import Factored
from .marginals import Bounds, Counts, Marginal, Prior, Relaxed, Uniform
from .result import Assignment, SolverState
from .rounding import RoundingWarning
from .solver import ConvergenceWarning
from .sources import RowBlocks

__version__ = "0.1.0"

__all__ = [
    "Assignment",
    "BalancedKMeans",
    "Bounds",
    "ConvergenceWarning",
    "Counts",
    "DistributedSolveError",
    "Factored",
    "Marginal",
    "Prior",
    "Relaxed",
    "RoundingWarning",
    "RowBlocks",
    "SolverState",
    "Uniform",
    "assign_labels",
    "exact_assign",
    "sinkhorn_codes",
]


def __getattr__(name: str):
    """``equipart.BalancedKMeans``, imported on first use (it needs scikit-learn)."""
    if name == "BalancedKMeans":
        from .cluster import BalancedKMeans

        return BalancedKMeans
    raise AttributeError(f"module 'equipart' has no attribute {name!r}")

r"""The one judge of every contender's output, whatever the contender's own stopping rule.

Every Sinkhorn-type contender's plan has the form P_ij = u_i exp(lam L_ij) v_j, so after
normalising its rows to one unit of mass (every point carries mass 1, in counts) it is

    Q_ij = exp(lam L_ij + g_j) / sum_k exp(lam L_ik + g_k),   g_j = log v_j,

which the checker rebuilds from the scores and the contender's column dual g alone, in
float64, block by block (never an N x K temporary). A contender whose row scalings u are
not finite and positive returned zero or NaN rows; that is a failure of the plan itself.
Hard-label contenders (the exact LP, balanced k-means) are judged on their labels.

Measures (b_j = N/K, the equipartition target, in counts):

* ``error``: max_j |m_j / b_j - 1| with m_j = sum_i Q_ij: the largest relative deviation of
  a label's mass from its target, the common tolerance every contender is held to;
* ``label_error``: the same for the hard labels' counts c_j (argmax_j (lam L_ij + g_j) for
  dual contenders), the cluster-size spread; ``min_size`` / ``max_size`` / ``empty_labels``;
* ``objective``: the mean log-probability of the hard labels,
  (1/N) sum_i log softmax(L_i)_{label_i}, comparable across contenders and to the exact LP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["TOL_SLACK", "Verdict", "judge_dual", "judge_labels"]

# A contender passes when error <= tol * (1 + TOL_SLACK): the slack absorbs the float32
# rounding of contenders that measure their own error on float32 plans.
TOL_SLACK = 0.01
BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class Verdict:
    """The checker's findings about one contender's output (see the module docstring)."""

    status: str  # "ok", "above-tol", "nan", "zero-plan"
    error: float | None
    label_error: float | None
    min_size: int | None
    max_size: int | None
    empty_labels: int | None
    objective: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _failed(status: str) -> Verdict:
    return Verdict(status, None, None, None, None, None, None)


def _is_torch(array: Any) -> bool:
    return type(array).__module__.split(".", 1)[0] == "torch"


def _row_blocks(n_rows: int, n_labels: int) -> list[slice]:
    step = max(1, BLOCK_ELEMENTS // n_labels)
    return [slice(s, min(s + step, n_rows)) for s in range(0, n_rows, step)]


def _status(error: float, tol: float) -> str:
    if not np.isfinite(error):
        return "nan"
    return "ok" if error <= tol * (1.0 + TOL_SLACK) else "above-tol"


def _size_fields(counts: np.ndarray, target: float) -> dict[str, Any]:
    return {
        "label_error": float(np.max(np.abs(counts / target - 1.0))),
        "min_size": int(counts.min()),
        "max_size": int(counts.max()),
        "empty_labels": int((counts == 0).sum()),
    }


def _numpy_pass(scores: np.ndarray, lam: float, g: np.ndarray | None, labels: Any):
    """(column masses of Q or None, hard-label counts, sum of log-probabilities)."""
    n_rows, n_labels = scores.shape
    mass = np.zeros(n_labels) if g is not None else None
    counts = np.zeros(n_labels, dtype=np.int64)
    logprob = 0.0
    for rows in _row_blocks(n_rows, n_labels):
        block = np.asarray(scores[rows], dtype=np.float64)
        if g is not None:
            z = block * lam + g
            z -= z.max(axis=1, keepdims=True)
            np.exp(z, out=z)
            z /= z.sum(axis=1, keepdims=True)
            mass += z.sum(axis=0)
            chosen = (block * lam + g).argmax(axis=1)
        else:
            chosen = np.asarray(labels[rows], dtype=np.int64)
        counts += np.bincount(chosen, minlength=n_labels)
        top = block.max(axis=1)
        lse = top + np.log(np.exp(block - top[:, None]).sum(axis=1))
        logprob += float((block[np.arange(block.shape[0]), chosen] - lse).sum())
    return mass, counts, logprob


def _torch_pass(scores: Any, lam: float, g: np.ndarray | None, labels: Any):
    import torch

    n_rows, n_labels = scores.shape
    device = scores.device
    g_t = torch.as_tensor(g, dtype=torch.float64, device=device) if g is not None else None
    labels_t = torch.as_tensor(labels, device=device) if labels is not None else None
    mass = torch.zeros(n_labels, dtype=torch.float64, device=device)
    counts = torch.zeros(n_labels, dtype=torch.int64, device=device)
    logprob = torch.zeros((), dtype=torch.float64, device=device)
    for rows in _row_blocks(n_rows, n_labels):
        block = scores[rows].to(torch.float64)
        if g_t is not None:
            z = block * lam + g_t
            mass += torch.softmax(z, dim=1).sum(dim=0)
            chosen = z.argmax(dim=1)
        else:
            chosen = labels_t[rows].to(torch.int64)
        counts += torch.bincount(chosen, minlength=n_labels)
        picked = block.gather(1, chosen[:, None])[:, 0]
        logprob += (picked - torch.logsumexp(block, dim=1)).sum()
    out_mass = mass.cpu().numpy() if g is not None else None
    return out_mass, counts.cpu().numpy(), float(logprob)


def _pass(scores: Any, lam: float, g: np.ndarray | None, labels: Any):
    return (_torch_pass if _is_torch(scores) else _numpy_pass)(scores, lam, g, labels)


def judge_dual(scores: Any, lam: float, g: np.ndarray, tol: float, rows_ok: bool = True) -> Verdict:
    """Judge a Sinkhorn-type plan given by its column dual ``g`` (K,) (see module doc).

    ``scores`` is the (N, K) logit matrix (NumPy or torch, any device); ``rows_ok`` says
    whether the contender's row scalings were finite and positive.
    """
    g = np.asarray(g, dtype=np.float64)
    if np.isnan(g).any() or np.isposinf(g).any() or not rows_ok:
        return _failed("nan")
    if not np.isfinite(g).any():
        return _failed("zero-plan")
    n_rows, n_labels = scores.shape
    target = n_rows / n_labels
    mass, counts, logprob = _pass(scores, lam, g - g[np.isfinite(g)].max(), None)
    if not np.isfinite(mass).all() or mass.sum() == 0:
        return _failed("nan" if not np.isfinite(mass).all() else "zero-plan")
    error = float(np.max(np.abs(mass / target - 1.0)))
    return Verdict(
        status=_status(error, tol),
        error=error,
        objective=logprob / n_rows,
        **_size_fields(counts, target),
    )


def judge_labels(scores: Any, labels: Any, tol: float) -> Verdict:
    """Judge hard labels (N,) int: the plan is the assignment itself.

    Integer counts cannot hit a fractional target N/K, so ``error`` is the relative distance
    of each count from [floor(N/K), ceil(N/K)], the best any hard assignment can do:
    max_j max(0, c_j - ceil(b), floor(b) - c_j) / b. ``label_error`` is the raw spread.
    """
    n_rows, n_labels = scores.shape
    target = n_rows / n_labels
    _, counts, logprob = _pass(scores, 1.0, None, labels)
    sizes = _size_fields(counts, target)
    outside = np.maximum(counts - np.ceil(target), np.floor(target) - counts)
    error = float(np.maximum(outside, 0.0).max() / target)
    return Verdict(
        status=_status(error, tol),
        error=error,
        objective=logprob / n_rows,
        **sizes,
    )

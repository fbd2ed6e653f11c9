"""The label step: optimal transport through equipart, or the k-means ablation.

* :func:`sinkhorn_labels`: SeLa's step. The H heads' log-softmax scores over the whole
  training set, an (H, N, K) array, go to ``equipart.assign_labels`` in one call with
  inverse temperature ``lam`` and equal label masses N/K; the previous call's
  ``SolverState`` (one dual g per head) is passed back as ``warm_start``. Scores stay on
  their device when equipart has a torch backend; otherwise they are copied to the host
  once and solved with the NumPy/Numba backend.
* :func:`kmeans_labels`: DeepCluster's step on the trunk features, everything else equal:
  PCA to ``pca_dim`` dimensions, whitening, L2 normalisation, then Lloyd's k-means with
  k-means++ seeding, one independent run (its own seed) per head. An empty cluster takes
  over the point farthest from its centroid. Cluster ids are arbitrary, so each head's new
  ids are permuted to overlap its previous labels as much as possible (a Hungarian match
  of the K x K contingency table), which keeps the head's classifier meaningful.
"""

from __future__ import annotations

import math
import warnings
from functools import cache

import equipart
import torch
from equipart import SolverState
from scipy.optimize import linear_sum_assignment

__all__ = [
    "balanced_random_labels",
    "cluster_balance",
    "kmeans",
    "kmeans_labels",
    "sinkhorn_labels",
]


def balanced_random_labels(
    n_heads: int, n: int, k: int, generator: torch.Generator
) -> torch.Tensor:
    """SeLa's initial labels: every head a random permutation of (0, 1, .., K-1, 0, ..)."""
    base = torch.arange(n) % k
    return torch.stack([base[torch.randperm(n, generator=generator)] for _ in range(n_heads)])


@cache
def _torch_backend() -> bool:
    return "torch" in equipart.backends.available()


def sinkhorn_labels(
    logprobs: torch.Tensor,
    lam: float,
    state: SolverState | None,
    tol: float = 1e-2,
    max_iter: int = 1000,
    backend: str = "auto",
) -> tuple[torch.Tensor, SolverState, dict[str, float]]:
    """Labels (H, N) on ``logprobs``' device, the new solver state and solver statistics.

    ``backend="auto"`` solves on the scores' device with equipart's torch backend when it
    is available and on a host copy otherwise; ``"torch"`` insists on the former; any other
    equipart backend name (``"numpy"``, ``"numba"``) solves a host copy with that backend.
    """
    on_device = backend == "torch" or (backend == "auto" and _torch_backend())
    scores = logprobs if on_device else logprobs.detach().float().cpu().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", equipart.ConvergenceWarning)
        result = equipart.assign_labels(
            scores,
            lam=lam,
            input="logprobs",
            warm_start=state,
            tol=tol,
            max_iter=max_iter,
            backend=backend,
        )
    labels = torch.as_tensor(result.labels).to(logprobs.device, torch.int64)
    info = {
        "solver_iters": float(result.n_iter),
        "solver_error": float(result.error),
        "solver_converged": float(result.converged),
        "objective": float(result.objective),
    }
    return labels, result.state, info


def _whiten(features: torch.Tensor, pca_dim: int) -> torch.Tensor:
    """Centre, project on the top ``pca_dim`` principal axes (randomised PCA), whiten, L2."""
    x = features.float()
    q = min(pca_dim, x.shape[0], x.shape[1])
    mean = x.mean(dim=0)
    _, s, v = torch.pca_lowrank(x - mean, q=q, center=False, niter=3)
    scale = s / max(1, x.shape[0] - 1) ** 0.5  # standard deviation along each axis
    return torch.nn.functional.normalize(((x - mean) @ v) / (scale + 1e-5), dim=1)


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)).clamp_min_(0)


def kmeans(x: torch.Tensor, k: int, n_iter: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means with greedy k-means++ seeding; returns the (N,) cluster ids.

    Seeding draws 2 + ln K candidates per centre with probability proportional to the squared
    distance to the nearest chosen centre and keeps the one that lowers the total squared
    distance most (scikit-learn's greedy variant); then ``n_iter`` Lloyd iterations.
    """
    n = x.shape[0]
    if k > n:
        raise ValueError(f"clusters: k-means needs at least K={k} points, got {n}")
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    nearest = _sq_dists(x, x[first : first + 1]).squeeze(1)
    n_local = 2 + int(math.log(k))
    for _ in range(1, k):
        p = (nearest / nearest.sum().clamp_min(1e-12)).cpu().double()
        if float(p.sum()) == 0:
            picks = torch.randint(n, (n_local,), generator=generator)
        else:
            picks = torch.multinomial(p, n_local, replacement=True, generator=generator)
        cand = torch.minimum(nearest.unsqueeze(0), _sq_dists(x[picks.to(x.device)], x))
        best = int(cand.sum(dim=1).argmin())
        centres.append(x[int(picks[best])])
        nearest = cand[best]
    c = torch.stack(centres)
    ids = torch.zeros(n, dtype=torch.int64, device=x.device)
    for _ in range(n_iter):
        d = _sq_dists(x, c)
        dist, ids = d.min(dim=1)
        counts = torch.bincount(ids, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, ids, x)
        c = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        for j in torch.nonzero(counts == 0).flatten().tolist():
            far = int(dist.argmax())
            c[j], dist[far] = x[far], 0.0
    return _sq_dists(x, c).argmin(dim=1)


def _align(new: torch.Tensor, old: torch.Tensor, k: int) -> torch.Tensor:
    table = torch.zeros(k * k, dtype=torch.int64, device=new.device)
    table.index_add_(0, new * k + old, torch.ones_like(new))
    rows, cols = linear_sum_assignment(table.view(k, k).cpu().numpy(), maximize=True)
    perm = torch.empty(k, dtype=torch.int64)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm.to(new.device)[new]


def kmeans_labels(
    features: torch.Tensor,
    n_heads: int,
    k: int,
    previous: torch.Tensor,
    generator: torch.Generator,
    pca_dim: int = 256,
    n_iter: int = 20,
) -> torch.Tensor:
    """DeepCluster-style labels (H, N): one k-means per head on whitened features."""
    x = _whiten(features, pca_dim)
    heads = []
    for h in range(n_heads):
        ids = kmeans(x, k, n_iter, generator)
        heads.append(_align(ids, previous[h].to(ids.device), k))
    return torch.stack(heads)


def cluster_balance(labels: torch.Tensor, k: int) -> float:
    """Mean over heads of the coefficient of variation of the cluster sizes (0 = equal)."""
    sizes = torch.stack([torch.bincount(row, minlength=k) for row in labels]).float()
    return float((sizes.std(dim=1) / sizes.mean(dim=1)).mean())

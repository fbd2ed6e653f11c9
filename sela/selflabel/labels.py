"""The label step: optimal transport through equipart, or the k-means ablation.

* :func:`sinkhorn_labels`: SeLa's step. The updated heads' float32 log-softmax scores
  over the whole training set, an (h, N, K) array, go to ``equipart.assign_labels`` in
  one call with inverse temperature ``lam`` and equal label masses N/K; the heads'
  previous duals g (h, K) are passed back as ``warm_start``; hard labels are the argmax of
  the transport plan Q, as in the paper. Scores stay on their device
  when equipart has a torch backend; otherwise they are copied to the host once and
  solved with the NumPy/Numba backend.
* :func:`kmeans_labels`: the paper's k-means ablation, everything else equal (the same
  features the heads read, K, heads and schedule): PCA to ``pca_dim`` dimensions,
  whitening and L2 normalisation (DeepCluster's preprocessing), then Lloyd's k-means with
  greedy k-means++ seeding, best of ``n_init`` initialisations by inertia, independently
  for each updated head. An empty cluster takes over the point farthest from its
  centroid. Cluster ids are arbitrary, so each head's new ids are permuted to overlap its
  previous labels as much as possible (a Hungarian match of the K x K contingency table),
  which keeps the head's classifier meaningful.
"""

from __future__ import annotations

import math
import warnings
from functools import cache

import equipart
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .evaluate import pca_fit

__all__ = [
    "balanced_random_labels",
    "cluster_balance",
    "kmeans",
    "kmeans_labels",
    "sinkhorn_labels",
    "whiten",
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
    g: np.ndarray | None,
    tol: float = 1e-2,
    max_iter: int = 1000,
    backend: str = "auto",
) -> tuple[torch.Tensor, np.ndarray, dict[str, float]]:
    """Labels (h, N) on ``logprobs``' device, the new duals g (h, K) and solver statistics.

    ``logprobs`` (h, N, K) must be float32 or float64: the label pass is never rounded to a
    16-bit type (at lam = 25 bfloat16's rounding of a log-probability moves lam L by up to
    1.5 nats). ``g`` is the heads' previous duals (None for a cold start).

    ``backend="auto"`` solves on the scores' device with equipart's torch backend when it
    is available and on a host copy otherwise; ``"torch"`` insists on the former; any other
    equipart backend name (``"numpy"``, ``"numba"``) solves a host copy with that backend.
    """
    if logprobs.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"logprobs: expected float32 or float64 scores, got {logprobs.dtype}")
    on_device = backend == "torch" or (backend == "auto" and _torch_backend())
    scores = logprobs if on_device else logprobs.detach().cpu().numpy()
    with warnings.catch_warnings():
        # the paper's argmax rounding, whose cluster sizes each update logs (size_cv)
        warnings.simplefilter("ignore", equipart.RoundingWarning)
        warnings.simplefilter("ignore", equipart.ConvergenceWarning)
        result = equipart.assign_labels(
            scores,
            lam=lam,
            input="logprobs",
            warm_start=g,
            tol=tol,
            max_iter=max_iter,
            rounding="argmax",
            backend=backend,
        )
    labels = torch.as_tensor(result.labels).to(logprobs.device, torch.int64)
    info = {
        "solver_iters": float(result.n_iter),
        "solver_error": float(result.error),
        "solver_converged": float(result.converged),
        "objective": float(result.objective),
    }
    return labels, np.array(result.state.g, copy=True), info


def whiten(features: torch.Tensor, pca_dim: int) -> torch.Tensor:
    """DeepCluster's preprocessing: centre, project on the top ``pca_dim`` principal axes,
    divide by the standard deviation along each, L2-normalise each row."""
    x = features.float()
    mean, axes, std = pca_fit(x, pca_dim)
    return torch.nn.functional.normalize(((x - mean) @ axes) / (std + 1e-5), dim=1)


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)).clamp_min_(0)


def _seed(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding: each new centre is the best of 2 + ln K candidates drawn
    with probability proportional to the squared distance to the nearest chosen centre
    (the one that lowers the total squared distance most; scikit-learn's variant)."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    nearest = _sq_dists(x, x[first : first + 1]).squeeze(1)
    n_local = 2 + int(math.log(k))
    for _ in range(1, k):
        weights = nearest.double().cpu()
        if float(weights.sum()) > 0:
            picks = torch.multinomial(weights, n_local, replacement=True, generator=generator)
        else:  # every point sits on a centre already
            picks = torch.randint(n, (n_local,), generator=generator)
        cand = torch.minimum(nearest.unsqueeze(0), _sq_dists(x[picks.to(x.device)], x))
        best = int(cand.sum(dim=1).argmin())
        chosen.append(int(picks[best]))
        nearest = cand[best]
    return x[chosen].clone()


def _lloyd(x: torch.Tensor, c: torch.Tensor, n_iter: int) -> tuple[torch.Tensor, float]:
    """``n_iter`` Lloyd iterations from centres ``c``: (cluster ids (N,), inertia)."""
    k = c.shape[0]
    for _ in range(n_iter):
        dist, ids = _sq_dists(x, c).min(dim=1)
        counts = torch.bincount(ids, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, ids, x)
        c = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        for j in torch.nonzero(counts == 0).flatten().tolist():
            far = int(dist.argmax())
            c[j], dist[far] = x[far], 0.0
    dist, ids = _sq_dists(x, c).min(dim=1)
    return ids, float(dist.sum())


def kmeans(
    x: torch.Tensor, k: int, n_iter: int, generator: torch.Generator, n_init: int = 3
) -> torch.Tensor:
    """Lloyd's k-means, best of ``n_init`` greedy k-means++ initialisations by inertia
    (the sum of squared distances to the nearest centre); returns the (N,) cluster ids."""
    n = x.shape[0]
    if k > n:
        raise ValueError(f"clusters: k-means needs at least K={k} points, got {n}")
    if n_init < 1:
        raise ValueError(f"n_init: expected at least 1 initialisation, got {n_init}")
    runs = [_lloyd(x, _seed(x, k, generator), n_iter) for _ in range(n_init)]
    return min(runs, key=lambda run: run[1])[0]


def _align(new: torch.Tensor, old: torch.Tensor, k: int) -> torch.Tensor:
    table = torch.zeros(k * k, dtype=torch.int64, device=new.device)
    table.index_add_(0, new * k + old, torch.ones_like(new))
    rows, cols = linear_sum_assignment(table.view(k, k).cpu().numpy(), maximize=True)
    perm = torch.empty(k, dtype=torch.int64)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm.to(new.device)[new]


def kmeans_labels(
    features: torch.Tensor,
    previous: torch.Tensor,
    k: int,
    generator: torch.Generator,
    pca_dim: int = 256,
    n_iter: int = 20,
    n_init: int = 3,
) -> torch.Tensor:
    """k-means labels (h, N) for the h heads whose current labels are ``previous`` (h, N):
    one independent k-means per head on the whitened ``features`` (N, D), aligned to the
    head's previous labels."""
    x = whiten(features, pca_dim)
    heads = [
        _align(kmeans(x, k, n_iter, generator, n_init), old.to(x.device), k) for old in previous
    ]
    return torch.stack(heads)


def cluster_balance(labels: torch.Tensor, k: int) -> float:
    """Mean over heads of the coefficient of variation of the cluster sizes (0 = equal)."""
    sizes = torch.stack([torch.bincount(row, minlength=k) for row in labels]).float()
    return float((sizes.std(dim=1) / sizes.mean(dim=1)).mean())

"""What SeLa measures: clustering agreement, weighted kNN and a linear probe.

* :func:`cluster_scores`: NMI, AMI (adjusted for chance; arithmetic normalisation,
  scikit-learn's defaults), ARI, purity and Hungarian-matched accuracy of predicted
  clusters against the true classes, and the spread of the cluster sizes. NMI rewards
  lopsided clusterings (many tiny clusters raise it) and purity rewards many clusters, so
  AMI and ARI, which are 0 in expectation for a random labelling of any sizes, are the
  ones to compare methods whose cluster sizes differ. The accuracy matches clusters to
  classes one-to-one by maximum total overlap (``scipy.optimize.linear_sum_assignment``
  on the K x C contingency table); with K > C the points of the unmatched clusters count
  as errors. Purity gives each cluster its majority class.
* :func:`pca_fit`: the top principal axes of the training features (SeLa's kNN reads the
  FC features after PCA to 128 dimensions).
* :func:`knn_accuracy`: the weighted kNN of Wu et al. (2018) that SeLa reports: features
  L2-normalised, the k = 50 training points of largest cosine similarity s vote for their
  class with weight exp(s / sigma), sigma = 0.1.
* :func:`linear_probe`: multinomial logistic regression on frozen, standardised features,
  trained with Adam on the training split and scored on the held-out one (SeLa probes
  conv5).
* :func:`evaluate_model` puts these together as the paper does (kNN on the FC features
  after PCA to 128, the linear probe on the last conv block, clustering scores of each
  head's argmax); :func:`evaluate_pixels` is the raw-pixel baseline.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm

from .config import Config
from .data import Dataset
from .features import extract, make_augment

__all__ = [
    "cluster_scores",
    "evaluate_model",
    "evaluate_pixels",
    "head_scores",
    "hungarian_accuracy",
    "knn_accuracy",
    "knn_after_pca",
    "label_scores",
    "linear_probe",
    "mean_scores",
    "pca_fit",
    "size_spread",
]


def hungarian_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Accuracy after the one-to-one cluster-to-class matching of largest overlap."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 1:
        raise ValueError(
            f"pred/truth: expected two 1-D arrays of equal length, got "
            f"{pred.shape} and {truth.shape}"
        )
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(truth, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(pred))


def size_spread(pred: np.ndarray, n_clusters: int) -> float:
    """Coefficient of variation (std / mean) of the sizes of ``n_clusters`` clusters,
    empty ones included: 0 for equal sizes."""
    sizes = np.bincount(np.asarray(pred), minlength=n_clusters).astype(np.float64)
    return float(sizes.std() / sizes.mean())


def cluster_scores(pred: np.ndarray, truth: np.ndarray, n_clusters: int) -> dict[str, float]:
    """NMI, AMI, ARI, purity, Hungarian accuracy and the size spread (:func:`size_spread`)
    of cluster ids ``pred`` (in ``0..n_clusters-1``) against the classes ``truth``."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    table = skm.cluster.contingency_matrix(truth, pred)
    return {
        "nmi": float(skm.normalized_mutual_info_score(truth, pred)),
        "ami": float(skm.adjusted_mutual_info_score(truth, pred)),
        "ari": float(skm.adjusted_rand_score(truth, pred)),
        "purity": float(table.max(axis=0).sum() / len(pred)),
        "acc": hungarian_accuracy(pred, truth),
        "size_cv": size_spread(pred, n_clusters),
    }


def pca_fit(
    features: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean (D,), axes (D, q), std (q,)) of the top q = min(dim, N, D) principal axes of
    ``features`` (N, D): project with ``(x - mean) @ axes``; ``std`` is the features'
    standard deviation along each axis (whitening divides by it). Exact (an
    eigendecomposition of the centred features' D x D scatter matrix in float64), so no
    result depends on a random sketch."""
    x = features.double()
    mean = x.mean(dim=0)
    centred = x - mean
    values, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    q = min(dim, x.shape[0], x.shape[1])
    axes, values = vectors[:, -q:].flip(1), values[-q:].flip(0)
    std = (values.clamp_min(0) / max(1, x.shape[0] - 1)).sqrt()
    dtype = features.dtype
    return mean.to(dtype), axes.to(dtype), std.to(dtype)


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 50,
    sigma: float = 0.1,
    chunk: int = 1024,
) -> float:
    """Weighted kNN accuracy: votes exp(cos / sigma) from the k most similar train points."""
    if k < 1 or sigma <= 0:
        raise ValueError(f"k/sigma: expected k >= 1 and sigma > 0, got k={k}, sigma={sigma}")
    bank = torch.nn.functional.normalize(train_features.float(), dim=1)
    labels = train_labels.to(bank.device)
    n_classes = int(max(int(train_labels.max()), int(test_labels.max())) + 1)
    k = min(k, bank.shape[0])
    correct = 0
    for start in range(0, test_features.shape[0], chunk):
        q = torch.nn.functional.normalize(test_features[start : start + chunk].float(), dim=1)
        sim, idx = (q.to(bank.device) @ bank.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], n_classes, device=bank.device)
        votes.scatter_add_(1, labels[idx], torch.exp(sim / sigma))
        pred = votes.argmax(dim=1).cpu()
        correct += int((pred == test_labels[start : start + chunk].cpu()).sum())
    return correct / test_features.shape[0]


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 30,
    batch_size: int = 1024,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    seed: int = 0,
) -> float:
    """Held-out accuracy of a softmax classifier trained on frozen features.

    Features are standardised with the training split's per-dimension mean and standard
    deviation; the classifier is trained for ``epochs`` passes with Adam and a cosine
    learning-rate decay, on the features' device.
    """
    device = train_features.device
    x = train_features.float()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    x = (x - mean) / std
    xt = (test_features.float().to(device) - mean) / std
    y = train_labels.to(device)
    n_classes = int(max(int(train_labels.max()), int(test_labels.max())) + 1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], n_classes).to(device)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(probe.weight.shape, generator=gen) * 0.01)
        probe.bias.zero_()
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((x.shape[0] + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(x.shape[0], generator=gen).to(device)
            for start in range(0, x.shape[0], batch_size):
                idx = order[start : start + batch_size]
                loss = torch.nn.functional.cross_entropy(probe(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    with torch.no_grad():
        pred = probe(xt).argmax(dim=1).cpu()
    return float((pred == test_labels.cpu()).float().mean())


def knn_after_pca(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    cfg: Config,
) -> float:
    """SeLa's kNN: both splits projected on the training features' top ``cfg.knn_pca``
    principal axes, then :func:`knn_accuracy` with ``cfg.knn_k`` and ``cfg.knn_sigma``."""
    mean, axes, _ = pca_fit(train_features.float(), cfg.knn_pca)
    project = lambda x: (x.float().to(mean.device) - mean) @ axes  # noqa: E731
    return knn_accuracy(
        project(train_features),
        train_labels,
        project(test_features),
        test_labels,
        k=cfg.knn_k,
        sigma=cfg.knn_sigma,
    )


def head_scores(scores: torch.Tensor, truth: torch.Tensor, n_clusters: int) -> dict[str, float]:
    """:func:`cluster_scores` of each head's argmax of ``scores`` (H, N, K), averaged over
    the heads."""
    return label_scores(scores.argmax(dim=2), truth, n_clusters)


def label_scores(labels: torch.Tensor, truth: torch.Tensor, n_clusters: int) -> dict[str, float]:
    """:func:`cluster_scores` of each head's labels (H, N), averaged over the heads."""
    rows = [cluster_scores(row.cpu().numpy(), truth.numpy(), n_clusters) for row in labels]
    return mean_scores(rows)


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each score over ``rows`` (dicts with the same keys)."""
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def evaluate_model(model: torch.nn.Module, data: Dataset, cfg: Config) -> dict[str, float]:
    """The paper's evaluation of ``model`` on the held-out split ``data.test``: ``knn``
    (weighted kNN on the FC features after PCA, :func:`knn_after_pca`), ``linear`` (a
    linear probe on the last conv block, :func:`linear_probe`) and each head's clustering
    scores (:func:`head_scores`: ``nmi``, ``ami``, ``ari``, ``purity``, ``acc``,
    ``size_cv``). BatchNorm in evaluation mode, no augmentation, float32."""
    augment = make_augment(cfg, data)
    train = extract(model, data.train.images, augment, cfg.eval_batch_size, conv=True)
    test = extract(model, data.test.images, augment, cfg.eval_batch_size, conv=True)
    out = head_scores(test.scores, data.test.labels, cfg.clusters)
    out["knn"] = knn_after_pca(train.fc, data.train.labels, test.fc, data.test.labels, cfg)
    out["linear"] = linear_probe(
        train.conv, data.train.labels, test.conv, data.test.labels, cfg.probe_epochs, seed=cfg.seed
    )
    return out


def evaluate_pixels(data: Dataset, cfg: Config) -> dict[str, float]:
    """The raw-pixel baseline: ``knn`` and ``linear`` of :func:`evaluate_model` with the
    normalised pixels as both feature sets."""
    augment = make_augment(cfg, data)
    train = augment(data.train.images, train=False).flatten(1)
    test = augment(data.test.images, train=False).flatten(1)
    ytr, yte = data.train.labels, data.test.labels
    return {
        "knn": knn_after_pca(train, ytr, test, yte, cfg),
        "linear": linear_probe(train, ytr, test, yte, cfg.probe_epochs, seed=cfg.seed),
    }

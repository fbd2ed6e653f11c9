"""What SeLa measures: clustering agreement, weighted kNN and a linear probe.

* :func:`cluster_scores`: NMI, adjusted NMI (arithmetic normalisation, scikit-learn's
  defaults), ARI and Hungarian-matched accuracy of predicted clusters against the true
  classes. The accuracy matches clusters to classes one-to-one by maximum total overlap
  (``scipy.optimize.linear_sum_assignment`` on the K x C contingency table); with K > C
  the points of the unmatched clusters count as errors.
* :func:`knn_accuracy`: the weighted kNN of Wu et al. (2018) that SeLa reports: features
  L2-normalised, the k = 50 training points of largest cosine similarity s vote for their
  class with weight exp(s / sigma), sigma = 0.1.
* :func:`linear_probe`: multinomial logistic regression on frozen, standardised features,
  trained with Adam on the training split and scored on the held-out one.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm

__all__ = ["cluster_scores", "hungarian_accuracy", "knn_accuracy", "linear_probe"]


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


def cluster_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """NMI, ANMI, ARI and Hungarian accuracy of cluster ids ``pred`` against ``truth``."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    return {
        "nmi": float(skm.normalized_mutual_info_score(truth, pred)),
        "anmi": float(skm.adjusted_mutual_info_score(truth, pred)),
        "ari": float(skm.adjusted_rand_score(truth, pred)),
        "acc": hungarian_accuracy(pred, truth),
    }


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

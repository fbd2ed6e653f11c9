"""The label step: balanced initial labels, equipart's transport, and k-means."""

from __future__ import annotations

import pytest
import torch

from selflabel.evaluate import cluster_scores
from selflabel.labels import balanced_random_labels, kmeans, kmeans_labels, sinkhorn_labels


def test_initial_labels_are_balanced_and_random():
    labels = balanced_random_labels(3, 103, 10, torch.Generator().manual_seed(0))
    assert labels.shape == (3, 103)
    for row in labels:
        counts = torch.bincount(row, minlength=10)
        assert int(counts.max() - counts.min()) <= 1
    assert not torch.equal(labels[0], labels[1])


def test_sinkhorn_labels_are_balanced_and_warm_start_is_cheaper():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 600, 6, generator=gen) * 2
    logits[:, :, 0] += 3.0  # every point prefers label 0
    logprobs = torch.log_softmax(logits, dim=-1)
    labels, g, info = sinkhorn_labels(logprobs, lam=10.0, g=None, tol=1e-3)
    assert labels.shape == (2, 600) and labels.dtype == torch.int64 and g.shape == (2, 6)
    sizes = torch.stack([torch.bincount(r, minlength=6) for r in labels])
    assert int(sizes.max()) <= 130 and int(sizes.min()) >= 70  # ~100 each, not 600 on label 0
    again, _, warm = sinkhorn_labels(logprobs, lam=10.0, g=g, tol=1e-3)
    assert warm["solver_iters"] < info["solver_iters"]
    assert torch.equal(again, labels)


def _blobs(n_per=80, k=4, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=gen) * 6
    truth = torch.arange(k).repeat_interleave(n_per)
    return centres[truth] + torch.randn(len(truth), dim, generator=gen), truth


def test_kmeans_recovers_blobs():
    x, truth = _blobs()
    ids = kmeans(x, 4, 20, torch.Generator().manual_seed(1))
    assert cluster_scores(ids.numpy(), truth.numpy(), 4)["nmi"] > 0.99


def test_kmeans_keeps_the_best_of_its_initialisations():
    """Inertia of the best of 3 initialisations is at most that of each single one drawn
    from the same generator state."""
    x, _ = _blobs(n_per=40, k=12, dim=4, seed=5)

    def inertia(ids):
        centres = torch.stack([x[ids == j].mean(0) for j in range(12)])
        return float(((x - centres[ids]) ** 2).sum())

    best = inertia(kmeans(x, 12, 3, torch.Generator().manual_seed(7), n_init=3))
    gen = torch.Generator().manual_seed(7)
    singles = [inertia(kmeans(x, 12, 3, gen, n_init=1)) for _ in range(3)]
    assert best == pytest.approx(min(singles), rel=1e-5)
    with pytest.raises(ValueError, match="n_init"):
        kmeans(x, 12, 3, gen, n_init=0)


def test_kmeans_labels_are_aligned_with_previous_labels():
    x, truth = _blobs()
    previous = torch.stack([truth, (truth + 1) % 4])
    labels = kmeans_labels(x, previous, 4, torch.Generator().manual_seed(2), pca_dim=8)
    assert labels.shape == previous.shape
    assert (labels == previous).float().mean() > 0.99


def test_sinkhorn_labels_agree_across_backends():
    logprobs = torch.log_softmax(
        torch.randn(2, 300, 5, generator=torch.Generator().manual_seed(4)), -1
    )
    host, _, _ = sinkhorn_labels(logprobs, lam=10.0, g=None, backend="numpy")
    auto, _, _ = sinkhorn_labels(logprobs, lam=10.0, g=None)
    assert (host == auto).float().mean() > 0.99


def test_sinkhorn_labels_refuse_16_bit_scores():
    with pytest.raises(TypeError, match="logprobs: expected float32 or float64"):
        sinkhorn_labels(torch.zeros(1, 10, 2, dtype=torch.bfloat16), lam=25.0, g=None)

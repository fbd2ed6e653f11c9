"""Clustering scores, weighted kNN and the linear probe on problems with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selflabel.evaluate import (
    cluster_scores,
    hungarian_accuracy,
    knn_accuracy,
    linear_probe,
    pca_fit,
    size_spread,
)


def test_scores_are_invariant_to_renaming_clusters():
    truth = np.repeat(np.arange(4), 25)
    pred = (truth + 1) % 4
    scores = cluster_scores(pred, truth, 4)
    assert scores == pytest.approx(
        {"nmi": 1.0, "ami": 1.0, "ari": 1.0, "purity": 1.0, "acc": 1.0, "size_cv": 0.0}
    )


def test_lopsided_clusters_raise_nmi_and_purity_but_not_ami_or_ari():
    """Many singletons beside one big cluster: NMI and purity reward them, AMI and ARI
    (chance-adjusted) do not; the size spread shows the lopsidedness."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 10, 2000)
    pred = np.where(np.arange(2000) < 1000, np.arange(2000), 1000)  # 1000 singletons + 1
    scores = cluster_scores(pred, truth, 1001)
    assert scores["nmi"] > 0.3 and scores["purity"] > 0.5
    assert abs(scores["ami"]) < 0.02 and abs(scores["ari"]) < 0.02
    assert scores["size_cv"] > 10
    assert size_spread(np.array([0, 1, 1, 2, 2, 2]), 4) == pytest.approx(
        np.std([1, 2, 3, 0]) / np.mean([1, 2, 3, 0])
    )  # an empty cluster counts


def test_pca_matches_the_covariance_eigenvectors():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=gen) @ torch.randn(6, 6, generator=gen) + 3
    mean, axes, std = pca_fit(x, 3)
    cov = np.cov(x.double().numpy(), rowvar=False)
    values, vectors = np.linalg.eigh(cov)
    np.testing.assert_allclose(std.double().numpy() ** 2, values[::-1][:3], rtol=1e-4)
    for j in range(3):  # the same axes up to sign
        assert abs(float(axes[:, j].double() @ torch.from_numpy(vectors[:, -1 - j]))) > 0.9999
    projected = (x - mean) @ axes
    np.testing.assert_allclose(projected.std(dim=0).numpy(), std.numpy(), rtol=1e-4)


def test_hungarian_with_more_clusters_than_classes():
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([5, 5, 7, 7, 2, 2, 2, 2])  # class 0 split over clusters 5 and 7
    assert hungarian_accuracy(pred, truth) == pytest.approx(6 / 8)
    with pytest.raises(ValueError, match="pred/truth"):
        hungarian_accuracy(pred[:3], truth)


def test_knn_vote_weights_by_hand():
    # Query at angle 0; train points: class 0 at cos 0.9 (one), class 1 at cos 0.8 (two).
    def unit(c):
        return [c, math.sqrt(1 - c * c)]

    bank = torch.tensor([unit(0.9), unit(0.8), unit(0.8)])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    # sigma = 0.1: exp(9) = 8103 vs 2 exp(8) = 5962 -> class 0; sigma = 1: e^0.9 < 2 e^0.8.
    assert knn_accuracy(bank, labels, query, torch.tensor([0]), k=3, sigma=0.1) == 1.0
    assert knn_accuracy(bank, labels, query, torch.tensor([1]), k=3, sigma=1.0) == 1.0
    assert knn_accuracy(bank, labels, query, torch.tensor([0]), k=1, sigma=1.0) == 1.0


def test_linear_probe_separates_separable_classes():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=gen) * 4
    y = torch.arange(600) % 3
    x = centres[y] + torch.randn(600, 16, generator=gen)
    acc = linear_probe(x[:450], y[:450], x[450:], y[450:], epochs=20, batch_size=64, lr=1e-2)
    assert acc > 0.97
    shuffled = linear_probe(x[:450], y[:450][torch.randperm(450, generator=gen)], x[450:],
                            y[450:], epochs=5, batch_size=64)  # fmt: skip
    assert shuffled < 0.7

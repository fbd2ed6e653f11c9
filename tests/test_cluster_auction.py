"""The auction steps of BalancedKMeans: exact counts, eps-optimal over all K labels."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")
pytest.importorskip("sklearn")
from scipy.optimize import linear_sum_assignment
from sklearn.datasets import make_blobs

import equipart.balanced as balanced
from equipart.balanced import auction_labels
from equipart.cluster import BalancedKMeans


def _dense_ranker(z):
    """rank(rows, g, k) of auction_labels for a dense utility matrix z (N x K)."""

    def rank(rows, g, k):
        part = (z if rows is None else z[rows]) + g[None, :]
        cand = np.argsort(-part, axis=1, kind="stable")[:, :k]
        return cand.astype(np.int32), np.take_along_axis(part, cand, axis=1)

    return rank


def _problem(seed, n_rows=240, n_labels=12, spread=3.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, 3))
    centres = spread * rng.normal(size=(n_labels, 3))
    z = -((x[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    counts = np.full(n_labels, n_rows // n_labels)
    counts[: n_rows - counts.sum()] += 1
    return z, counts


def _optimum(z, counts):
    """The LP's optimum: the assignment problem with label j repeated counts[j] times."""
    wide = np.repeat(z, counts, axis=1)
    rows, cols = linear_sum_assignment(-wide)
    return wide[rows, cols].sum()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("width", [2, 4, 12])
def test_exact_counts_within_n_eps_of_the_optimum(seed, width):
    """Narrow candidates force re-ranking; the result still holds over all K labels."""
    z, counts = _problem(seed)
    eps = 1e-3
    labels, potential = auction_labels(
        _dense_ranker(z), counts, np.zeros(counts.size), (1.0, 0.1, eps), width
    )
    np.testing.assert_array_equal(np.bincount(labels, minlength=counts.size), counts)
    got = z[np.arange(z.shape[0]), labels].sum()
    best = _optimum(z, counts)
    assert best - z.shape[0] * eps - 1e-9 <= got <= best + 1e-9
    # eps-complementary slackness at the returned potentials, over every label
    utility = z + potential[None, :]
    own = utility[np.arange(z.shape[0]), labels]
    assert np.all(own >= utility.max(axis=1) - eps - 1e-9)


def test_a_warm_start_gives_the_same_guarantee():
    z, counts = _problem(7, spread=5.0)
    rank = _dense_ranker(z)
    _, potential = auction_labels(rank, counts, np.zeros(counts.size), (1.0,), 4)
    labels, _ = auction_labels(rank, counts, potential + 3.0, (1e-3,), 4)
    np.testing.assert_array_equal(np.bincount(labels, minlength=counts.size), counts)
    assert z[np.arange(z.shape[0]), labels].sum() >= _optimum(z, counts) - z.shape[0] * 1e-3


def test_zero_counts_take_no_rows():
    z, counts = _problem(1)
    counts[3] = 0
    counts[0] += z.shape[0] - counts.sum()
    labels, _ = auction_labels(_dense_ranker(z), counts, np.zeros(counts.size), (0.1,), 4)
    np.testing.assert_array_equal(np.bincount(labels, minlength=counts.size), counts)


def test_the_auction_gives_up_after_its_bid_budget(monkeypatch):
    z, counts = _problem(2)
    monkeypatch.setattr(balanced, "AUCTION_BIDS", 0)
    assert auction_labels(_dense_ranker(z), counts, np.zeros(counts.size), (0.1,), 4) is None


def test_a_fit_whose_auction_gives_up_falls_back_to_certified_steps(monkeypatch):
    """With no bids allowed every step is the certified rounding: exact sizes still."""
    x, _ = make_blobs(n_samples=600, centers=6, n_features=4, random_state=0)
    reference = BalancedKMeans(6, random_state=0).fit(x)
    monkeypatch.setattr(balanced, "AUCTION_BIDS", 0)
    model = BalancedKMeans(6, random_state=0).fit(x)
    assert np.bincount(model.labels_).tolist() == [100] * 6
    assert model.inertia_ == pytest.approx(reference.inertia_, rel=1e-9)

"""BalancedKMeans: a scikit-learn estimator whose every assignment has exact sizes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.datasets import make_blobs
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

import equipart
import equipart.cluster as cluster
from equipart import Bounds, Counts, Prior, Relaxed, Uniform, exact_assign
from equipart.cluster import BalancedKMeans


def _unequal_blobs(n_rows=900, n_features=4, seed=0):
    """Natural clusters of very different sizes: equal sizes must cut through them."""
    counts = np.array([450, 240, 120, 60, 30])
    counts[0] += n_rows - counts.sum()
    x, _ = make_blobs(n_samples=counts, n_features=n_features, cluster_std=1.5, random_state=seed)
    return x


@parametrize_with_checks(
    [BalancedKMeans(n_clusters=3), BalancedKMeans(n_clusters=2, size_min=2, lam=0.5)]
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def _sqdist(x, centres):
    return ((x[:, None, :] - centres[None, :, :]) ** 2).sum(-1)


@pytest.mark.parametrize(
    "options, low, high",
    [
        ({}, 100, 101),  # equal sizes: floor / ceil of 907 / 9
        ({"size_min": 70, "size_max": 130}, 70, 130),
        ({"size_min": 95}, 95, 907),
        ({"size_max": 105}, 0, 105),
        ({"marginals": Bounds(80, 120)}, 80, 120),
    ],
)
def test_cluster_sizes_are_within_the_bounds(options, low, high):
    x = _unequal_blobs(907)
    model = BalancedKMeans(9, random_state=0, **options).fit(x)
    sizes = np.bincount(model.labels_, minlength=9)
    assert sizes.min() >= low and sizes.max() <= high, sizes
    assert sizes.sum() == 907


def test_counts_and_prior_marginals_give_their_sizes():
    x = _unequal_blobs(900)
    sizes = np.array([300, 200, 200, 100, 50, 50])
    model = BalancedKMeans(6, marginals=Counts(sizes), random_state=1).fit(x)
    np.testing.assert_array_equal(np.bincount(model.labels_, minlength=6), sizes)
    model = BalancedKMeans(6, marginals=Prior(sizes / 900), random_state=1).fit(x)
    np.testing.assert_array_equal(np.bincount(model.labels_, minlength=6), sizes)


@pytest.mark.parametrize("options", [{}, {"size_min": 80, "size_max": 110}])
def test_labels_are_the_exact_lp_optimum_for_the_fitted_centres(options):
    """labels_ minimise the inertia against cluster_centers_ under the size constraints
    (the LP solved by POT's network simplex agrees)."""
    x = _unequal_blobs(600)
    model = BalancedKMeans(6, random_state=0, **options).fit(x)
    distances = _sqdist(x, model.cluster_centers_)
    marginals = Bounds(options["size_min"], options["size_max"]) if options else Uniform()
    reference = exact_assign(-distances, marginals, input="logits").labels
    ours = distances[np.arange(600), model.labels_].sum()
    best = distances[np.arange(600), reference].sum()
    assert ours == pytest.approx(best, rel=1e-9)
    assert model.inertia_ == pytest.approx(ours, rel=1e-6)


def test_lam_changes_the_running_time_not_the_clustering():
    x = _unequal_blobs(700)
    auto = BalancedKMeans(7, random_state=3).fit(x)
    for factor in (0.2, 5.0):
        other = BalancedKMeans(7, lam=auto.lam_ * factor, random_state=3).fit(x)
        np.testing.assert_array_equal(other.labels_, auto.labels_)
        assert other.inertia_ == pytest.approx(auto.inertia_, rel=1e-9)


def test_the_rounding_raises_prices_no_further_than_its_augmenting_path():
    """One point too many on label 0 and one too few on label 1 (points on a line near
    their label's centre): the cheapest repair moves one point of label 0 to label 1, and
    a phase of the successive shortest paths raises no label's price by more than that
    move's cost, however far the other labels lie (far prices would make rows prefer
    labels outside their candidates and fail the certificate for nothing)."""
    from equipart.balanced import solve_candidates

    n_labels, per = 12, 10
    centres = 10.0 * np.arange(n_labels)
    sizes = np.full(n_labels, per)
    sizes[0], sizes[1] = per + 1, per - 1
    rng = np.random.default_rng(0)
    x = np.concatenate([c + rng.uniform(-1, 1, s) for c, s in zip(centres, sizes, strict=True)])
    z = -((x[:, None] - centres[None, :]) ** 2)
    cand = np.argsort(-z, axis=1, kind="stable")
    value = np.take_along_axis(z, cand, axis=1)
    bounds = np.full(n_labels, per)
    solution = solve_candidates(cand, value, np.zeros(n_labels), bounds, bounds, complete=True)
    assert solution.certified and solution.n_moves == 1
    assert np.bincount(solution.labels, minlength=n_labels).tolist() == [per] * n_labels
    move_cost = float(np.min(z[: per + 1, 0] - z[: per + 1, 1]))
    assert solution.prices.min() >= 0.0
    assert solution.prices.max() <= move_cost * (1 + 1e-12)


@pytest.mark.parametrize("seed", [0, 3])
def test_well_separated_equal_blobs_certify_at_the_first_candidate_width(seed, monkeypatch):
    """Blobs of exactly the cluster size: every assignment step's balanced rounding is
    certified on its first, narrowest candidate pass (its prices stay where the Sinkhorn
    dual put them, up to the few moves the sizes need) and finds the blobs."""
    passes = []
    solve = equipart.balanced.solve_candidates

    def recording(cand, *args, **kwargs):
        solution = solve(cand, *args, **kwargs)
        passes.append((cand.shape[1], solution.certified))
        return solution

    monkeypatch.setattr(equipart.balanced, "solve_candidates", recording)
    x, truth = make_blobs(
        n_samples=4000, centers=40, n_features=32, cluster_std=2.0, random_state=seed
    )
    model = BalancedKMeans(40, random_state=seed).fit(x)
    assert passes and all(p == (equipart.balanced.FIRST_WIDTH, True) for p in passes), passes
    assert np.bincount(model.labels_).tolist() == [100] * 40
    pairs = np.unique(np.stack([model.labels_, truth]), axis=1)
    assert pairs.shape[1] == 40  # one found cluster per blob


def test_each_assignment_is_at_least_as_good_as_kmeans_constrained():
    """For the same centres, the assignment step is the exact optimum of the inertia under
    the sizes; k-means-constrained's min-cost flow costs each point by its unsquared
    distance (rounded to 1/1000), so its assignment's inertia is never lower."""
    kmc = pytest.importorskip("k_means_constrained.k_means_constrained_")
    x = _unequal_blobs(600)
    centres = x[np.random.default_rng(0).choice(600, 6, replace=False)]
    distances = _sqdist(x, centres)
    theirs = kmc._labels_constrained(x, centres, 100, 100, np.zeros(600))[0]
    constraint = Uniform().bind(600, 6)
    ours = cluster._assign(x, centres, constraint, 0.05, cluster._Duals(), "auto")
    assert np.bincount(ours).tolist() == np.bincount(theirs).tolist() == [100] * 6
    optimum = exact_assign(-distances, Uniform(), input="logits").labels
    rows = np.arange(600)
    assert distances[rows, ours].sum() == pytest.approx(distances[rows, optimum].sum(), rel=1e-9)
    assert distances[rows, ours].sum() <= distances[rows, theirs].sum() * (1 + 1e-12)


def test_predict_transform_and_score():
    x = _unequal_blobs(800).astype(np.float32)
    model = BalancedKMeans(8, random_state=0).fit(x)
    new = x[::3] + 0.1
    distances = model.transform(new)
    assert distances.dtype == np.float32 and distances.shape == (267, 8)
    np.testing.assert_array_equal(model.predict(new), distances.argmin(1))
    expected = _sqdist(new.astype(np.float64), model.cluster_centers_.astype(np.float64))
    np.testing.assert_allclose(distances.astype(np.float64) ** 2, expected, rtol=1e-3, atol=1e-3)
    assert model.score(new) == pytest.approx(-expected.min(1).sum(), rel=1e-4)
    balanced = model.predict(new, balanced=True)
    assert sorted(np.bincount(balanced, minlength=8).tolist()) == [33] * 5 + [34] * 3
    assert model.cluster_centers_.dtype == np.float32


def test_n_init_keeps_the_lowest_inertia_and_runs_are_reproducible():
    x = _unequal_blobs(500)
    single = [BalancedKMeans(5, random_state=seed).fit(x).inertia_ for seed in range(3)]
    best = BalancedKMeans(5, n_init=3, random_state=0).fit(x)
    assert best.inertia_ <= single[0] + 1e-9
    again = BalancedKMeans(5, n_init=3, random_state=0).fit(x)
    np.testing.assert_array_equal(again.labels_, best.labels_)


def test_an_empty_cluster_keeps_its_centre():
    x = np.arange(12.0).reshape(6, 2)
    previous = np.array([[0.0, 0.0], [5.0, 5.0], [9.0, 9.0]])
    centres = cluster._centroids(x, np.array([0, 0, 0, 2, 2, 2]), previous)
    np.testing.assert_array_equal(centres[1], previous[1])
    np.testing.assert_allclose(centres[0], x[:3].mean(0))


@pytest.mark.parametrize(
    "options, n_rows, error, message",
    [
        ({"n_clusters": 5}, 4, ValueError, r"n_samples=4 should be >= n_clusters=5\."),
        ({"size_min": 30}, 100, ValueError, r"size_min: n_clusters \* size_min = 4 \* 30"),
        ({"size_max": 20}, 100, ValueError, r"size_max: n_clusters \* size_max = 4 \* 20"),
        ({"size_min": 30, "size_max": 20}, 100, ValueError, "size_min=30 exceeds size_max=20"),
        ({"size_min": 1, "marginals": Uniform()}, 100, ValueError, "marginals: pass either"),
        ({"marginals": Relaxed(Uniform(), 1.0)}, 100, ValueError, "marginals: a Relaxed"),
        ({"marginals": Counts([50, 50])}, 100, ValueError, "n_clusters = 4"),
        ({"marginals": Counts([20, 20, 20, 20])}, 100, ValueError, "sum to 80"),
        ({"lam": np.inf}, 100, InvalidParameterError, "The 'lam' parameter"),
        ({"lam": -1.0}, 100, InvalidParameterError, "The 'lam' parameter"),
        ({"n_clusters": 0}, 100, InvalidParameterError, "The 'n_clusters' parameter"),
        ({"marginals": [25, 25, 25, 25]}, 100, InvalidParameterError, "'marginals' parameter"),
        ({"backend": "nope"}, 100, ValueError, "backend: unknown backend 'nope'"),
    ],
)
def test_bad_parameters_are_refused_before_any_work(options, n_rows, error, message):
    x = np.random.default_rng(0).standard_normal((n_rows, 3))
    with pytest.raises(error, match=message):
        BalancedKMeans(**{"n_clusters": 4, **options}).fit(x)


def test_bad_data_gets_scikit_learn_messages():
    x = np.random.default_rng(0).standard_normal((50, 3))
    x[4, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        BalancedKMeans(3).fit(x)
    model = BalancedKMeans(3, random_state=0).fit(np.nan_to_num(x))
    with pytest.raises(ValueError, match="X has 2 features, but BalancedKMeans is expecting 3"):
        model.predict(np.nan_to_num(x)[:, :2])


def test_exported_lazily_from_equipart():
    assert equipart.BalancedKMeans is BalancedKMeans


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
def test_every_backend_gives_the_same_clustering(backend):
    """The assignment steps run on Factored scores under each backend (torch: CPU tensors
    sharing the data's memory) and give the same fit and predictions."""
    pytest.importorskip(backend)
    x = _unequal_blobs().astype(np.float32)
    reference = BalancedKMeans(5, random_state=0, backend="numpy").fit(x)
    model = BalancedKMeans(5, random_state=0, backend=backend).fit(x)
    np.testing.assert_array_equal(model.labels_, reference.labels_)
    np.testing.assert_array_equal(model.predict(x[:50]), reference.predict(x[:50]))
    balanced = model.predict(x[:50], balanced=True)
    np.testing.assert_array_equal(balanced, reference.predict(x[:50], balanced=True))
    assert np.bincount(balanced, minlength=5).tolist() == [10] * 5

"""exact_assign: the hard LP through ot.emd, its size guard, and rounding="exact"."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import ot
import pytest
from conftest import to_backend, to_numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

import equipart
from equipart import Counts, Prior, Uniform, exact_assign


def _scores(n, k, seed=0):
    return np.random.default_rng(seed).normal(size=(n, k)).astype(np.float32)


def _logp(x):
    z = x.astype(np.float64)
    return (
        z
        - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
        - z.max(1, keepdims=True)
    )


def _value(x, labels):
    return _logp(x)[np.arange(x.shape[0]), labels].mean()


def test_matches_ot_emd_on_divisible_uniform():
    x = _scores(120, 6)
    result = exact_assign(x, backend="numpy")
    plan = ot.emd(np.ones(120), np.full(6, 20.0), -_logp(x))
    reference = float((plan * _logp(x)).sum()) / 120
    assert np.bincount(result.labels, minlength=6).tolist() == [20] * 6
    assert result.objective == pytest.approx(reference, abs=1e-12)
    assert result.objective == pytest.approx(_value(x, result.labels), abs=1e-12)
    assert result.rounding == "exact" and result.converged and result.error == 0.0


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_matches_linear_sum_assignment_when_k_equals_n(n, seed):
    x = _scores(n, n, seed)
    rows, cols = linear_sum_assignment(_logp(x), maximize=True)
    result = exact_assign(x, backend="numpy")
    assert sorted(result.labels.tolist()) == list(range(n))
    assert _value(x, result.labels) == pytest.approx(_logp(x)[rows, cols].mean(), abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 40), k=st.integers(2, 9), seed=st.integers(0, 10_000))
def test_uneven_uniform_sizes_are_floor_or_ceil_and_optimal(n, k, seed):
    x = _scores(n, k, seed)
    result = exact_assign(x, backend="numpy")
    counts = np.bincount(result.labels, minlength=k)
    assert counts.sum() == n
    assert set(counts.tolist()) <= {n // k, -(-n // k)}
    # brute force over which labels get the larger size: the best of the fixed-size LPs
    larger = n % k
    best = -np.inf
    if larger == 0:
        best = _value(x, result.labels)
    else:
        for subset in combinations(range(k), larger):
            sizes = np.full(k, n // k)
            sizes[list(subset)] += 1
            best = max(best, exact_assign(x, Counts(sizes), backend="numpy").objective)
    assert result.objective == pytest.approx(best, abs=1e-12)


def test_uniform_with_more_labels_than_points_is_rectangular_assignment():
    x = _scores(4, 9, seed=3)
    rows, cols = linear_sum_assignment(_logp(x), maximize=True)
    result = exact_assign(x, backend="numpy")
    assert np.bincount(result.labels, minlength=9).max() == 1
    assert result.objective == pytest.approx(_logp(x)[rows, cols].mean(), abs=1e-12)


def test_counts_with_a_zero_size_label_and_prior():
    x = _scores(30, 4, seed=5)
    result = exact_assign(x, Counts([10, 0, 15, 5]), backend="numpy")
    assert np.bincount(result.labels, minlength=4).tolist() == [10, 0, 15, 5]
    assert result.state.g[1] == -np.inf
    prior = exact_assign(x, Prior([0.5, 0.25, 0.25, 0.0]), backend="numpy")
    counts = np.bincount(prior.labels, minlength=4)
    assert counts[0] == 15 and counts[3] == 0 and sorted(counts[1:3].tolist()) == [7, 8]


def test_single_label():
    result = exact_assign(_scores(7, 1), backend="numpy")
    assert result.labels.tolist() == [0] * 7


def test_single_open_label_with_a_zero_probability_is_infeasible():
    """One LP column (Counts([3, 0, 0])) takes every point: a row with probability 0 for it
    cannot, and the one-column shortcut used to return it anyway (objective -inf)."""
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    with pytest.raises(ValueError, match="no assignment meets the marginals"):
        exact_assign(probs, Counts([3, 0, 0]), input="probs", backend="numpy")
    probs[1] = [0.5, 0.5, 0.0]
    assert exact_assign(probs, Counts([3, 0, 0]), input="probs").labels.tolist() == [0, 0, 0]


def test_probs_input_with_zero_probabilities():
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.9, 0.1]])
    result = exact_assign(probs, input="probs", backend="numpy")
    assert result.labels.tolist() == [0, 1, 1, 0]


def test_a_forced_unlikely_label_is_not_mistaken_for_infeasibility():
    """The only assignment avoiding zero probabilities uses two unlikely labels (cost
    6.9 + 9.2); zero probabilities cost just above the largest finite cost plus the
    spread before, so the LP took one of them and the solve said 'infeasible'."""
    probs = np.array(
        [[0.0, 0.39, 0.001, 0.609], [1e-4, 0.9999, 0.0, 0.0], [0.92, 0.07, 0.0, 0.01], [0, 1, 0, 0]]
    )
    result = exact_assign(probs, input="probs", backend="numpy")
    assert result.labels.tolist() == [2, 0, 3, 1]


def test_spreads_below_the_mask_depth_are_exact():
    """Finite logits millions apart are scores, not masks: the LP still compares them."""
    x = np.array([[0.0, -2e6, -9e6], [0.0, -8e6, -3e6], [0.0, -1.0, -1.0]])
    result = exact_assign(x, Counts([1, 1, 1]), backend="numpy")
    assert result.labels.tolist() == [1, 0, 2]  # -2e6 - 1 in all: the optimum


@pytest.mark.parametrize("mask", [-1e8, -1e16, -1e30, float(np.finfo(np.float32).min)])
def test_masked_logits_are_optimal(mask):
    """Labels masked with a very negative finite logit: the LP's answer is optimal for the
    unmasked log-probabilities (with masks of -1e16 and below, the float64 network simplex
    lost the O(1) differences beside them and returned worse labellings)."""
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = rng.normal(size=(12, 12))
        masked = rng.random((12, 12)) < 0.3
        masked[np.arange(12), rng.permutation(12)] = False  # a perfect unmasked matching
        logp = np.where(masked, -1e6, _logp(np.where(masked, -np.inf, x)))
        rows, cols = linear_sum_assignment(logp, maximize=True)
        result = exact_assign(np.where(masked, mask, x), backend="numpy")
        assert not masked[np.arange(12), result.labels].any()
        assert logp[np.arange(12), result.labels].sum() == pytest.approx(
            logp[rows, cols].sum(), abs=1e-9
        )


@pytest.mark.parametrize("mask", [-1e9, -1e30])
def test_rows_forced_onto_masked_labels_are_the_ones_that_lose_least(mask):
    """When the sizes force rows onto masked labels, the optimum sends the rows whose best
    label is worst: 40 of 60 rows may take only label 1 (size 20), so 20 of them must take
    a masked label, as if every mask were one common value. The masked tier cost the same
    for every row, and the LP picked any 20 (78 nats short in a 600-row case)."""
    rng = np.random.default_rng(13)
    x = rng.normal(size=(60, 3))
    x[:40, [0, 2]] = mask
    result = exact_assign(x, backend="numpy")
    logp = np.where(np.arange(60)[:, None] < 40, np.where(x > mask, 0.0, -1e3), _logp(x))
    logp[:40, 1] = x[:40, 1]  # a common mask value: the forced rows differ by their label 1
    slots = np.repeat(np.arange(3), 20)
    rows, cols = linear_sum_assignment(logp[:, slots], maximize=True)
    want = logp[rows, slots[cols]].sum()
    assert logp[np.arange(60), result.labels].sum() == pytest.approx(want, abs=1e-9)
    assert np.bincount(result.labels).tolist() == [20, 20, 20]


def test_logprobs_and_logits_agree():
    x = _scores(50, 5, seed=8)
    a = exact_assign(x, backend="numpy")
    b = exact_assign(_logp(x), input="logprobs", backend="numpy")
    assert a.labels.tolist() == b.labels.tolist()


def test_heads_are_solved_independently():
    x = np.stack([_scores(20, 4, seed=1), _scores(20, 4, seed=2)])
    result = exact_assign(x, backend="numpy")
    assert result.labels.shape == (2, 20)
    for h in range(2):
        assert result.labels[h].tolist() == exact_assign(x[h], backend="numpy").labels.tolist()


def test_returns_in_the_callers_library(backend_name):
    x = _scores(40, 5, seed=4)
    result = exact_assign(to_backend(x, backend_name))
    assert type(result.labels) is type(to_backend(np.zeros(1), backend_name))
    assert to_numpy(result.labels).tolist() == exact_assign(x, backend="numpy").labels.tolist()


def test_size_guard_refuses_with_the_estimate():
    huge = np.broadcast_to(np.zeros(1, dtype=np.float32), (1_000_000, 1_000))
    with pytest.raises(ValueError, match=r"GiB.*rounding='balanced'"):
        exact_assign(huge)
    with pytest.raises(ValueError, match=r"rounding='balanced'"):
        equipart.assign_labels(huge, rounding="exact")
    with pytest.raises(ValueError, match="max_memory"):
        exact_assign(_scores(10, 2), max_memory=1000)
    with pytest.raises(ValueError, match="max_seconds"):
        exact_assign(_scores(10, 2), max_seconds=-1)


def test_assign_labels_routes_exact():
    x = _scores(60, 4, seed=9)
    routed = equipart.assign_labels(x, rounding="exact", backend="numpy")
    assert routed.rounding == "exact"
    assert routed.labels.tolist() == exact_assign(x, backend="numpy").labels.tolist()


def test_caller_array_is_untouched():
    x = _scores(30, 3)
    copy = x.copy()
    exact_assign(x, Uniform(), backend="numpy")
    assert np.array_equal(x, copy)


def test_exact_rounding_state_feeds_the_next_solve():
    """The README's loop with rounding="exact": its state is lam times the LP's prices at
    the lam passed, so it is accepted back as warm_start (it was stored at lam 1 and the
    second epoch was refused), and a Sinkhorn solve can start from it too."""
    rng = np.random.default_rng(0)
    state = None
    for _ in range(2):
        scores = rng.standard_normal((300, 6)).astype(np.float32)
        result = equipart.assign_labels(scores, lam=25.0, warm_start=state, rounding="exact")
        state = result.state
        assert state.lam == 25.0
        np.testing.assert_allclose(state.g, 25.0 * exact_assign(scores).state.g)
    cold = equipart.assign_labels(scores, lam=25.0)
    warm = equipart.assign_labels(scores, lam=25.0, warm_start=state)
    assert warm.converged and warm.n_iter < cold.n_iter  # (with the prices negated: more)


def test_exact_prices_are_the_large_lam_limit_of_the_dual():
    """exact_assign's state holds the LP's label prices with the sign of g / lam: at lam
    400 the converged entropic dual is within 0.05 of them (it was their negation)."""
    scores = np.random.default_rng(0).standard_normal((300, 6))
    prices = exact_assign(scores).state.g
    entropic = equipart.assign_labels(scores, lam=400.0, max_iter=5000).state.g / 400.0
    np.testing.assert_allclose(entropic, prices, atol=0.05)

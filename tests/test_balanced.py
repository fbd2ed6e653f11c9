"""rounding="balanced": exact counts, certified optimality against ot.emd / LSA, ties."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_backend, to_numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

import equipart
import equipart.balanced
from equipart import Counts, Prior, Uniform, exact_assign
from equipart.balanced import solve_candidates


def _scores(n, k, seed=0, scale=2.0):
    return (np.random.default_rng(seed).normal(size=(n, k)) * scale).astype(np.float32)


def _balanced(x, marginals=None, **kw):
    return equipart.assign_labels(
        x, lam=25.0, marginals=marginals, rounding="balanced", backend="numpy", **kw
    )


def _check_counts(labels, marginals, n, k):
    lo, hi = (marginals or Uniform()).bind(n, k).count_bounds()
    counts = np.bincount(to_numpy(labels), minlength=k)
    assert counts.sum() == n
    assert np.all(counts >= lo) and np.all(counts <= hi)
    return counts


marginal_cases = st.sampled_from(["uniform", "counts", "prior"])


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 60),
    k=st.integers(1, 12),
    which=marginal_cases,
    seed=st.integers(0, 10_000),
)
def test_counts_are_exact_and_labels_optimal(n, k, which, seed):
    _check_exact_and_optimal(_scores(n, k, seed), which, seed)


def _check_exact_and_optimal(x, which, seed):
    """Balanced rounding of x under a drawn marginal: exact counts, ot.emd's objective."""
    n, k = x.shape
    rng = np.random.default_rng(seed)
    if which == "counts":
        marginals = Counts(np.bincount(rng.integers(k, size=n), minlength=k))
    elif which == "prior":
        marginals = Prior(rng.dirichlet(np.ones(k)))
    else:
        marginals = Uniform()
    result = _balanced(x, marginals, max_iter=3000)
    _check_counts(result.labels, marginals, n, k)
    optimum = exact_assign(x, marginals, backend="numpy").objective
    assert result.objective == pytest.approx(optimum, abs=1e-5 * (1 + abs(optimum)))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 10), seed=st.integers(0, 10_000))
def test_k_equals_n_matches_linear_sum_assignment(n, seed):
    x = _scores(n, n, seed)
    logp = x - np.log(np.exp(x.astype(np.float64)).sum(1, keepdims=True))
    rows, cols = linear_sum_assignment(logp, maximize=True)
    result = _balanced(x, max_iter=3000)
    assert sorted(result.labels.tolist()) == list(range(n))
    assert result.objective == pytest.approx(logp[rows, cols].mean(), abs=1e-5)


def test_more_labels_than_points_gives_distinct_labels():
    x = _scores(5, 11, seed=2)
    logp = x - np.log(np.exp(x.astype(np.float64)).sum(1, keepdims=True))
    rows, cols = linear_sum_assignment(logp, maximize=True)
    result = _balanced(x, max_iter=3000)
    assert np.bincount(result.labels, minlength=11).max() == 1
    assert result.objective == pytest.approx(logp[rows, cols].mean(), abs=1e-5)


def test_single_label():
    assert _balanced(_scores(9, 1)).labels.tolist() == [0] * 9


def test_zero_size_counts_label_is_never_used():
    x = _scores(40, 5, seed=6)
    x[:, 2] += 10.0  # every point prefers the label that must stay empty
    sizes = [10, 10, 0, 12, 8]
    result = _balanced(x, Counts(sizes))
    assert np.bincount(result.labels, minlength=5).tolist() == sizes


def test_identical_rows_are_deterministic():
    row = _scores(1, 6, seed=1)
    x = np.repeat(row, 31, axis=0)
    first = _balanced(x).labels
    _check_counts(first, None, 31, 6)
    for _ in range(2):
        assert _balanced(x).labels.tolist() == first.tolist()


def test_narrow_candidates_are_widened_until_certified(monkeypatch):
    # one candidate per row cannot balance a skewed problem: the rounder must widen
    monkeypatch.setattr(equipart.balanced, "FIRST_WIDTH", 1)
    x = _scores(300, 10, seed=11)
    x[:, 0] += 3.0
    result = _balanced(x)
    _check_counts(result.labels, None, 300, 10)
    optimum = exact_assign(x, backend="numpy").objective
    assert result.objective == pytest.approx(optimum, abs=1e-5)


def test_certificate_is_sound_with_stale_prices_and_few_candidates():
    # rank candidates with a wrong dual: whenever the solve certifies, it must be optimal
    from equipart.backends.numpy import NumpyBackend

    backend, outcomes = NumpyBackend(), set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        x = _scores(24, 6, seed, scale=4.0)
        g = rng.normal(size=6) * 0.3
        cand, value = backend.top_labels(x, "logits", 1.0, g, 4)
        lo, hi = Uniform().bind(24, 6).count_bounds()
        solution = solve_candidates(cand, value, g, lo, hi, complete=False)
        outcomes.add(solution.certified)
        if solution.certified:
            picked = x[np.arange(24), solution.labels].astype(np.float64).sum()
            optimum = exact_assign(x, backend="numpy")
            best = x[np.arange(24), optimum.labels].astype(np.float64).sum()
            assert picked == pytest.approx(best, abs=1e-4)
    assert outcomes == {True, False}  # both branches of the certificate are exercised


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunked_passes_give_the_unchunked_solution(dtype, monkeypatch):
    """The label graph's build and the certificate on chunks of a few candidates (every
    pass split many times) give the same labels, prices, phases and moves as one chunk,
    on int32 candidates with float32 or float64 values, ties included."""
    from equipart.backends.numpy import NumpyBackend

    x = _scores(500, 12, seed=5, scale=3.0).astype(dtype)
    x[:40] = x[0]  # exactly tied rows: several tight movers per arc
    g = np.random.default_rng(5).normal(size=12) * 0.5
    cand, value = NumpyBackend().top_labels(x, "logits", 1.0, g, 5)
    lo, hi = Uniform().bind(500, 12).count_bounds()
    whole = solve_candidates(cand, value, g, lo, hi, complete=False, phases="python")
    monkeypatch.setattr(equipart.balanced, "CHUNK_ENTRIES", 7)
    chunked = solve_candidates(
        cand.astype(np.int32), value, g, lo, hi, complete=False, phases="python"
    )
    assert whole.n_phases > 0 and whole.n_moves > 0
    assert np.array_equal(chunked.labels, whole.labels) and chunked.labels.dtype == np.int64
    assert np.array_equal(chunked.prices, whole.prices)
    assert (chunked.n_phases, chunked.n_moves, chunked.certified) == (
        whole.n_phases,
        whole.n_moves,
        whole.certified,
    )


def test_bounds_bands_are_respected_and_optimal():
    x = _scores(90, 6, seed=12)
    x[:, 0] += 2.0
    bounds = equipart.Bounds(lo=10, hi=20)
    result = _balanced(x, bounds)
    counts = np.bincount(result.labels, minlength=6)
    assert counts.min() >= 10 and counts.max() <= 20
    optimum = exact_assign(x, bounds, backend="numpy").objective
    assert result.objective == pytest.approx(optimum, abs=1e-5)


def test_objective_is_between_argmax_and_its_upper_bound():
    x = _scores(400, 8, seed=13, scale=1.0)
    balanced = _balanced(x)
    exact = exact_assign(x, backend="numpy")
    assert balanced.objective == pytest.approx(exact.objective, abs=1e-6)


def test_every_backend_gives_exact_counts(backend_name):
    x = _scores(203, 7, seed=14)
    result = equipart.assign_labels(
        to_backend(x, backend_name), lam=25.0, rounding="balanced", backend=backend_name
    )
    assert type(result.labels) is type(to_backend(np.zeros(1), backend_name))
    _check_counts(result.labels, None, 203, 7)
    optimum = exact_assign(x, backend="numpy").objective
    assert result.objective == pytest.approx(optimum, abs=1e-5)


def _tied_scores(which, n, k, seed):
    """Scores whose rows tie exactly (constant, integer-valued) or nearly (near-uniform)."""
    rng = np.random.default_rng(seed)
    if which == "constant":
        return np.zeros((n, k), dtype=np.float32)
    if which == "integer":
        return rng.integers(0, 4, size=(n, k)).astype(np.float32)
    if which == "identical":
        return np.repeat(_scores(1, k, seed), n, axis=0)
    return (0.01 * rng.standard_normal((n, k))).astype(np.float32)


tied_cases = st.sampled_from(["constant", "integer", "identical", "near-uniform"])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 80),
    k=st.integers(1, 12),
    which=tied_cases,
    marginal=marginal_cases,
    seed=st.integers(0, 10_000),
)
def test_tied_scores_get_exact_counts_and_the_lp_optimum(n, k, which, marginal, seed):
    _check_exact_and_optimal(_tied_scores(which, n, k, seed), marginal, seed)


@pytest.mark.parametrize("which", ["constant", "integer", "identical", "near-uniform"])
def test_tied_scores_at_width_of_the_benchmark_are_certified_optimal(which):
    # 600 x 30 (the benchmark's families at a size ot.emd solves quickly), with bands
    x = _tied_scores(which, 600, 30, seed=3)
    for marginals in (None, equipart.Bounds.relative(0.8, 1.3)):
        result = _balanced(x, marginals)
        _check_counts(result.labels, marginals, 600, 30)
        optimum = exact_assign(x, marginals, backend="numpy").objective
        assert result.objective == pytest.approx(optimum, abs=1e-6 * (1 + abs(optimum)))


def test_tied_movers_move_together_in_one_phase():
    # identical rows preferring label 0 by a margin, tied on every other label: the
    # whole surplus of label 0 leaves in one phase, 180 of its points at once
    k, n = 10, 200
    x = np.zeros((n, k), dtype=np.float32)
    x[:, 0] = 1.0
    cand = np.tile(np.arange(k), (n, 1))
    value = x[:, cand[0]].astype(np.float64)
    lo, hi = Uniform().bind(n, k).count_bounds()
    solution = solve_candidates(cand, value, np.zeros(k), lo, hi, complete=True)
    assert solution.feasible and solution.certified
    assert np.bincount(solution.labels, minlength=k).tolist() == [20] * k
    assert (solution.n_phases, solution.n_moves) == (1, 180)
    # deterministic: the lowest-index points move first, to the lowest-index labels
    assert solution.labels.tolist() == np.repeat(np.r_[np.arange(1, k), 0], 20).tolist()


def test_exact_ties_are_spread_before_the_flow():
    # constant rows start spread round-robin over their tied candidates: no move needed
    n, k = 120, 6
    cand = np.tile(np.arange(k), (n, 1))
    lo, hi = Uniform().bind(n, k).count_bounds()
    solution = solve_candidates(cand, np.zeros((n, k)), np.zeros(k), lo, hi, complete=True)
    assert solution.certified and (solution.n_phases, solution.n_moves) == (0, 0)
    assert np.bincount(solution.labels, minlength=k).tolist() == [20] * k


def test_candidates_that_cannot_cover_the_bands_are_refused_before_any_phase():
    n, k = 50, 10
    cand = np.tile(np.arange(4), (n, 1))  # labels 4..9 appear in no row
    lo, hi = Uniform().bind(n, k).count_bounds()
    solution = solve_candidates(cand, np.zeros((n, 4)), np.zeros(k), lo, hi, complete=False)
    assert not solution.feasible and not solution.certified
    assert (solution.n_phases, solution.n_moves) == (0, 0)


def test_rows_tied_across_every_candidate_widen_to_all_labels_at_once():
    from equipart.backends.numpy import NumpyBackend
    from equipart.sources import InMemory

    n, k = 400, 50
    x = np.zeros((n, k), dtype=np.float32)
    backend = NumpyBackend()
    source = InMemory(backend, x, 1, n, k, False)
    passes, _ = equipart.balanced.balanced_passes(
        source, backend, 0, "logits", 25.0, np.zeros(k), Uniform().bind(n, k)
    )
    assert [width for width, _ in passes] == [equipart.balanced.FIRST_WIDTH, k]
    assert passes[-1][1].certified
    # a row that is not fully tied keeps the gradual widening
    x[0, :] = np.arange(k, dtype=np.float32)
    passes, _ = equipart.balanced.balanced_passes(
        source, backend, 0, "logits", 25.0, np.zeros(k), Uniform().bind(n, k)
    )
    assert [width for width, _ in passes][:2] == [8, 8 * equipart.balanced.WIDEN]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 120),
    k=st.integers(2, 14),
    width=st.integers(1, 14),
    banded=st.booleans(),
    tied=st.booleans(),
    impossible=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_compiled_phases_match_the_python_phases_and_the_exact_optimum(
    n, k, width, banded, tied, impossible, seed
):
    """The Numba phase loop and the NumPy one reach the same optimum of the restricted
    LP, the same feasibility and the same certificate, impossible (-inf) labels
    included; whenever the compiled solve certifies, its labels are optimal for the full
    problem (against ot.emd)."""
    pytest.importorskip("numba")
    from equipart import Bounds
    from equipart.backends.numpy import NumpyBackend

    rng = np.random.default_rng(seed)
    x = _scores(n, k, seed, scale=3.0)
    if tied:
        x = np.round(x)  # many exactly tied movers
    if impossible:  # some labels impossible for some rows (each row keeps one)
        x[rng.random((n, k)) < 0.3] = -np.inf
        x[np.arange(n), rng.integers(0, k, n)] = 0.0
    g = rng.normal(size=k) * 0.5
    cand, value = NumpyBackend().top_labels(x, "logits", 1.0, g, min(width, k))
    marginal = Bounds(max(n // k - 2, 0), n // k + 2) if banded else Uniform()
    lo, hi = marginal.bind(n, k).count_bounds()
    complete = width >= k
    python = solve_candidates(cand, value, g, lo, hi, complete=complete, phases="python")
    compiled = solve_candidates(cand, value, g, lo, hi, complete=complete, phases="compiled")
    assert (compiled.feasible, compiled.certified) == (python.feasible, python.certified)
    if not compiled.feasible:
        return
    counts = np.bincount(compiled.labels, minlength=k)
    assert np.all(counts >= lo) and np.all(counts <= hi)
    rows = np.arange(n)
    picked = x[rows, compiled.labels].astype(np.float64).sum()
    assert picked == pytest.approx(x[rows, python.labels].astype(np.float64).sum(), abs=1e-6)
    if compiled.certified and not impossible:
        optimum = exact_assign(x, marginal, backend="numpy")
        best = x[rows, optimum.labels].astype(np.float64).sum()
        assert picked == pytest.approx(best, abs=1e-4)


def test_phases_must_name_an_engine():
    cand = np.zeros((4, 1), dtype=np.int32)
    lo = hi = np.array([4])
    with pytest.raises(ValueError, match="phases: 'gpu' is not one of"):
        solve_candidates(cand, np.zeros((4, 1)), np.zeros(1), lo, hi, complete=True, phases="gpu")

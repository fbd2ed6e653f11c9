"""The sampled start of a large cold solve (``equipart.solver.SAMPLE_TOL``).

Where the scores are skewed (judged on the sample: a label with over 1 + SAMPLE_SKEW
times its share at the cold dual), a cold in-memory solve with an equality target first
solves an evenly spread sample of the rows and starts from its dual. It must reach the
cold solve's solution (the duals of two converged solves agree up to a common shift, and
so do the labels of every row not within that agreement of a tie), on every backend, in
fewer sweeps of the whole scores counting the sample's; and it must not run where it does
not apply.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import to_backend, to_numpy

import equipart.solver
from equipart import Bounds, ConvergenceWarning, Prior, assign_labels
from equipart.backends import get_backend
from equipart.marginals import Uniform
from equipart.sources import InMemory

N_ROWS, N_LABELS = 20_000, 128  # above SAMPLE_MIN_ELEMENTS, and N / 8 >= 6 K
TOL = 1e-6


def zipf_logits(n_rows: int = N_ROWS, n_labels: int = N_LABELS, seed: int = 0) -> np.ndarray:
    """Noise plus a bias of -log(1 + rank) per label: a network preferring a few labels."""
    rng = np.random.default_rng(seed)
    bias = -np.log1p(rng.permutation(n_labels))
    return (rng.standard_normal((n_rows, n_labels)) + bias).astype(np.float32)


def solve(scores, *, sampled: bool, monkeypatch, **kwargs):
    """A converged solve, with the sampled start allowed or not (its size floor raised)."""
    floor = equipart.solver.SAMPLE_MIN_ELEMENTS if sampled else np.iinfo(np.int64).max
    with monkeypatch.context() as patch, warnings.catch_warnings():
        patch.setattr(equipart.solver, "SAMPLE_MIN_ELEMENTS", floor)
        warnings.simplefilter("error", ConvergenceWarning)
        return assign_labels(scores, 25.0, tol=kwargs.pop("tol", TOL), **kwargs)


def assert_same_solution(result, reference, scores: np.ndarray, lam: float) -> None:
    """Per head: duals equal up to a shift within 1e-3 nats (far above what two solves
    converged at 1e-6 leave, far below a wrong solution's), labels equal wherever a row's
    two best labels are further apart than twice that."""
    g, want = np.atleast_2d(result.state.g), np.atleast_2d(reference.state.g)
    labels = to_numpy(result.labels).reshape(len(want), -1)
    want_labels = to_numpy(reference.labels).reshape(len(want), -1)
    for head, head_scores in enumerate(scores.reshape(len(want), *scores.shape[-2:])):
        difference = g[head] - want[head]
        difference -= difference.mean()
        assert np.abs(difference).max() < 1e-3, np.abs(difference).max()
        top = np.sort(lam * head_scores.astype(np.float64) + want[head], axis=-1)
        clear = top[:, -1] - top[:, -2] > 2e-3
        assert clear.mean() > 0.99
        np.testing.assert_array_equal(labels[head][clear], want_labels[head][clear])


def test_skewed_scores_start_from_a_sample_and_reach_the_cold_solution(
    backend_name, monkeypatch
):
    scores = zipf_logits()
    data = to_backend(scores, backend_name)
    cold = solve(scores, sampled=False, monkeypatch=monkeypatch, backend="numpy")
    warm = solve(data, sampled=True, monkeypatch=monkeypatch, backend=_registry(backend_name))
    assert cold.start_sweeps == 0.0
    assert 0.0 < warm.start_sweeps < warm.n_iter
    assert warm.n_iter + warm.start_sweeps < cold.n_iter
    assert_same_solution(warm, cold, scores, 25.0)


def _registry(name: str) -> str:
    return "torch" if name.startswith("torch") else name


def test_prior_targets_sample_the_same_proportions(monkeypatch):
    scores = zipf_logits(seed=1)
    p = np.random.default_rng(2).dirichlet(np.full(N_LABELS, 20.0))
    cold = solve(scores, sampled=False, monkeypatch=monkeypatch, marginals=Prior(p))
    warm = solve(scores, sampled=True, monkeypatch=monkeypatch, marginals=Prior(p))
    assert warm.start_sweeps > 0.0
    assert_same_solution(warm, cold, scores, 25.0)


def test_stacked_heads_each_start_from_their_sample(monkeypatch):
    scores = np.stack([zipf_logits(seed=3), zipf_logits(seed=4)])
    cold = solve(scores, sampled=False, monkeypatch=monkeypatch)
    warm = solve(scores, sampled=True, monkeypatch=monkeypatch)
    assert warm.start_sweeps > 0.0
    assert_same_solution(warm, cold, scores, 25.0)


def test_balanced_scores_are_solved_cold(monkeypatch):
    """Scores with no label far above its share: one sweep of the sample finds no skew,
    and the solve starts cold (the same sweeps as with no sample at all)."""
    scores = np.random.default_rng(5).standard_normal((N_ROWS, N_LABELS)).astype(np.float32)
    result = solve(scores, sampled=True, monkeypatch=monkeypatch, tol=1e-3)
    cold = solve(scores, sampled=False, monkeypatch=monkeypatch, tol=1e-3)
    assert 0.0 < result.start_sweeps <= 1 / equipart.solver.SAMPLE_MIN_STEP
    assert result.n_iter == cold.n_iter
    np.testing.assert_array_equal(result.state.g, cold.state.g)


@pytest.mark.parametrize(
    "case", ["acceleration none", "warm start", "masked label", "bands", "small"]
)
def test_no_sample_where_it_does_not_apply(case, monkeypatch):
    scores = zipf_logits()
    kwargs: dict = {"tol": 1e-3}
    if case == "acceleration none":
        kwargs["acceleration"] = "none"
        kwargs["max_iter"] = 5000
    elif case == "warm start":
        kwargs["warm_start"] = np.zeros(N_LABELS)
    elif case == "masked label":
        scores[0, 0] = -np.inf
    elif case == "bands":
        kwargs["marginals"] = Bounds(100, 200)
    else:
        scores = scores[:5_000]
    result = solve(scores, sampled=True, monkeypatch=monkeypatch, **kwargs)
    assert result.start_sweeps == 0.0
    assert result.converged


def test_in_memory_sample_copies_evenly_spread_runs():
    scores = np.arange(1_000 * 3, dtype=np.float32).reshape(1_000, 3)
    backend = get_backend("numpy", scores)
    source = InMemory(backend, scores, 1, 1_000, 3, False)
    sample = source.sample(100, 10)
    rows = sample.scores[:, 0].astype(np.int64) // 3
    assert sample.n_rows == 100 and sample.scores.shape == (100, 3)
    assert rows[0] == 0 and rows[-1] == 999  # from the first row to the last
    runs = rows.reshape(10, 10)
    np.testing.assert_array_equal(np.diff(runs, axis=1), 1)  # each run contiguous
    assert np.all(np.diff(runs[:, 0]) > 10)  # runs spread apart
    assert sample.scores.flags.c_contiguous and not np.shares_memory(sample.scores, scores)


def test_sample_constraint_keeps_the_proportions():
    constraint = Prior(np.array([0.5, 0.3, 0.2])).bind(1_000, 3)
    small = constraint.for_rows(100)
    np.testing.assert_allclose(small.target, [50.0, 30.0, 20.0])
    assert small.n_rows == 100
    assert Uniform().bind(999, 3).for_rows(30).target.sum() == pytest.approx(30.0)

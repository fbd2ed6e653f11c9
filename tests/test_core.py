"""Core solver properties, on every installed backend (see conftest.backend_name)."""

from __future__ import annotations

import warnings

import numpy as np
import ot
import pytest
from conftest import backend_of, to_backend, to_numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax, softmax

import equipart
from equipart import ConvergenceWarning, Counts, Prior, Uniform, assign_labels

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def solve(scores: np.ndarray, backend_name: str, **kwargs):
    """assign_labels on the backend under test, results brought back to NumPy."""
    result = assign_labels(
        to_backend(scores, backend_name), backend=backend_of(backend_name), **kwargs
    )
    return (
        result,
        to_numpy(result.labels),
        (to_numpy(result.codes) if result.codes is not None else None),
    )


@st.composite
def problems(draw, max_rows: int = 300):
    n_rows = draw(st.integers(1, max_rows))
    n_labels = draw(st.integers(1, min(n_rows, 40)))
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    lam = draw(st.sampled_from([0.5, 5.0, 25.0]))
    spread = draw(st.sampled_from([0.01, 0.3, 3.0]))
    rng = np.random.default_rng(seed)
    scores = (spread * rng.standard_normal((n_rows, n_labels))).astype(dtype)
    return scores, lam


@SETTINGS
@given(problem=problems())
def test_converged_masses_meet_target_and_rows_sum_to_one(backend_name, problem):
    scores, lam = problem
    n_rows, n_labels = scores.shape
    result, labels, codes = solve(
        scores, backend_name, lam=lam, tol=1e-4, max_iter=50_000, return_codes=True
    )
    assert result.converged
    masses = codes.astype(np.float64).sum(axis=0)
    assert np.max(np.abs(masses / (n_rows / n_labels) - 1)) <= 1e-4 + 1e-4
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, rtol=1e-4)
    assert labels.shape == (n_rows,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < n_labels
    assert result.error <= 1e-4


# 60 identical sweeps for two forms of one problem: plain steps (accelerated ones depend on
# the forms' rounding, and agree at convergence only: tests/test_acceleration.py)
FIXED = {"tol": 0.0, "max_iter": 60, "acceleration": "none"}
no_convergence_warning = pytest.mark.filterwarnings("ignore::equipart.ConvergenceWarning")


@no_convergence_warning
@SETTINGS
@given(problem=problems(), shift_seed=st.integers(0, 2**32 - 1))
def test_labels_invariant_to_per_row_constant(backend_name, problem, shift_seed):
    scores, lam = problem
    scores = scores.astype(np.float64)
    shift = np.random.default_rng(shift_seed).uniform(-50, 50, size=(scores.shape[0], 1))
    _, plain, codes_plain = solve(scores, backend_name, lam=lam, return_codes=True, **FIXED)
    _, shifted, codes_shifted = solve(
        scores + shift, backend_name, lam=lam, return_codes=True, **FIXED
    )
    np.testing.assert_allclose(codes_plain, codes_shifted, atol=1e-6)
    top_two = np.sort(lam * scores, axis=1)[:, -2:] if scores.shape[1] > 1 else None
    clear = (
        np.ones(scores.shape[0], bool) if top_two is None else top_two[:, 1] - top_two[:, 0] > 1e-6
    )
    assert np.array_equal(plain[clear], shifted[clear]) or np.allclose(
        codes_plain[~np.equal(plain, shifted)].max(axis=1), 0, atol=1
    )


@no_convergence_warning
@SETTINGS
@given(problem=problems())
def test_logits_and_log_softmax_give_same_codes(backend_name, problem):
    scores, lam = problem
    scores = scores.astype(np.float64)
    _, _, from_logits = solve(scores, backend_name, lam=lam, return_codes=True, **FIXED)
    _, _, from_logprobs = solve(
        log_softmax(scores, axis=1),
        backend_name,
        lam=lam,
        input="logprobs",
        return_codes=True,
        **FIXED,
    )
    np.testing.assert_allclose(from_logits, from_logprobs, atol=1e-7)


@no_convergence_warning
@SETTINGS
@given(problem=problems())
def test_probs_agree_with_logprobs(backend_name, problem):
    scores, lam = problem
    scores = scores.astype(np.float64)
    probs = softmax(scores, axis=1)
    res_p, _labels_p, codes_p = solve(
        probs, backend_name, lam=lam, input="probs", return_codes=True, **FIXED
    )
    res_l, _labels_l, codes_l = solve(
        np.log(probs), backend_name, lam=lam, input="logprobs", return_codes=True, **FIXED
    )
    np.testing.assert_allclose(codes_p, codes_l, atol=1e-7)
    assert res_p.objective == pytest.approx(res_l.objective, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("pot_solver", ["sinkhorn", "sinkhorn_log"])
@pytest.mark.parametrize("shape,lam", [((60, 7), 2.0), ((200, 13), 10.0), ((31, 31), 1.0)])
def test_codes_match_pot(backend_name, pot_solver, shape, lam):
    rng = np.random.default_rng(shape[0])
    scores = rng.standard_normal(shape)
    n_rows, n_labels = shape
    a, b = np.ones(n_rows), np.full(n_labels, n_rows / n_labels)
    plan = getattr(ot.bregman, pot_solver)(
        a, b, -scores, 1.0 / lam, stopThr=1e-13, numItermax=100_000
    )
    _, _, codes = solve(
        scores, backend_name, lam=lam, tol=1e-11, max_iter=10_000, return_codes=True
    )
    np.testing.assert_allclose(codes, plan, atol=1e-6)


def test_counts_and_prior_marginals(backend_name):
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((500, 5))
    sizes = np.array([50, 100, 0, 150, 200])
    result, labels, codes = solve(
        scores, backend_name, lam=5.0, marginals=Counts(sizes), tol=1e-6, return_codes=True
    )
    np.testing.assert_allclose(codes.sum(axis=0), sizes, rtol=1e-5, atol=1e-9)
    assert not np.any(labels == 2)
    assert np.isneginf(result.state.g[2])
    prior = sizes / sizes.sum()
    _, _, prior_codes = solve(
        scores, backend_name, lam=5.0, marginals=Prior(prior), tol=1e-6, return_codes=True
    )
    np.testing.assert_allclose(prior_codes, codes, atol=1e-6)


def test_uniform_with_remainder(backend_name):
    scores = np.random.default_rng(0).standard_normal((103, 10)).astype(np.float32)
    result, _, codes = solve(scores, backend_name, tol=1e-5, return_codes=True)
    np.testing.assert_allclose(codes.astype(np.float64).sum(axis=0), 10.3, rtol=2e-5)
    assert result.converged


@pytest.mark.parametrize("lam", [1e-3, 1.0, 25.0, 1e3, 1e4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_lam_is_finite_and_balanced(backend_name, lam, dtype):
    rng = np.random.default_rng(1)
    # a confident, skewed network: every point prefers label 0 by a wide margin
    scores = rng.standard_normal((400, 8)).astype(dtype)
    scores[:, 0] += 4
    with warnings.catch_warnings():
        # near the hard LP (lam >= 1e3) Sinkhorn cannot reach tol in 1000 sweeps; the
        # contract there is a finite, balanced best state, not convergence
        warnings.simplefilter("ignore", ConvergenceWarning)
        result, labels, codes = solve(scores, backend_name, lam=lam, tol=1e-3, return_codes=True)
    assert np.all(np.isfinite(codes)) and np.all(np.isfinite(result.state.g))
    if lam <= 25:
        assert result.converged, result
    counts = np.bincount(labels, minlength=8)
    if lam >= 25:  # near-hard regime: argmax counts track the masses
        assert counts.max() <= 1.1 * 50 + 1, counts
    assert result.error < 0.05


def test_near_uniform_float32_large_k_does_not_collapse(backend_name):
    """The case that collapses SeLa's float32 code: near-uniform softmax, lam=25, K=3000."""
    rng = np.random.default_rng(0)
    n_rows, n_labels = 60_000, 3000
    logits = 0.05 * rng.standard_normal((n_rows, n_labels), dtype=np.float32)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    del logits
    result, labels, _ = solve(probs, backend_name, lam=25.0, input="probs", tol=1e-3)
    assert result.converged
    assert np.all(np.isfinite(result.state.g))
    counts = np.bincount(labels, minlength=n_labels)
    target = n_rows / n_labels
    # SeLa's float32 path puts every point in one label. Here every label's soft mass is
    # within tol of its target; argmax counts on a near-uniform softmax still carry the
    # sampling noise of rounding (about +-sqrt(20) around a target of 20), so the
    # hard-count bound is loose; rounding="balanced" gives exact counts.
    assert result.error <= 1e-3
    assert counts.max() <= 2 * target, counts.max()
    assert (counts > 0).all()


def test_warm_start_converges_immediately_and_helps_after_perturbation(backend_name):
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((2000, 30)).astype(np.float32) * 2
    cold, _, _ = solve(scores, backend_name, lam=25.0, tol=1e-4)
    again, _, _ = solve(scores, backend_name, lam=25.0, tol=1e-4, warm_start=cold.state)
    assert again.converged and len(again.history) <= 2
    perturbed = scores + 0.05 * rng.standard_normal(scores.shape).astype(np.float32)
    cold_p, _, _ = solve(perturbed, backend_name, lam=25.0, tol=1e-4)
    warm_p, _, _ = solve(perturbed, backend_name, lam=25.0, tol=1e-4, warm_start=cold.state)
    assert warm_p.n_iter < cold_p.n_iter
    # a plain dual vector works as a warm start too
    plain, _, _ = solve(scores, backend_name, lam=25.0, tol=1e-4, warm_start=cold.state.g)
    assert plain.n_iter <= 2


def test_multi_head_equals_separate_heads(backend_name):
    rng = np.random.default_rng(7)
    heads = rng.standard_normal((3, 300, 12)).astype(np.float32)
    stacked, labels, codes = solve(heads, backend_name, lam=10.0, tol=1e-5, return_codes=True)
    assert labels.shape == (3, 300) and codes.shape == (3, 300, 12)
    objective = 0.0
    for h in range(3):
        single, single_labels, single_codes = solve(
            heads[h], backend_name, lam=10.0, tol=1e-5, return_codes=True
        )
        np.testing.assert_array_equal(labels[h], single_labels)
        np.testing.assert_allclose(codes[h], single_codes, atol=1e-6)
        np.testing.assert_allclose(stacked.state.g[h], single.state.g, atol=1e-6)
        objective += single.objective / 3
    assert stacked.objective == pytest.approx(objective, rel=1e-6)
    assert stacked.state.g.shape == (3, 12)


def test_max_iter_one_warns_and_reports_not_converged(backend_name):
    scores = np.random.default_rng(0).standard_normal((500, 20)) * 3
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        result, _, _ = solve(scores, backend_name, lam=25.0, max_iter=1)
    assert not result.converged and result.n_iter == 1 and result.error > 1e-3


def test_large_lam_warning_says_what_to_do():
    """At lam 1e4 plain sweeps need of the order of lam iterations: the warning points to
    a smaller lam, the accelerated default and balanced rounding, which then gives exact
    counts."""
    scores = np.random.default_rng(0).standard_normal((2000, 10))
    with pytest.warns(ConvergenceWarning, match="large lam.*'auto'.*balanced") as caught:
        assign_labels(scores, lam=1e4, max_iter=200, backend="numpy", acceleration="none")
    assert len(caught) == 1
    with pytest.warns(ConvergenceWarning, match="max_iter=200"):
        balanced = assign_labels(
            scores, lam=1e4, max_iter=200, rounding="balanced", acceleration="none"
        )
    assert np.bincount(balanced.labels, minlength=10).tolist() == [200] * 10
    with pytest.warns(ConvergenceWarning) as caught:  # lam 25: the generic advice only
        assign_labels(scores, lam=25.0, max_iter=1, backend="numpy")
    assert "large lam" not in str(caught[0].message)


def test_unreachable_sizes_warn_that_the_error_stalled():
    """40 of 99 rows can take only label 0, whose size is 33: no assignment exists. The
    error stays at the gap (7/33) from early on, and the warning says so and names the
    likely cause instead of asking for more sweeps; a solve still converging does not."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=99)
    probs[:40] = [1.0, 0.0, 0.0]
    with pytest.warns(ConvergenceWarning, match="has not decreased since iteration") as caught:
        result = assign_labels(probs, input="probs", max_iter=400, backend="numpy")
    assert "out of reach" in str(caught[0].message)
    assert result.error == pytest.approx(7 / 33)
    with pytest.raises(ValueError, match="no labelling gives every label a count"):
        with pytest.warns(ConvergenceWarning, match="has not decreased"):
            assign_labels(probs, input="probs", max_iter=400, rounding="balanced")
    scores = rng.standard_normal((2000, 10))
    with pytest.warns(ConvergenceWarning) as caught:  # still decreasing at max_iter
        assign_labels(scores, lam=1e3, max_iter=300, backend="numpy", acceleration="none")
    assert "has not decreased" not in str(caught[0].message)


def test_callback_sees_every_check_and_can_stop(backend_name):
    scores = np.random.default_rng(0).standard_normal((500, 20)) * 3
    seen = []
    result, _, _ = solve(
        scores,
        backend_name,
        lam=25.0,
        check_every=3,
        callback=lambda it, err: seen.append((it, err)),
    )
    assert [it for it, _ in seen] == list(range(1, result.n_iter + 1, 3))[: len(seen)]
    assert [err for _, err in seen] == list(result.history)
    with pytest.warns(ConvergenceWarning, match="callback"):
        stopped, _, _ = solve(scores, backend_name, lam=25.0, callback=lambda it, err: it >= 2)
    assert stopped.n_iter == 2 and not stopped.converged


def test_objective_keeps_its_digits_under_a_large_row_offset(backend_name):
    """log P = (x - max) - log sum: with the max added to the log-sum first, an offset of
    2^36 (exact in float64, as is 25 times it) lost digits of the log-sum, and a constant
    row of -1e30 gave an objective of 0 instead of -log K. (A solve of such rows at lam
    25 is refused: lam times 1e30 is beyond what a float64 sweep resolves.)"""
    from equipart.backends import get_backend

    scores = np.random.default_rng(3).integers(-3, 4, size=(300, 10)).astype(np.float64)
    result, labels, _ = solve(scores, backend_name, lam=25.0)
    offset = solve(scores + 2.0**36, backend_name, lam=25.0)[0]
    assert (to_numpy(offset.labels) == labels).all()
    assert offset.objective == pytest.approx(result.objective, rel=1e-12)
    masked = to_backend(np.full((20, 10), -1e30), backend_name)
    total = get_backend(backend_of(backend_name), masked).logprob_sum(
        masked, "logits", np.arange(20) % 10
    )
    assert total / 20 == pytest.approx(-np.log(10), rel=1e-12)
    with pytest.raises(ValueError, match="subtract each row's maximum"):
        solve(np.full((20, 10), -1e30), backend_name, lam=25.0)


def test_logprob_sum_refuses_labels_out_of_range(backend_name):
    """Every backend (on CUDA a bad index would be a device-side assert; NumPy wrapped -1
    round to the last label)."""
    from equipart.backends import get_backend

    x = to_backend(np.zeros((4, 3), dtype=np.float32), backend_name)
    engine = get_backend(backend_of(backend_name), x)
    for bad in ([0, 1, 2, 3], [0, -1, 1, 2]):
        with pytest.raises(ValueError, match=r"labels: expected values in \[0, 3\)"):
            engine.logprob_sum(x, "logits", np.array(bad))


def test_objective_is_mean_logprob_of_labels(backend_name):
    scores = np.random.default_rng(2).standard_normal((300, 9))
    result, labels, _ = solve(scores, backend_name, lam=25.0)
    expected = log_softmax(scores, axis=1)[np.arange(300), labels].mean()
    assert result.objective == pytest.approx(expected, rel=1e-9)


def test_input_is_not_modified(backend_name):
    scores = np.random.default_rng(4).standard_normal((200, 6)).astype(np.float32)
    original = scores.copy()
    array = to_backend(scores, backend_name)
    assign_labels(array, backend=backend_of(backend_name), return_codes=True)
    np.testing.assert_array_equal(to_numpy(array), original)


def test_k_equals_one_and_n_equals_one(backend_name):
    result, labels, codes = solve(np.zeros((5, 1)), backend_name, return_codes=True)
    assert labels.tolist() == [0] * 5 and result.converged
    np.testing.assert_allclose(codes, 1.0)
    result, labels, _ = solve(np.array([[0.1, 2.0, -1.0]]), backend_name, lam=1.0)
    assert result.converged  # one point, three labels of mass 1/3 each: always feasible


def test_state_is_picklable_and_roundtrips(tmp_path):
    import pickle

    scores = np.random.default_rng(0).standard_normal((100, 4))
    result = assign_labels(scores, marginals=Counts([25, 25, 0, 50]), backend="numpy")
    restored = pickle.loads(pickle.dumps(result.state))
    np.testing.assert_array_equal(restored.g, result.state.g)
    from_dict = equipart.SolverState.from_dict(result.state.to_dict())
    np.testing.assert_array_equal(from_dict.g, result.state.g)
    assert from_dict.lam == result.state.lam and from_dict.shape == result.state.shape
    assert restored == result.state == from_dict and hash(restored) == hash(result.state)
    pickle.loads(pickle.dumps(result))


def test_state_stays_immutable_after_pickling_and_copying():
    """A state's g was writeable after pickle or deepcopy (a checkpoint round trip), and
    setflags(write=True) reopened a fresh one: a corrupted state then warm-started a solve
    that stopped after one sweep."""
    import copy
    import pickle

    state = assign_labels(np.random.default_rng(0).standard_normal((100, 4))).state
    for twin in (pickle.loads(pickle.dumps(state)), copy.deepcopy(state), copy.copy(state)):
        assert twin == state and not twin.g.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            twin.g[0] = 1e29
    with pytest.raises(ValueError):
        state.g.setflags(write=True)
    assert state != equipart.SolverState(g=state.g + 1.0, lam=state.lam, shape=state.shape)


def test_importing_equipart_imports_no_optional_library():
    import subprocess
    import sys

    code = (
        "import sys, equipart, numpy as np; equipart.assign_labels(np.eye(4), backend='numpy');"
        "print(sorted(m for m in ('torch', 'cupy', 'numba') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_convergence_warning_when_converged():
    scores = np.random.default_rng(0).standard_normal((100, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert assign_labels(scores, backend="numpy").converged


def test_uniform_is_default():
    scores = np.random.default_rng(0).standard_normal((100, 4))
    a = assign_labels(scores, backend="numpy")
    b = assign_labels(scores, backend="numpy", marginals=Uniform())
    np.testing.assert_array_equal(a.labels, b.labels)


# ---- rounding: no silent collapse on tied rows ---------------------------------------


def _tied(family: str, n_rows: int, n_labels: int) -> np.ndarray:
    """Scores an untrained or coarse network gives: every row tied ("constant"), ties
    within rows ("integer", values 0..9), or barely separated ("near-uniform")."""
    rng = np.random.default_rng(11)
    if family == "constant":
        return np.zeros((n_rows, n_labels), np.float32)
    if family == "integer":
        return rng.integers(0, 10, (n_rows, n_labels)).astype(np.float32)
    return (0.01 * rng.standard_normal((n_rows, n_labels))).astype(np.float32)


@pytest.mark.parametrize("family, n_rows, n_labels", [("constant", 120, 6), ("integer", 1000, 10)])
def test_tied_scores_get_their_sizes_by_default(backend_name, family, n_rows, n_labels):
    """argmax put every tied row on its first tied label (120 x 6 zeros: all 120 on label
    0, reported converged; integers 0..9: counts of 60 to 143 for a size of 100); the
    default rounding gives every label its size, through the balanced rounding, and
    argmax asked for explicitly warns. (Small shapes: balanced rounding is slow on exact
    ties here.)"""
    scores = _tied(family, n_rows, n_labels)
    size = n_rows // n_labels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result, labels, _ = solve(scores, backend_name, lam=25.0)
    assert result.rounding == "balanced" and result.converged
    np.testing.assert_array_equal(np.bincount(labels, minlength=n_labels), [size] * n_labels)
    with pytest.warns(equipart.RoundingWarning, match=rf"has \d+ points, its size is {size}"):
        plain, argmax, _ = solve(scores, backend_name, lam=25.0, rounding="argmax")
    assert plain.rounding == "argmax"
    assert np.bincount(argmax, minlength=n_labels).max() > 1.4 * size
    assert result.objective == pytest.approx(plain.objective, abs=1e-6)  # the same ties


def test_near_uniform_and_normal_scores_keep_argmax(backend_name):
    """Rows decided by their scores (or as near-uniform as early training gives) round
    to counts within the noise of a random draw from Q: the default is then SeLa's
    argmax itself, label for label, with no warning."""
    normal = np.random.default_rng(12).standard_normal((2000, 20)).astype(np.float32)
    for family_scores in (_tied("near-uniform", 2000, 20), normal):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            auto, labels, _ = solve(family_scores, backend_name, lam=25.0)
            _plain, argmax, _ = solve(family_scores, backend_name, lam=25.0, rounding="argmax")
        assert auto.rounding == "argmax"
        np.testing.assert_array_equal(labels, argmax)
        counts = np.bincount(labels, minlength=20)
        slack = equipart.rounding.count_slack(np.full(20, 100.0), auto.error, 20)
        assert np.all(np.abs(counts - 100) <= slack)


def test_count_slack_is_the_noise_of_a_random_rounding():
    """Labels drawn from a converged Q (randomised rounding) stay inside the slack in
    all but about FALSE_ALARM of draws; a collapse is far outside it."""
    rng = np.random.default_rng(0)
    n_rows, n_labels = 2000, 20
    q = rng.dirichlet(np.ones(n_labels) * 0.5, size=n_rows)
    mass = q.sum(axis=0)
    slack = equipart.rounding.count_slack(mass, 0.0, n_labels)
    outside = 0
    for _ in range(200):
        draws = (q.cumsum(axis=1) > rng.random((n_rows, 1))).argmax(axis=1)
        outside += np.any(np.abs(np.bincount(draws, minlength=n_labels) - mass) > slack)
    assert outside <= 2
    assert 2000 - 100 > equipart.rounding.count_slack(np.array([100.0]), 0.0, n_labels)[0]


def test_multi_head_rounds_each_head_on_its_own(backend_name):
    """A tied head is balanced, a decided one keeps argmax: each as if solved alone."""
    decided = np.random.default_rng(13).standard_normal((120, 6)).astype(np.float32) * 3
    heads = np.stack([_tied("constant", 120, 6), decided])
    stacked, labels, _ = solve(heads, backend_name, lam=25.0)
    assert stacked.rounding == "balanced,argmax"
    for h in range(2):
        _single, single_labels, _ = solve(heads[h], backend_name, lam=25.0)
        np.testing.assert_array_equal(labels[h], single_labels)
    np.testing.assert_array_equal(np.bincount(labels[0], minlength=6), [20] * 6)


def test_relaxed_marginals_warn_on_a_collapse():
    """Relaxed has no hard sizes to balance: argmax counts far from Q's own column masses
    are warned about (the soft solution of constant scores is uniform)."""
    scores = np.zeros((300, 5), np.float32)
    relaxed = equipart.Relaxed(Uniform(), 1.0)
    with pytest.warns(equipart.RoundingWarning, match="mass in Q is 60"):
        result = assign_labels(scores, marginals=relaxed, backend="numpy")
    assert result.rounding == "argmax"


def test_a_sharp_problem_names_its_sharpness_when_it_stalls():
    """Logits scaled by 100 at lam 25 (float64, which resolves them): 1,000 sweeps, then
    the warning blamed masks and sizes out of reach; it now names lam times the scores'
    spread, the real cause (over-relaxed steps; the accelerated default solves it in
    tens of sweeps)."""
    scores = np.random.default_rng(0).standard_normal((2000, 20)) * 100
    with pytest.warns(ConvergenceWarning, match="has not decreased since") as caught:
        assign_labels(scores, lam=25.0, acceleration="overrelax")
    message = str(caught[0].message)
    assert "lam times the spread of the scores is 1.1" in message and "nats" in message
    assert "divide the scores by their scale" in message
    assert not message.split("since iteration")[1].startswith(" 1: the sizes may")
    assert assign_labels(scores, lam=25.0, max_iter=200).converged


# ---- sinkhorn_codes: SwAV's and DINOv2's loop -----------------------------------------


def swav_sinkhorn(scores: np.ndarray, eps: float, n_iter: int) -> np.ndarray:
    """The loop of SwAV's ``distributed_sinkhorn`` (and DINOv2's teacher Sinkhorn, eps
    being the teacher temperature), in one process and float64: Q = exp(S / eps)^T
    (K x B), Q /= sum(Q); n_iter times: rows (prototypes) to 1/K, then columns (samples)
    to 1/B; Q *= B; return Q^T."""
    q = np.exp(scores.astype(np.float64) / eps).T
    q /= q.sum()
    n_prototypes, batch = q.shape
    for _ in range(n_iter):
        q /= q.sum(axis=1, keepdims=True)
        q /= n_prototypes
        q /= q.sum(axis=0, keepdims=True)
        q /= batch
    q *= batch
    return q.T


def swav_sinkhorn_shifted(scores: np.ndarray, eps: float, n_iter: int) -> np.ndarray:
    """The same loop with exp(S / eps - max(S / eps)): exactly equivalent (every step is
    a normalisation, which a common factor does not change), and finite wherever S / eps
    does not span more than float64's exponent range."""
    z = scores.astype(np.float64) / eps
    return swav_sinkhorn(z - z[np.isfinite(z)].max(), 1.0, n_iter)


def _prototype_scores(batch: int, n_prototypes: int, seed: int = 0) -> np.ndarray:
    """Cosine similarities of unit embeddings and prototypes, as SwAV's head gives."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((batch, 32))
    proto = rng.standard_normal((n_prototypes, 32))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    proto /= np.linalg.norm(proto, axis=1, keepdims=True)
    return (emb @ proto.T).astype(np.float32)


@pytest.mark.parametrize("family", ["cosine", "peaked"])
@pytest.mark.parametrize("eps", [0.05, 0.04, 0.07])  # SwAV; DINOv2's teacher temperatures
@pytest.mark.parametrize("n_iter", [1, 3, 10])
def test_sinkhorn_codes_reproduce_the_published_loop(backend_name, family, eps, n_iter):
    """To float32 rounding. The codes used to start with a row normalisation where SwAV
    starts with a column step on the raw kernel: 5e-5 to 1e-2 apart on cosine scores at
    eps 0.05, and up to 0.9 on peaked logits."""
    if family == "cosine":
        scores = _prototype_scores(96, 40)
    else:
        scores = (np.random.default_rng(1).standard_normal((96, 40)) * 0.3).astype(np.float32)
        scores[np.arange(96), np.arange(96) % 40] += 0.5
    codes = to_numpy(
        equipart.sinkhorn_codes(
            to_backend(scores, backend_name), eps, n_iter, backend=backend_of(backend_name)
        )
    )
    want = swav_sinkhorn(scores, eps, n_iter)
    assert codes.dtype == np.float32 and codes.shape == scores.shape
    np.testing.assert_allclose(codes, want, rtol=2e-5, atol=2e-6)


def test_sinkhorn_codes_stay_finite_where_the_published_loop_overflows(backend_name):
    """|S| / eps beyond exp's range (logits of 40 at eps 0.05: exp(800) is inf in float64
    too): the published loop returns NaN; the codes are finite and equal to the same loop
    run with the maximum subtracted."""
    scores = (np.random.default_rng(2).standard_normal((64, 24)) * 10 + 30).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(swav_sinkhorn(scores, 0.05, 3)).all()
    codes = to_numpy(
        equipart.sinkhorn_codes(
            to_backend(scores, backend_name), 0.05, 3, backend=backend_of(backend_name)
        )
    )
    assert np.isfinite(codes).all()
    # float32 rounding of S / eps near 1,200 (its unit in the last place: 1.2e-4 nats)
    np.testing.assert_allclose(codes, swav_sinkhorn_shifted(scores, 0.05, 3), atol=2e-5)


def test_sinkhorn_codes_of_stacked_heads_and_masked_prototypes(backend_name):
    """(H, B, K) codes are each head's; -inf (an impossible prototype for a sample) gets
    exactly zero, as in the published loop (exp(-inf) = 0), and equals a -1e9 mask."""
    heads = np.stack([_prototype_scores(50, 12, seed) for seed in (3, 4)])
    masked = heads.copy()
    masked[:, ::4, 5] = -np.inf
    backend = backend_of(backend_name)
    codes = to_numpy(equipart.sinkhorn_codes(to_backend(masked, backend_name), backend=backend))
    for h in range(2):
        np.testing.assert_allclose(codes[h], swav_sinkhorn(masked[h], 0.05, 3), atol=2e-6)
    assert (codes[:, ::4, 5] == 0.0).all()
    finite = to_numpy(
        equipart.sinkhorn_codes(
            to_backend(np.where(np.isinf(masked), -1e9, masked).astype(np.float32), backend_name),
            backend=backend,
        )
    )
    np.testing.assert_array_equal(codes, finite)

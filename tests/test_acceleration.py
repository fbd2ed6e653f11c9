"""``acceleration=``: "auto" (the default: quasi-Newton on the semi-dual, Anderson for
bands), Anderson, over-relaxation, plain Sinkhorn.

Every mode must reach the same solution (it is unique up to a common shift of g), to the
accuracy their common tolerance allows; the accelerated modes must do so in fewer sweeps
where plain Sinkhorn is slow and never in more on the adversarial cases below; converged
solves on every backend, streamed or in memory, must agree within the dual tolerance of
docs/design.md (2 tol / (1 - r), r the linear rate of plain steps) and give the same
labels; a bad value is refused by name.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import backend_of, to_backend, to_numpy
from dual_tolerance import assert_same_solution, dual_tolerance, plain_rate

import equipart.sources
from equipart import (
    Bounds,
    ConvergenceWarning,
    Counts,
    Relaxed,
    RowBlocks,
    Uniform,
    assign_labels,
)

MODES = ("auto", "anderson", "overrelax", "none")


def logits(n_rows: int, n_labels: int, seed: int, spread: float = 1.0) -> np.ndarray:
    return (spread * np.random.default_rng(seed).standard_normal((n_rows, n_labels))).astype(
        np.float64
    )


def biased_logits(n_rows: int, n_labels: int, seed: int) -> np.ndarray:
    """Logits with strong label biases (some labels far more likely than others): where a
    band or a KL-relaxed target binds for most labels."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_rows, n_labels)) * 0.3 + rng.normal(size=n_labels) * 2


def planted_logits(n_rows: int, n_labels: int, seed: int, margin: float = 6.0) -> np.ndarray:
    """A late-training network: each point's planted label ahead by ``margin``, plus a
    bias per label (peaked and label-biased scores, where plain Sinkhorn is slowest)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_rows, n_labels)) + rng.normal(size=n_labels)
    scores[np.arange(n_rows), rng.integers(n_labels, size=n_rows)] += margin
    return scores


def solve(scores, backend_name, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # every solve here must converge
        return assign_labels(
            to_backend(scores, backend_name), backend=backend_of(backend_name), **kwargs
        )


@pytest.mark.parametrize("lam", [5.0, 25.0, 100.0])
def test_every_mode_reaches_the_same_solution(backend_name, lam):
    scores = logits(1500, 30, seed=int(lam))
    results = {
        mode: solve(scores, backend_name, lam=lam, tol=1e-8, max_iter=20_000, acceleration=mode)
        for mode in MODES
    }
    reference = results["none"]
    for mode, result in results.items():
        assert result.converged and result.error <= 1e-8, mode
        # duals are defined up to a common shift, removed by normalisation (max g = 0)
        np.testing.assert_allclose(result.state.g, reference.state.g, atol=1e-6, err_msg=mode)
        assert np.mean(to_numpy(result.labels) == to_numpy(reference.labels)) > 0.999, mode


def test_the_default_is_auto():
    scores = logits(2000, 20, seed=3)
    default = assign_labels(scores, 25.0, backend="numpy")
    auto = assign_labels(scores, 25.0, backend="numpy", acceleration="auto")
    assert default.n_iter == auto.n_iter
    np.testing.assert_array_equal(default.state.g, auto.state.g)


def test_accelerated_modes_need_fewer_sweeps_where_sinkhorn_is_slow(backend_name):
    scores = logits(4000, 50, seed=3)
    sweeps = {
        mode: solve(
            scores, backend_name, lam=100.0, tol=1e-4, max_iter=20_000, acceleration=mode
        ).n_iter
        for mode in MODES
    }
    assert sweeps["auto"] * 3 < sweeps["overrelax"] < sweeps["none"], sweeps
    assert sweeps["anderson"] * 3 < sweeps["overrelax"], sweeps


def test_quasi_newton_on_peaked_label_biased_logits():
    """Late-training scores: a planted label 6 ahead at lam 25 (150 nats) and label biases.
    Plain steps move g by at most log(b/m) per sweep where the solution needs moves of
    tens of nats: thousands of sweeps; the quasi-Newton steps learn the scale."""
    scores = planted_logits(4000, 40, seed=5)
    plain = solve(scores, "numba", lam=25.0, max_iter=20_000, acceleration="none")
    auto = solve(scores, "numba", lam=25.0)
    assert plain.n_iter > 500 and auto.n_iter * 10 < plain.n_iter, (auto.n_iter, plain.n_iter)


@pytest.mark.parametrize("mode", ["auto", "anderson"])
def test_zero_target_labels_and_large_lam(backend_name, mode):
    scores = logits(2000, 20, seed=4, spread=2.0)
    sizes = np.full(20, 2000 // 18)
    sizes[[3, 11]] = 0
    sizes[0] += 2000 - sizes.sum()
    result = solve(
        scores,
        backend_name,
        lam=1000.0,
        marginals=Counts(sizes),
        rounding="balanced",
        acceleration=mode,
    )
    assert np.array_equal(np.bincount(to_numpy(result.labels), minlength=20), sizes)
    assert np.all(result.state.g[[3, 11]] == -np.inf)


@pytest.mark.parametrize("mode", ["auto", "anderson"])
@pytest.mark.parametrize("seed", range(4))
def test_nearly_hard_assignments_need_no_more_sweeps_than_plain(seed, mode):
    """Few points per label at lam 1000 (nearly a hard assignment): extrapolated steps can
    land where the error stalls far above tol (with only a restart, two of these four
    seeds stopped Anderson at 3000 sweeps with errors of 0.02); every seed must converge
    within the sweeps plain Sinkhorn needs, to its labels."""
    scores = logits(200, 5, seed=seed)
    plain = solve(scores, "numpy", lam=1000.0, max_iter=3000, acceleration="none")
    fast = solve(scores, "numpy", lam=1000.0, max_iter=3000, acceleration=mode)
    assert fast.n_iter <= plain.n_iter
    np.testing.assert_array_equal(fast.labels, plain.labels)


@pytest.mark.parametrize(
    "marginals", [Bounds.relative(0.9, 1.1), Bounds.relative(0.99, 1.01), Relaxed(Uniform(), 10.0)]
)
def test_bands_and_relaxed_targets_converge_like_the_equality(marginals):
    """Q does not change with a common shift of g; the band's and the relaxed target's
    column steps moved g along it only slowly (2,200 sweeps for a 0.9-1.1 band, more
    than 5,000 for 0.99-1.01 and 1,399 for tau = 10, where the equality took 33 on
    these scores). With the dual's exact minimum along the shift taken at each step,
    each mode converges in under 1,000 sweeps at tol 1e-6, to the solution of plain
    steps; the accelerated modes take fewer sweeps than plain steps."""
    scores = biased_logits(3000, 20, seed=17)
    runs = {
        mode: solve(
            scores, "numpy", lam=25.0, marginals=marginals, acceleration=mode, tol=1e-6,
            return_codes=True,
        )
        for mode in MODES
    }
    assert all(run.converged for run in runs.values())
    assert runs["none"].n_iter < 1000
    for mode in ("auto", "anderson", "overrelax"):
        assert runs[mode].n_iter < runs["none"].n_iter, mode
    masses = {mode: run.codes.sum(axis=0) for mode, run in runs.items()}
    for mode in ("auto", "anderson", "overrelax"):
        np.testing.assert_allclose(masses[mode], masses["none"], rtol=1e-4)
    if isinstance(marginals, Bounds):  # the soft masses within the band (tol 1e-6)
        band = marginals.bind(3000, 20, 25.0)
        assert np.all(masses["none"] >= band.lo * (1 - 1e-4))
        assert np.all(masses["none"] <= band.hi * (1 + 1e-4))


def _adversarial_cases() -> list:
    gauss = logits(1000, 20, seed=7)
    biased = biased_logits(1000, 20, seed=8)
    masked = logits(1000, 20, seed=9)
    masked[np.random.default_rng(9).random(masked.shape) < 0.3] = -1e9  # masked labels
    masked[np.arange(1000), np.arange(1000) % 20] = 0.5  # (every label open somewhere)
    impossible = masked.copy()
    impossible[impossible == -1e9] = -np.inf  # -inf masks: labels impossible for a row
    far = np.random.default_rng(10).normal(size=20) * 200.0
    return [
        pytest.param(gauss, 1000.0, Uniform(), None, id="lam-1000"),
        pytest.param(planted_logits(1000, 20, seed=11), 25.0, Uniform(), None, id="peaked"),
        pytest.param(biased, 25.0, Bounds.relative(0.99, 1.01), None, id="tight-band"),
        pytest.param(biased, 25.0, Bounds.relative(0.5, 2.0), far, id="wide-band-far-start"),
        pytest.param(biased, 25.0, Relaxed(Uniform(), 1e-3), None, id="tau-near-0"),
        pytest.param(biased, 25.0, Relaxed(Uniform(), 1e6), None, id="tau-near-inf"),
        pytest.param(biased, 25.0, Relaxed(Uniform(), 0.1), far, id="stiff-tau-far-start"),
        pytest.param(gauss, 25.0, Uniform(), far, id="far-warm-start"),
        pytest.param(gauss, 25.0, Bounds.relative(0.9, 1.1), far, id="band-far-start"),
        pytest.param(masked, 25.0, Uniform(), None, id="masked-labels"),
        pytest.param(impossible, 25.0, Uniform(), None, id="inf-masked-labels"),
        pytest.param(impossible, 100.0, Bounds.relative(0.8, 1.2), far, id="inf-masked-band"),
        pytest.param(impossible, 25.0, Relaxed(Uniform(), 1.0), far, id="inf-masked-relaxed"),
        pytest.param(np.stack([gauss, biased]), 100.0, Uniform(), None, id="two-heads"),
    ]


@pytest.mark.parametrize(("scores", "lam", "marginals", "warm"), _adversarial_cases())
def test_auto_never_takes_more_sweeps_than_plain(scores, lam, marginals, warm):
    """Plain steps may stop at max_iter (at lam 1,000 they take over 60,000 sweeps to tol
    1e-5); the default must converge, in no more sweeps."""
    kwargs = dict(lam=lam, marginals=marginals, warm_start=warm, tol=1e-5, max_iter=20_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = assign_labels(scores, backend="numba", acceleration="none", **kwargs)
    auto = solve(scores, "numba", **kwargs)
    assert auto.converged and auto.n_iter <= plain.n_iter, (auto.n_iter, plain.n_iter)


def test_infeasible_sizes_still_reach_their_gap():
    """40 of 99 rows can take only label 0, of size 33: the semi-dual has no minimum and
    quasi-Newton steps would run along a ray; the default falls back to plain steps,
    which reach the gap 7/33 (and the warning that the error stalled)."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=99)
    probs[:40] = [1.0, 0.0, 0.0]
    with pytest.warns(ConvergenceWarning, match="has not decreased"):
        result = assign_labels(probs, input="probs", max_iter=400, backend="numpy")
    assert result.error == pytest.approx(7 / 33)


# --------------------------------------------------------------- converged solutions agree
AGREEMENT_CASES = [
    pytest.param(lambda: logits(2000, 20, seed=21), Uniform(), id="uniform"),
    pytest.param(lambda: planted_logits(2000, 20, seed=22), Uniform(), id="peaked"),
    pytest.param(
        lambda: logits(2000, 20, seed=23),
        Counts(np.r_[np.full(10, 150), np.full(10, 50)]),
        id="counts",
    ),
    pytest.param(lambda: biased_logits(2000, 20, seed=24), Bounds.relative(0.9, 1.1), id="band"),
    pytest.param(lambda: biased_logits(2000, 20, seed=25), Relaxed(Uniform(), 2.0), id="relaxed"),
    pytest.param(
        lambda: np.stack([logits(2000, 20, seed=26), biased_logits(2000, 20, seed=27)]),
        Uniform(),
        id="two-heads",
    ),
]
TOL = 1e-6
LAM = 25.0


_REFERENCES: dict = {}


def _reference(scores: np.ndarray, marginals) -> tuple:
    """The plain solve to tol 1e-11 (the solution), and the plain rate on the problem."""
    key = (scores.tobytes(), marginals)
    if key not in _REFERENCES:
        _REFERENCES[key] = _solve_reference(scores, marginals)
    return _REFERENCES[key]


def _solve_reference(scores: np.ndarray, marginals) -> tuple:
    reference = assign_labels(
        scores, LAM, marginals=marginals, tol=1e-11, max_iter=100_000, backend="numpy",
        acceleration="none",
    )  # fmt: skip
    histories = [reference.history]
    if scores.ndim == 3:  # the history is the worst head's: take each head's own rate
        histories = [
            assign_labels(
                head, LAM, marginals=marginals, tol=1e-11, max_iter=100_000,
                backend="numpy", acceleration="none",
            ).history
            for head in scores
        ]  # fmt: skip
    return reference, max(plain_rate(history) for history in histories)


@pytest.mark.parametrize(("make", "marginals"), AGREEMENT_CASES)
def test_converged_solves_agree_across_backends(backend_name, make, marginals):
    """numpy, numba and torch (Numba kernels on CPU tensors, the blockwise path) solves
    at tol 1e-6, float64 scores, each compared with plain numpy's at the same tol."""
    scores = make()
    reference, rate = _reference(scores, marginals)
    bound = dual_tolerance(TOL, rate)
    plain = solve(
        scores, "numpy", lam=LAM, marginals=marginals, tol=TOL, max_iter=100_000,
        acceleration="none",
    )  # fmt: skip
    result = solve(scores, backend_name, lam=LAM, marginals=marginals, tol=TOL)
    assert_same_solution(result, plain, scores, LAM, bound)
    assert_same_solution(result, reference, scores, LAM, bound)


@pytest.mark.parametrize(("make", "marginals"), AGREEMENT_CASES)
def test_converged_solves_agree_streamed_and_in_memory(tmp_path, monkeypatch, make, marginals):
    """A .npy path streamed in blocks of about 1 KiB and a factory of 7-row blocks sum
    the column statistics in other orders than the in-memory solve."""
    monkeypatch.setattr(equipart.sources, "BLOCK_BYTES", 1024)
    scores = make()
    reference, rate = _reference(scores, marginals)
    bound = dual_tolerance(TOL, rate)
    in_memory = solve(scores, "numpy", lam=LAM, marginals=marginals, tol=TOL)
    path = tmp_path / "scores.npy"
    np.save(path, scores)
    streamed = [solve(path, "numpy", lam=LAM, marginals=marginals, tol=TOL)]
    if scores.ndim == 2:
        blocks = RowBlocks(lambda: (scores[i : i + 7] for i in range(0, len(scores), 7)))
        streamed.append(solve(blocks, "numpy", lam=LAM, marginals=marginals, tol=TOL))
    for result in [*streamed, in_memory]:
        assert_same_solution(result, reference, scores, LAM, bound)
    for result in streamed:
        assert_same_solution(result, in_memory, scores, LAM, bound)


def test_float32_scores_agree_across_backends(backend_name):
    """float32 sweeps round the column sums to about 1e-7 relative: at tol 1e-4 the
    rounding is far below tol, and the bound holds as in float64."""
    scores = logits(2000, 20, seed=28).astype(np.float32)
    _, rate = _reference(scores.astype(np.float64), Uniform())
    bound = dual_tolerance(1e-4, rate)
    plain = solve(
        scores.astype(np.float64), "numpy", lam=LAM, tol=1e-4, max_iter=100_000,
        acceleration="none",
    )  # fmt: skip
    result = solve(scores, backend_name, lam=LAM, tol=1e-4)
    assert_same_solution(result, plain, scores.astype(np.float64), LAM, bound)


def test_bad_acceleration_is_refused_by_name():
    with pytest.raises(ValueError, match=r"acceleration: expected one of .*'auto'.*'anderson'"):
        assign_labels(logits(10, 3, seed=0), acceleration="fast")

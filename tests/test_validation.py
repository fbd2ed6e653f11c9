"""Every bad input is refused before any work, with a message naming the argument."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from conftest import backend_of, to_backend, to_numpy

from equipart import (
    ConvergenceWarning,
    Counts,
    Prior,
    Relaxed,
    RoundingWarning,
    RowBlocks,
    SolverState,
    Uniform,
    assign_labels,
    sinkhorn_codes,
)
from equipart.validation import RESOLUTION

GOOD = np.random.default_rng(0).standard_normal((20, 4))


@pytest.mark.parametrize(
    "scores,error,name",
    [
        (np.zeros(5), ValueError, "scores"),
        (np.zeros((2, 3, 4, 5)), ValueError, "scores"),
        (np.zeros((0, 4)), ValueError, "scores"),
        (np.zeros((4, 0)), ValueError, "scores"),
        (np.zeros((4, 3), dtype=complex), TypeError, "scores"),
        (np.array([["a", "b"]]), TypeError, "scores"),
        (np.zeros((4, 3), dtype=bool), TypeError, "scores"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), ValueError, "scores"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), ValueError, "scores"),
        ([[0.0, 1.0]], TypeError, "scores"),
    ],
)
def test_bad_scores(scores, error, name):
    with pytest.raises(error, match=name):
        assign_labels(scores)


@pytest.mark.parametrize(
    "kwargs,error,name",
    [
        ({"lam": 0.0}, ValueError, "lam"),
        ({"lam": -1.0}, ValueError, "lam"),
        ({"lam": float("nan")}, ValueError, "lam"),
        ({"lam": "25"}, TypeError, "lam"),
        ({"tol": -1e-3}, ValueError, "tol"),
        ({"max_iter": 0}, ValueError, "max_iter"),
        ({"max_iter": 2.5}, TypeError, "max_iter"),
        ({"check_every": 0}, ValueError, "check_every"),
        ({"input": "logit"}, ValueError, "input"),
        ({"input": np.array("logits")}, TypeError, "input"),
        ({"rounding": "round"}, ValueError, "rounding"),
        ({"rounding": np.array("argmax")}, TypeError, "rounding"),
        ({"acceleration": None}, TypeError, "acceleration"),
        ({"return_codes": "yes"}, TypeError, "return_codes"),
        ({"backend": "fortran"}, ValueError, "backend"),
        ({"backend": 3}, TypeError, "backend"),
        ({"callback": 3}, TypeError, "callback"),
        ({"marginals": np.array([5, 5, 5, 5])}, TypeError, "marginals"),
        ({"marginals": Counts([5, 5, 5, 4])}, ValueError, "marginals"),
        ({"marginals": Counts([5, 5, 10])}, ValueError, "marginals"),
        ({"marginals": Prior([0.5, 0.5])}, ValueError, "marginals"),
        ({"warm_start": np.zeros(3)}, ValueError, "warm_start"),
        ({"warm_start": np.array([0.0, np.nan, 0.0, 0.0])}, ValueError, "warm_start"),
        ({"warm_start": "cold"}, TypeError, "warm_start"),
        ({"warm_start": np.zeros((2, 4))}, ValueError, "warm_start"),
        ({"warm_start": np.array([1e300, 0.0, 0.0, 0.0])}, ValueError, "warm_start"),
        ({"marginals": Relaxed(Uniform(), 1.0), "rounding": "balanced"}, ValueError, "rounding"),
    ],
)
def test_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        assign_labels(GOOD, **kwargs)


@pytest.mark.parametrize(
    "kwargs,error,name",
    [
        ({"tol": -1.0}, ValueError, "tol"),
        ({"max_iter": 0}, ValueError, "max_iter"),
        ({"check_every": 0}, ValueError, "check_every"),
        ({"acceleration": "fast"}, ValueError, "acceleration"),
        ({"callback": 3}, TypeError, "callback"),
        ({"warm_start": "cold"}, TypeError, "warm_start"),
        ({"warm_start": np.zeros(3)}, ValueError, "warm_start"),
        ({"return_codes": True}, ValueError, "return_codes"),
        ({"marginals": Relaxed(Uniform(), 1.0)}, ValueError, "marginals"),
        ({"input": "logit"}, ValueError, "input"),
    ],
)
def test_exact_rounding_checks_every_argument(kwargs, error, name):
    """rounding="exact" skips the Sinkhorn loop, not the checks of its arguments."""
    with pytest.raises(error, match=name):
        assign_labels(GOOD, rounding="exact", **kwargs)


def test_exact_rounding_reads_paths_and_refuses_streams(tmp_path):
    path = tmp_path / "scores.npy"
    np.save(path, GOOD)
    from_path = assign_labels(str(path), rounding="exact")
    np.testing.assert_array_equal(from_path.labels, assign_labels(GOOD, rounding="exact").labels)
    with pytest.raises(ValueError, match=r"scores.*rounding='balanced'"):
        assign_labels(RowBlocks(lambda: iter([GOOD])), rounding="exact")


@pytest.mark.parametrize(
    "make,error",
    [
        (lambda: Counts([3, -1, 2]), ValueError),
        (lambda: Counts([1.5, 2.5]), TypeError),
        (lambda: Counts([[1, 2]]), ValueError),
        (lambda: Counts([0, 0]), ValueError),
        (lambda: Prior([0.5, 0.6]), ValueError),
        (lambda: Prior([1.2, -0.2]), ValueError),
        (lambda: Prior(["a"]), TypeError),
    ],
)
def test_bad_marginal_specs(make, error):
    with pytest.raises(error, match="marginals"):
        make()


def test_warm_start_of_another_k_or_lam():
    state = assign_labels(GOOD, lam=10.0).state
    with pytest.raises(ValueError, match=r"warm_start.*lam"):
        assign_labels(GOOD, lam=25.0, warm_start=state)
    other = SolverState(g=np.zeros(5), lam=10.0, shape=(20, 5))
    with pytest.raises(ValueError, match=r"warm_start.*K=5"):
        assign_labels(GOOD, lam=10.0, warm_start=other)


def test_probabilities_are_checked():
    probs = np.full((10, 4), 0.25)
    assign_labels(probs, input="probs")
    with pytest.raises(ValueError, match=r"scores.*non-negative"):
        assign_labels(probs - 0.3, input="probs")
    with pytest.raises(ValueError, match=r"scores.*sum"):
        assign_labels(probs * 1.5, input="probs")


def test_log_probabilities_are_checked(backend_name):
    logp = GOOD - np.log(np.exp(GOOD).sum(axis=1, keepdims=True))
    backend = backend_of(backend_name)
    assign_labels(to_backend(logp, backend_name), input="logprobs", backend=backend)
    with pytest.raises(ValueError, match=r"scores.*log-probabilities"):
        assign_labels(to_backend(logp + 0.5, backend_name), input="logprobs", backend=backend)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lam_that_overflows_the_sweep_is_refused(backend_name, dtype):
    """lam times the largest logit beyond the sweep's float range: refused naming lam (and
    eps for codes), with the bound for these scores. Below it, lam is held to what the
    sweep's float resolves (``test_lam_beyond_the_sweeps_resolution_is_refused``); just
    below that bound the solve runs without overflow."""
    scores = (GOOD / np.abs(GOOD).max() * 4).astype(dtype)
    scores[0, 0] = 4.0  # the largest logit
    limit = float(np.finfo(dtype).max) / 4
    backend = backend_of(backend_name)
    bound = re.escape(f"{limit / 4:.3g}")
    with pytest.raises(ValueError, match=f"lam: .*row's best.*{dtype} sweep.*below {bound}"):
        assign_labels(to_backend(scores, backend_name), lam=limit / 3, backend=backend)
    with pytest.raises(ValueError, match=r"eps: .*pass eps above"):
        sinkhorn_codes(to_backend(scores, backend_name), eps=3 / limit, backend=backend)
    with pytest.raises(ValueError, match=f"lam: .*which the {dtype} sweep rounds by up to"):
        assign_labels(to_backend(scores, backend_name), lam=limit / 5, backend=backend)
    resolved = RESOLUTION / (4.0 * float(np.finfo(dtype).eps) / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow inside the sweeps
        warnings.simplefilter("ignore", ConvergenceWarning)  # an LP-like lam: may not converge
        warnings.simplefilter("ignore", RoundingWarning)
        result = assign_labels(
            to_backend(scores, backend_name), lam=0.99 * resolved, backend=backend, max_iter=20
        )
    assert np.isfinite(result.state.g).all()


@pytest.mark.parametrize("input_kind", ["logits", "logprobs"])
def test_masks_at_the_lowest_float_are_not_an_overflow(backend_name, input_kind):
    """Labels masked with float32's lowest value (masked_fill(mask, finfo.min)): lam times
    them is -inf, which only gives them no mass; solved as with a mask of -1e9."""
    x = np.random.default_rng(5).standard_normal((60, 4)).astype(np.float32)
    if input_kind == "logprobs":
        x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    masked = np.zeros_like(x, dtype=bool)
    masked[::3, 1] = True
    backend = backend_of(backend_name)
    results = [
        assign_labels(
            to_backend(np.where(masked, fill, x), backend_name),
            input=input_kind,
            backend=backend,
            rounding="balanced",
        )
        for fill in (np.finfo(np.float32).min, -1e9)
    ]
    labels = [to_numpy(r.labels) for r in results]
    np.testing.assert_array_equal(labels[0], labels[1])
    assert not masked[np.arange(60), labels[0]].any()
    masked[7] = True  # a row masked everywhere: refused, not solved on -inf (the message
    # named lam and suggested a lam below 0.25, useless for a masked row)
    with pytest.raises(ValueError, match=r"scores: a row's best score is -3.4e\+38 \(masked"):
        assign_labels(
            to_backend(np.where(masked, np.finfo(np.float32).min, x), backend_name),
            input=input_kind,
            backend=backend,
        )


def test_probabilities_bound_lam_by_log_k():
    """For probabilities every row's best log-probability lies in [-log K, 0]."""
    probs = np.full((8, 4), 0.25, dtype=np.float32)
    probs[0] = [0.5, 0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"lam: .*1.39 in size"):
        assign_labels(probs, input="probs", lam=1e38)
    with pytest.raises(ValueError, match=r"lam: .*which the float32 sweep rounds by up to"):
        assign_labels(probs, input="probs", lam=1e36)  # resolved only below 1.2e5
    with pytest.warns(ConvergenceWarning):  # lam * log p = -inf for the zeros: no mass
        assign_labels(probs, input="probs", lam=1e5, max_iter=5)


def _one_hot(labels: np.ndarray, n_labels: int) -> np.ndarray:
    probs = np.zeros((labels.size, n_labels))
    probs[np.arange(labels.size), labels] = 1.0
    return probs


def test_support_between_floor_and_target_is_not_refused():
    """N=10, K=3: targets 3.33, integer sizes 3 or 4. A label positive on exactly 3 rows
    can meet its floor: balanced rounding solves it (the Sinkhorn solve cannot reach the
    fractional target, and warns)."""
    probs = np.tile([0.5, 0.5, 0.0], (10, 1))
    probs[:3] = [0.2, 0.2, 0.6]
    with pytest.warns(ConvergenceWarning):
        result = assign_labels(probs, input="probs", rounding="balanced", max_iter=200)
    counts = np.bincount(result.labels, minlength=3)
    assert counts[2] == 3 and sorted(counts[:2].tolist()) == [3, 4]
    assert (result.labels[:3] == 2).all()


def test_row_only_on_closed_labels_is_infeasible(backend_name):
    """A row whose probability sits only on labels of size 0 cannot be placed: refused
    naming the row, before the solve (it used to run all max_iter on NaN and then give
    that row a closed label)."""
    probs = np.full((30, 3), 1 / 3)
    probs[17] = [1.0, 0.0, 0.0]
    backend = backend_of(backend_name)
    stacked = np.stack([np.full((30, 3), 1 / 3), probs])
    for scores, where in ((probs, ""), (stacked, " of head 1")):
        with pytest.raises(ValueError, match=f"scores: row 17{where} has .*closed: \\[0\\]"):
            assign_labels(
                to_backend(scores, backend_name), input="probs", backend=backend,
                marginals=Counts([0, 15, 15]),
            )  # fmt: skip
    probs[17] = [0.5, 0.0, 0.5]  # one open label left: solved, the row on label 2
    result = assign_labels(
        to_backend(probs, backend_name), input="probs", backend=backend,
        marginals=Counts([0, 15, 15]), rounding="balanced",
    )  # fmt: skip
    labels = to_numpy(result.labels)
    assert labels[17] == 2 and np.bincount(labels, minlength=3).tolist() == [0, 15, 15]


def test_logits_row_masked_except_on_closed_labels_is_infeasible(backend_name):
    """The logits form of the test above: a row masked at the dtype's lowest value on every
    open label (lam times it is -inf in the sweep) is refused naming it (it ran max_iter
    sweeps on NaN and gave the row a masked label). A finite mask such as -1e9, or a low
    score, still lets the row take an open label, as the exact LP would."""
    x = np.random.default_rng(16).standard_normal((12, 3)).astype(np.float32)
    x[0, :2] = np.finfo(np.float32).min
    backend, closed = backend_of(backend_name), Counts([6, 6, 0])
    with pytest.raises(ValueError, match=r"row 0 has scores above the dtype's lowest .*\[2\]"):
        assign_labels(to_backend(x, backend_name), marginals=closed, backend=backend)
    for low in (-1e9, -50.0):
        x[0, :2] = [low, 1.5 * low]
        result = assign_labels(
            to_backend(x, backend_name), marginals=closed, backend=backend, rounding="balanced"
        )
        labels = to_numpy(result.labels)
        assert labels[0] == 0 and np.bincount(labels, minlength=3).tolist() == [6, 6, 0]


def test_labels_short_of_supporting_rows_are_infeasible(backend_name, monkeypatch):
    """One-hot probabilities with 2 rows of label 1 cannot give it N/K = 5 points:
    refused from the input check, naming the label and its counts, before any solve."""
    import equipart.api

    probs = _one_hot(np.array([0] * 6 + [1] * 2 + [2] * 6 + [3] * 6), 4)
    backend = backend_of(backend_name)

    def fail(*args, **kwargs):
        raise AssertionError("the solve started before the support check")

    monkeypatch.setattr(equipart.api, "run_sinkhorn", fail)
    with pytest.raises(ValueError, match=r"scores: 1 label.*label 1: 2 rows, needs 5"):
        assign_labels(to_backend(probs, backend_name), input="probs", backend=backend)
    with pytest.raises(ValueError, match=r"of head 1 .*label 1: 2 rows, needs 5"):
        stacked = np.stack([_one_hot(np.arange(20) % 4, 4), probs])
        assign_labels(to_backend(stacked, backend_name), input="probs", backend=backend)
    monkeypatch.undo()
    # a target the support meets exactly is solved
    result = assign_labels(
        to_backend(probs, backend_name), input="probs", backend=backend,
        marginals=Counts([6, 2, 6, 6]), rounding="balanced",
    )  # fmt: skip
    assert np.bincount(to_numpy(result.labels), minlength=4).tolist() == [6, 2, 6, 6]


@pytest.mark.parametrize(
    "convert,error,message",
    [
        (lambda b: b + 1j, TypeError, "complex"),
        (lambda b: b > 0, TypeError, "dtype, got bool"),
        (lambda b: b.tolist(), TypeError, "yielded a builtins.list"),
        (lambda b: b[:, :3], ValueError, "K=4"),
    ],
)
@pytest.mark.parametrize("counted", [True, False])
def test_every_streamed_block_is_checked(convert, error, message, counted):
    """A RowBlocks block after the first gets the checks the first gets, whether the
    stream's rows are counted by a pass or given."""
    blocks = [GOOD[:10], convert(GOOD[10:])]
    size = {} if counted else {"n_rows": 20, "n_labels": 4}
    with pytest.raises(error, match=f"scores: .*{message}"):
        assign_labels(RowBlocks(lambda: iter(blocks), **size), backend="numpy")


def test_uninstalled_backend_names_the_extra(monkeypatch):
    import equipart.backends as registry

    monkeypatch.setitem(
        registry._ENTRIES, "cupy", registry._Entry("equipart_missing_module:Nope", "cupy")
    )
    registry._load.cache_clear()
    with pytest.raises(ValueError, match=r"backend.*equipart\[cupy\]"):
        assign_labels(GOOD, backend="cupy")
    registry._load.cache_clear()


def test_backend_that_cannot_read_the_array():
    pytest.importorskip("torch")
    from equipart.backends.torch import TorchBackend

    with pytest.raises(TypeError, match=r"backend.*torch"):
        assign_labels(GOOD, backend="torch")
    with pytest.raises(TypeError, match="backend: TorchBackend does not read numpy"):
        assign_labels(GOOD, backend=TorchBackend(kernel="torch"))


def test_backend_object_with_settings_is_used():
    """backend= takes a Backend object too: its settings (here the torch path) apply."""
    torch = pytest.importorskip("torch")
    from equipart.backends.torch import TorchBackend

    class Counting(TorchBackend):
        sweeps = 0

        def sweep(self, *args, **kwargs):
            Counting.sweeps += 1
            return super().sweep(*args, **kwargs)

    tensor = torch.from_numpy(GOOD)
    result = assign_labels(tensor, backend=Counting(kernel="torch"))
    assert Counting.sweeps == result.n_iter and result.labels.dtype == torch.int64
    np.testing.assert_array_equal(result.labels.numpy(), assign_labels(GOOD).labels)


def test_sinkhorn_codes_arguments():
    with pytest.raises(ValueError, match="eps"):
        sinkhorn_codes(GOOD, eps=0)
    with pytest.raises(ValueError, match="n_iter"):
        sinkhorn_codes(GOOD, n_iter=0)
    with pytest.raises(ValueError, match="scores"):
        sinkhorn_codes(np.zeros(3))


def test_validation_happens_before_work(monkeypatch):
    """A bad argument late in the list is found without any sweep being run."""
    from equipart.backends.numpy import NumpyBackend

    def fail(*args, **kwargs):
        raise AssertionError("sweep ran before validation finished")

    monkeypatch.setattr(NumpyBackend, "sweep", fail)
    with pytest.raises(ValueError, match="warm_start"):
        assign_labels(GOOD, backend="numpy", warm_start=np.zeros(7))


def test_marginals_are_checked_before_the_data_pass(monkeypatch):
    """Counts that cannot fit N are refused before any block of scores is read."""
    from equipart.backends.numpy import NumpyBackend

    def fail(*args, **kwargs):
        raise AssertionError("scores were read before the marginals were checked")

    monkeypatch.setattr(NumpyBackend, "check", fail)
    with pytest.raises(ValueError, match="marginals"):
        assign_labels(GOOD, backend="numpy", marginals=Counts([5, 5, 5, 4]))


@pytest.mark.parametrize("mask", [-1e9, -1e30, float(np.finfo(np.float32).min)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_label_masked_at_every_point_is_refused(backend_name, mask, dtype):
    """A finite mask (-1e9, -1e30, float32's lowest) on one label's whole column leaves it
    no mass: refused at the first sweep like zero probabilities.
    (A dual compensating 2.5e31 nats left float32 sweeps no digits for the other labels:
    every point went to one label, reported converged.) The same in sinkhorn_codes, whose
    codes were all NaN."""
    x = np.random.default_rng(0).standard_normal((400, 8)).astype(dtype)
    x[:, 3] = mask
    scores = to_backend(x, backend_name)
    with pytest.raises(ValueError, match=r"label\(s\) \[3\] have zero probability .*a mask"):
        assign_labels(scores, backend=backend_of(backend_name))
    with pytest.raises(ValueError, match=r"label\(s\) \[3\] .*leave those prototypes out"):
        sinkhorn_codes(scores, backend=backend_of(backend_name))
    x[:10, 3] = 0.0  # ten rows allow it: not refused (too few for its 50; the solve says so)
    with pytest.warns(ConvergenceWarning, match="has not decreased"):
        result = assign_labels(x, max_iter=300, backend="numpy")
    assert np.bincount(result.labels, minlength=8)[3] == 10


def test_float16_masks_at_float16s_lowest_are_refused(backend_name):
    """float16 masks cannot lie 1e8 below anything: torch.finfo(torch.float16).min (-65504)
    on a whole column is refused as a mask (it ran to max_iter, unconverged, with the
    masked label given its 50 points); the depth for float16 is a quarter of its range,
    so -1e4 stays a (very bad) score, as in float32."""
    x = np.random.default_rng(0).standard_normal((400, 8)).astype(np.float16)
    x[:, 3] = np.finfo(np.float16).min
    scores = to_backend(x, backend_name)
    with pytest.raises(ValueError, match=r"label\(s\) \[3\] .*more than 16376 below"):
        assign_labels(scores, backend=backend_of(backend_name))
    with pytest.raises(ValueError, match=r"label\(s\) \[3\] .*leave those prototypes out"):
        sinkhorn_codes(scores, backend=backend_of(backend_name))
    x[:, 3] = -1e4
    result = assign_labels(to_backend(x, backend_name), backend=backend_of(backend_name))
    assert result.converged


def test_sinkhorn_codes_refuse_a_label_with_zero_probability_everywhere():
    probs = np.zeros((8, 4))
    probs[np.arange(8), np.arange(8) % 3] = 1.0  # label 3 is never positive
    with pytest.raises(ValueError, match=r"label\(s\) \[3\] have zero probability"):
        sinkhorn_codes(probs, input="probs")


def test_a_warm_start_with_a_common_offset_is_the_same_problem(backend_name):
    """Q, labels and codes do not depend on a common shift of g; float32 sweeps and labels
    read g shifted to a largest finite entry of 0, so an offset of 1e8 (a state someone
    shifted, or a dual from elsewhere) gives the cold solve's labels (it gave 92/100/96/...
    of 500 instead of 83 each, reported converged)."""
    x = np.random.default_rng(0).standard_normal((500, 6)).astype(np.float32)
    scores = to_backend(x, backend_name)
    cold = assign_labels(scores, backend=backend_of(backend_name))
    for offset in (1e4, 1e8):
        warm = assign_labels(
            scores, warm_start=cold.state.g + offset, backend=backend_of(backend_name)
        )
        assert warm.converged and warm.n_iter == 1
        np.testing.assert_array_equal(to_numpy(warm.labels), to_numpy(cold.labels))


def test_array_forms_the_solver_cannot_read_are_refused():
    """A masked array's mask was ignored (the masked label took every point) and a sparse
    tensor failed inside torch: both are refused naming scores and the way out."""
    x = np.random.default_rng(10).standard_normal((30, 6)).astype(np.float32)
    masked = np.ma.masked_array(x, mask=np.zeros_like(x, dtype=bool))
    with pytest.raises(TypeError, match=r"scores: a masked array's mask is not read.*filled"):
        assign_labels(masked)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"scores: torch.sparse_coo tensors .*to_dense"):
        assign_labels(torch.from_numpy(x).to_sparse())
    # a negative-bit view (torch's lazy negation) reads as its values on every path
    from equipart import exact_assign

    want, got = exact_assign(-x), exact_assign(torch.from_numpy(x)._neg_view())
    np.testing.assert_array_equal(got.labels.numpy(), want.labels)


@pytest.mark.parametrize(
    "warm_start,error,match",
    [
        (np.zeros(4) + 1j, TypeError, r"warm_start: .*real dual .*complex128"),
        (np.array(["a"] * 4), TypeError, r"warm_start: .*real dual"),
        (SolverState(g=np.zeros((1, 1, 4)), lam=25.0, shape=(20, 4)), ValueError,
         r"warm_start: expected a dual of shape \(4,\)"),
        (SolverState(g=np.zeros(4), lam=25.0 + 1e-9, shape=(20, 4)), ValueError,
         r"solved at lam=25.000000001 but lam=25.0"),
    ],
)  # fmt: skip
def test_warm_starts_that_are_not_real_duals_are_refused(warm_start, error, match):
    """Complex duals lost their imaginary part with only a NumPy warning, a state's 3-D g
    failed in NumPy's broadcasting, and nearly equal lams printed as equal."""
    with pytest.raises(error, match=match):
        assign_labels(GOOD, lam=25.0, warm_start=warm_start)


def test_the_dead_label_check_judges_scores_not_lam_or_the_warm_start():
    """The first-sweep check refuses labels masked at every point, in score units: not a
    label whose mass is merely small at a tiny lam (lam 1e-9 was refused on every label),
    nor one a warm start pushed far down (g_j = -1e12, or -1e20 where float32 sweeps
    round lam * L + g_j by 1e13: refused, by numpy or numba by turns), and with Relaxed targets (no
    required mass) a fully masked label simply stays empty."""
    rng = np.random.default_rng(0)
    tiny = assign_labels(rng.standard_normal((5, 10)), lam=1e-9, backend="numpy")
    assert tiny.converged
    x = rng.standard_normal((400, 6)).astype(np.float32)
    g0 = np.zeros(6)
    g0[2] = -1e12
    pushed = assign_labels(x, warm_start=g0, backend="numpy")
    assert pushed.converged
    assert np.bincount(pushed.labels, minlength=6).min() >= 60  # about 400 / 6 each
    for far in (-1e20, -9e29):  # beyond any score: float32 sweeps kept no digits of x
        g0[2] = far
        for backend in ("numpy", "numba"):
            assert assign_labels(x, warm_start=g0, backend=backend).converged
    x[:, 3] = -1e9
    g0[3] = -1e20  # ... and a mask under such a warm start ended converged on one label
    with pytest.raises(ValueError, match=r"label\(s\) \[3\] .*a mask"):
        assign_labels(x, warm_start=g0, backend="numpy")
    relaxed = assign_labels(x, marginals=Relaxed(Uniform(), 1.0), backend="numba")
    counts = np.bincount(relaxed.labels, minlength=6)
    assert counts[3] == 0 and counts.min(initial=400, where=np.arange(6) != 3) > 60


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_matrix_scores_and_oversized_counts():
    """An np.matrix failed inside the NumPy backend (its max() takes no keepdims), and
    uint64 sizes beyond int64 failed inside NumPy's conversion."""
    x = np.random.default_rng(3).normal(size=(60, 4))
    want = assign_labels(x, backend="numpy").labels
    np.testing.assert_array_equal(assign_labels(np.asmatrix(x), backend="numpy").labels, want)
    with pytest.raises(ValueError, match=r"marginals: Counts\(sizes\) must be below 2\*\*63"):
        Counts(np.array([2**63 + 5, 0], dtype=np.uint64))


def test_a_lam_at_which_every_score_underflows_is_refused():
    """lam 1e-300 on float32 scores made every lam * L zero in the sweep: "converged",
    with every point on label 0 (the ties' lowest index)."""
    x = np.random.default_rng(0).standard_normal((100, 5)).astype(np.float32)
    with pytest.raises(ValueError, match=r"lam: lam = 1e-300 times the largest score .*tie"):
        assign_labels(x, lam=1e-300)
    with pytest.raises(ValueError, match=r"eps: 1/eps = 1e-300 .*pass eps below"):
        sinkhorn_codes(x, eps=1e300)
    assert assign_labels(x.astype(np.float64), lam=1e-300).converged  # float64 sweeps hold it
    assert np.bincount(assign_labels(x, lam=1e-30).labels).min() > 10


# ---- -inf: an impossible label ---------------------------------------------------------


def _masked_logits(dtype, input_kind: str = "logits"):
    """Logits with a quarter of the entries masked (never a whole row or column)."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((240, 6)).astype(dtype)
    masked = rng.random((240, 6)) < 0.25
    masked[:, 0] = False  # every row keeps a label
    if input_kind == "logprobs":
        x = (x - np.log(np.exp(x.astype(np.float64)).sum(axis=1, keepdims=True))).astype(dtype)
    return x, masked


@pytest.mark.parametrize("input_kind", ["logits", "logprobs"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rounding", ["argmax", "balanced"])
def test_neg_inf_masks_equal_finite_masks(backend_name, input_kind, dtype, rounding):
    """torch's masked_fill(mask, -inf) was refused as "infinite"; it now gives exactly the
    solve of a finite mask far below the rows' best (-1e9, or 1e8 below the best score):
    zero probability, the same labels, dual and codes."""
    x, masked = _masked_logits(dtype, input_kind)
    backend = backend_of(backend_name)
    runs = []
    for fill in (-np.inf, -1e9, float(x.max()) - 1e8):
        scores = np.where(masked, fill, x).astype(dtype)
        result = assign_labels(
            to_backend(scores, backend_name),
            input=input_kind,
            backend=backend,
            rounding=rounding,
            return_codes=rounding == "argmax",
        )
        runs.append(result)
    labels = [to_numpy(r.labels) for r in runs]
    for other in runs[1:]:
        np.testing.assert_array_equal(other.state.g, runs[0].state.g)
        assert other.n_iter == runs[0].n_iter and other.objective == runs[0].objective
    for other in labels[1:]:
        np.testing.assert_array_equal(other, labels[0])
    assert not masked[np.arange(240), labels[0]].any()
    if rounding == "argmax":
        codes = [to_numpy(r.codes) for r in runs]
        assert (codes[0][masked] == 0.0).all()
        np.testing.assert_array_equal(codes[1], codes[0])


def test_neg_inf_with_exact_rounding_and_torch_masked_fill():
    """The idiom itself: scores.masked_fill(mask, float("-inf")), on every rounding."""
    torch = pytest.importorskip("torch")
    x, masked = _masked_logits(np.float32)
    logits = torch.from_numpy(x).masked_fill(torch.from_numpy(masked), float("-inf"))
    reference = assign_labels(np.where(masked, -1e9, x), rounding="exact")
    result = assign_labels(logits, rounding="exact")
    np.testing.assert_array_equal(result.labels.numpy(), reference.labels)
    for rounding in ("auto", "argmax", "balanced"):
        labels = assign_labels(logits, rounding=rounding).labels.numpy()
        assert not masked[np.arange(240), labels].any()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_pos_inf_are_still_refused(backend_name, bad):
    x, _ = _masked_logits(np.float32)
    x[5, 2] = bad
    with pytest.raises(ValueError, match=r"^scores: contains NaN or \+inf values"):
        assign_labels(to_backend(x, backend_name), backend=backend_of(backend_name))
    with pytest.raises(ValueError, match=r"^scores: contains NaN or \+inf values"):
        sinkhorn_codes(to_backend(x, backend_name), backend=backend_of(backend_name))


def test_neg_inf_probabilities_are_refused():
    probs = np.full((10, 2), 0.5)
    probs[3, 1] = -np.inf
    with pytest.raises(ValueError, match="input='probs' needs non-negative probabilities"):
        assign_labels(probs, input="probs")


def test_a_row_at_neg_inf_everywhere_is_refused_naming_it(backend_name):
    x, _ = _masked_logits(np.float32)
    x[37] = -np.inf
    backend = backend_of(backend_name)
    with pytest.raises(ValueError, match=r"^scores: row 37 is -inf at every label"):
        assign_labels(to_backend(x, backend_name), backend=backend)
    with pytest.raises(ValueError, match=r"^scores: row 37 is -inf at every label"):
        sinkhorn_codes(to_backend(x, backend_name), backend=backend)
    heads = np.stack([np.where(np.isinf(x), 0.0, x), x]).astype(np.float32)
    with pytest.raises(ValueError, match=r"^scores: row 37 of head 1 is -inf at every label"):
        assign_labels(to_backend(heads, backend_name), backend=backend)
    blocks = RowBlocks(lambda: (x[i : i + 50] for i in range(0, 240, 50)), 240, 6)
    with pytest.raises(ValueError, match=r"^scores: row 37 is -inf at every label"):
        assign_labels(blocks, backend="numpy")  # counted across streamed blocks


def test_a_label_at_neg_inf_where_it_needs_rows_is_refused_naming_it(backend_name):
    """A label -inf at every row, or at so many that fewer rows than its size remain,
    cannot meet its target: refused before the solve, naming the label."""
    x, _ = _masked_logits(np.float32)
    backend = backend_of(backend_name)
    everywhere = x.copy()
    everywhere[:, 4] = -np.inf
    with pytest.raises(ValueError, match=r"label 4: 0 rows, needs 40\)"):
        assign_labels(to_backend(everywhere, backend_name), backend=backend)
    with pytest.raises(ValueError, match=r"label\(s\) \[4\] have zero probability"):
        sinkhorn_codes(to_backend(everywhere, backend_name), backend=backend)
    short = x.copy()
    short[:215, 4] = -np.inf  # 25 rows left for a size of 40
    with pytest.raises(ValueError, match=r"a score above -inf at fewer rows.*label 4: 25 rows"):
        assign_labels(to_backend(short, backend_name), backend=backend)
    # with a size that fits, the same scores solve, and label 4 takes only its rows
    sizes = Counts([50, 50, 50, 45, 25, 20])
    labels = to_numpy(
        assign_labels(
            to_backend(short, backend_name), marginals=sizes, rounding="balanced", backend=backend
        ).labels
    )
    np.testing.assert_array_equal(np.bincount(labels, minlength=6), sizes.sizes)
    assert (labels[:215] != 4).all()


def test_lam_beyond_the_sweeps_resolution_is_refused(backend_name):
    """Logits scaled by 1e4 at lam 25: a float32 sweep rounds lam * L (1.2e6) by 0.07
    nats; the solve ran 1,000 sweeps and then blamed masks and sizes out of reach. Now
    refused up front with the numbers; float64 scores of the same values are not, and
    a row offset is named as such."""
    scores = np.random.default_rng(0).standard_normal((400, 20)) * 1e4
    backend = backend_of(backend_name)
    with pytest.raises(
        ValueError,
        match=r"^lam: lam = 25 times the rows' best scores \(.* in size\) is .*, which the "
        r"float32 sweep rounds by up to 0\.0\d+ nats .*pass lam below .*or pass float64",
    ):
        assign_labels(to_backend(scores.astype(np.float32), backend_name), backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assign_labels(to_backend(scores, backend_name), backend=backend, max_iter=2)
    offset = (np.random.default_rng(1).standard_normal((400, 20)) + 1e5).astype(np.float32)
    with pytest.raises(ValueError, match="subtract each row's maximum"):
        assign_labels(to_backend(offset, backend_name), backend=backend)
    with pytest.raises(ValueError, match=r"^eps: 1/eps = 20 times .*pass eps above"):
        sinkhorn_codes(to_backend(scores.astype(np.float32), backend_name), backend=backend)

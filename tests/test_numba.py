"""The Numba backend against the NumPy reference, on the same inputs.

Documented tolerances (docs/numba.md): ``labels`` and ``top_labels`` are bit-identical to
the NumPy backend (z is formed with the same roundings); sweep column sums agree to 2e-5
relative in float32 and 1e-12 in float64, ``colmax`` to 1e-5 relative where a column sum
underflowed to zero (elsewhere it is only a lower bound); solved duals g agree
to 1e-3 (float32) and 1e-8 (float64) in natural-log units, and labels of a solve agree
wherever the two best labels of a row are further apart than the duals' difference.
"""

from __future__ import annotations

import os
import threading
import time
import warnings

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from column_stats_checks import assert_column_stats  # noqa: E402
from conftest import run_python  # noqa: E402

import equipart  # noqa: E402
from equipart import ConvergenceWarning, Counts, assign_labels  # noqa: E402
from equipart.backends.numba import (  # noqa: E402
    EXP2_FLOOR,
    EXP2_FLOOR_F64,
    NumbaBackend,
    _exp_units,
)
from equipart.backends.numpy import NumpyBackend  # noqa: E402

NB, NP = NumbaBackend(), NumpyBackend()
KINDS = ("logits", "logprobs", "probs")


def scores_for(kind: str, shape: tuple[int, int], dtype, seed: int = 0, spread: float = 2.0):
    rng = np.random.default_rng(seed)
    logits = spread * rng.standard_normal(shape)
    if kind == "logits":
        return logits.astype(dtype)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return (np.exp(logp) if kind == "probs" else logp).astype(dtype)


def dual(n_labels: int, seed: int = 1, dead: bool = False) -> np.ndarray:
    g = np.random.default_rng(seed).standard_normal(n_labels)
    if dead:
        g[::5] = -np.inf  # zero-target labels
    return g


def assert_same_stats(a, b, dtype, rtol: float | None = None) -> None:
    """a (Numba) against b (NumPy, or another Numba sweep): column sums to the documented
    tolerance (or ``rtol``), colmax by the ColumnStats contract; Numba's exp floors no
    lower than NumPy's."""
    if rtol is None:
        rtol = 2e-5 if dtype == np.float32 else 1e-12
    assert_column_stats(a, b, rtol=rtol, atol=1e-30, colmax_atol=1e-5)
    assert np.all(a.colsum[b.colsum == 0.0] == 0.0)


@numba.njit
def _exp_all(w):
    out = np.empty_like(w)
    for i in range(w.shape[0]):
        out[i] = _exp_units(w[i])
    return out


def test_float32_exp2_is_within_one_ulp_and_exact_at_zero():
    rng = np.random.default_rng(0)
    w = -np.concatenate([np.linspace(0, 125, 500_001), rng.uniform(0, 125, 200_000)])
    w = w.astype(np.float32)
    got = _exp_all(w).astype(np.float64)
    ref = np.exp2(w.astype(np.float64))
    ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - ref) / ulp) <= 1.0
    assert _exp_all(np.float32([0.0, -0.0]))[0] == 1.0
    below = np.float32([EXP2_FLOOR - 1e-3, -126.0, -1e30, -np.inf])
    assert np.array_equal(_exp_all(below), np.zeros(4, np.float32))
    # monotone on a fine grid (no glitch at the range-reduction seams)
    fine = -np.linspace(0, 3, 100_001).astype(np.float32)
    assert np.all(np.diff(_exp_all(fine)) <= 0)


def test_float64_exp2_is_within_one_ulp_and_exact_at_zero():
    """The float64 exp2 (degree 11, no libm call) against long double exp2 over its whole
    range, including the floor at 2^-1021 below which it returns 0 (subnormals)."""
    if np.finfo(np.longdouble).nmant < 60:
        pytest.skip("needs an extended-precision long double for the reference")
    rng = np.random.default_rng(1)
    w = -np.concatenate(
        [np.linspace(0, 1021, 2_000_001), rng.uniform(0, 1021, 1_000_000), rng.uniform(0, 1, 10**6)]
    )
    got = _exp_all(w)
    ref = np.exp2(w.astype(np.longdouble))
    ulp = np.spacing(ref.astype(np.float64)).astype(np.longdouble)
    assert float(np.max(np.abs(got - ref) / ulp)) <= 1.0
    assert np.array_equal(_exp_all(np.array([0.0, -0.0])), [1.0, 1.0])
    below = np.array([EXP2_FLOOR_F64 - 1e-9, -1022.0, -1074.5, -1e300, -np.inf])
    assert np.array_equal(_exp_all(below), np.zeros(5))
    fine = -np.linspace(0, 3, 1_000_001)
    assert np.all(np.diff(_exp_all(fine)) <= 0)


def test_exp_in_kernel_units_matches_numpy_exp():
    """e^v as the kernels compute it, 2^(v log2 e), against np.exp over [-745, 0], both
    precisions: within the rounding of w = v log2 e (relative |v| 2^-p, p the mantissa
    bits) and 1 ulp; 0 wherever np.exp is subnormal (below the floor)."""
    for dtype, floor in ((np.float64, EXP2_FLOOR_F64), (np.float32, float(EXP2_FLOOR))):
        v = -np.linspace(0, 745 if dtype == np.float64 else 104, 1_000_001).astype(dtype)
        w = v * dtype(np.log2(np.e))
        got = _exp_all(w).astype(np.float64)
        ref = np.exp(v.astype(np.float64))
        eps = float(np.finfo(dtype).eps)
        kept = w >= floor
        bound = (np.abs(v[kept]) * 1.5 + 2) * eps
        assert np.all(np.abs(got[kept] - ref[kept]) <= bound * ref[kept])
        assert np.all(got[~kept] == 0.0) and np.all(ref[~kept] < 2.0 * np.finfo(dtype).tiny)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lam", [0.1, 25.0, 1e4])
def test_sweep_matches_numpy_backend(kind, dtype, lam):
    x = scores_for(kind, (700, 37), dtype)
    g = dual(37, dead=True)
    assert_same_stats(NB.sweep(x, kind, lam, g), NP.sweep(x, kind, lam, g), dtype)


@pytest.mark.parametrize("n_labels", [70, 600], ids=["two-pass", "fused"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lam", [0.1, 25.0, 1e4])
def test_warm_sweeps_of_a_solve_match_numpy(kind, dtype, lam, n_labels):
    """A solve's backend skips the row-maximum pass from a block's second sweep on,
    shifting each row by its previous maximum plus the largest step of g: the statistics
    stay those of the NumPy backend; small steps of g sweep warm, steps whose spread could
    leave a row's terms too small sweep cold; probabilities always sweep cold. (Warm rows
    take two passes below FUSED_MIN_LABELS and one from there on.)"""
    x = scores_for(kind, (700, n_labels), dtype)
    rng = np.random.default_rng(5)
    solve = NB.for_solve()
    g = dual(n_labels, dead=True)
    for number, step in enumerate((0.0, 0.0, 1e-3 / lam, 30.0, -50.0)):
        g = g + step * rng.standard_normal(n_labels)
        got = solve.sweep(x, kind, lam, g)
        # against a cold sweep of this backend, tightly; against NumPy at K = 70, where the
        # documented tolerances hold (at K = 600 the rows' maxima are larger, and with them
        # the roundings of z in both backends: 3e-3 apart in float32 and 6e-12 in float64
        # at lam 1e4, cold sweeps too)
        cold = NB.sweep(x, kind, lam, g)
        assert_same_stats(got, cold, dtype, 1e-6 if dtype == np.float32 else 1e-14)
        if n_labels < 100:
            assert_same_stats(got, NP.sweep(x, kind, lam, g), dtype)
        warm, redone = solve.state.warm_rows
        if kind == "probs" or number == 0:
            assert warm == 0
        elif number < 3:  # steps of g far below the slack: every row warm, none redone
            assert (warm, redone) == (700, 0), (number, warm, redone)
        else:  # 30 and 50 x N(0, 1) steps: the spread exceeds the slack
            assert warm == 0
    assert solve.backend is NB and not vars(NB)  # the shared backend keeps no state


@pytest.mark.parametrize("n_labels", [1000, 4096], ids=["warm-fused", "cold-wide"])
def test_float64_sweeps_of_a_parallel_solve_match_numpy_to_1e12(n_labels):
    """float64 at the benchmark's shape class: a block large enough for helper threads,
    K = 1,000 (a solve's one-pass warm sweeps, K not a multiple of the vector width) and
    K = 4,096 (past WARM_MAX_LABELS: two-pass cold sweeps), lam 25: every sweep of the
    solve agrees with the NumPy backend's float64 sweep to 1e-12 relative."""
    x = scores_for("logits", (3000, n_labels), np.float64, seed=8)
    rng = np.random.default_rng(9)
    solve = NB.for_solve()
    g = np.zeros(n_labels)
    for _ in range(3):
        got, want = solve.sweep(x, "logits", 25.0, g), NP.sweep(x, "logits", 25.0, g)
        assert_same_stats(got, want, np.float64)
        g = g + 0.05 * rng.standard_normal(n_labels)
    if n_labels == 1000:
        assert solve.state.warm_rows == (3000, 0)  # the last sweep ran warm, no row redone


def test_coarse_sweeps_of_float64_compute_in_float32():
    """A session's coarse sweeps of float64 scores equal the float32 sweep of the same
    values rounded to float32 (rows loaded into float32 scratch); float32 scores are
    unaffected; the flag off again gives float64 arithmetic (1e-12 to NumPy)."""
    x = scores_for("logits", (3000, 1000), np.float64, seed=8)
    g = 0.1 * np.random.default_rng(3).standard_normal(1000)
    solve = NB.for_solve()
    solve.state.coarse = True
    coarse = solve.sweep(x, "logits", 25.0, g)
    assert_same_stats(coarse, NB.sweep(x.astype(np.float32), "logits", 25.0, g), np.float32)
    assert not np.allclose(coarse.colsum, NP.sweep(x, "logits", 25.0, g).colsum, rtol=1e-12)
    x32 = x.astype(np.float32)
    assert_same_stats(solve.sweep(x32, "logits", 25.0, g), NB.sweep(x32, "logits", 25.0, g),
                      np.float32)
    solve.state.coarse = False
    assert_same_stats(solve.sweep(x, "logits", 25.0, g), NP.sweep(x, "logits", 25.0, g),
                      np.float64)


@pytest.mark.parametrize("n_labels", [70, 600], ids=["two-pass", "fused"])
def test_warm_rows_whose_shift_falls_short_are_redone_exactly(n_labels):
    """Rows whose cached maximum no longer bounds them (their scores were raised in place
    mid-solve, or a loader refilled the same buffer) fail the per-row check and are swept
    cold: the result is exact and the redone rows are counted."""
    x = scores_for("logits", (300, n_labels), np.float32)
    g = dual(n_labels)
    solve = NB.for_solve()
    solve.sweep(x, "logits", 25.0, g)
    x[::3] += np.float32(150.0 / (25.0 * np.log2(np.e)))  # 150 log2 units above the shift
    got = solve.sweep(x, "logits", 25.0, g)
    assert solve.state.warm_rows == (300, 100)
    assert_same_stats(got, NB.sweep(x, "logits", 25.0, g), np.float32, 1e-6)  # cold's
    if n_labels < 100:  # (see test_warm_sweeps_of_a_solve_match_numpy)
        assert_same_stats(got, NP.sweep(x, "logits", 25.0, g), np.float32)
    assert solve.state.blocks and all(v is None for v in solve.state.blocks.values())  # gave up


def test_warm_sweep_keeps_columns_of_tiny_mass():
    """A warm shift above a row's maximum would flush float32 terms that the cold sweep
    keeps; a column whose whole mass is that small sends the block back to a cold sweep."""
    x = np.full((1000, 64), -30.0, dtype=np.float32)
    x[:, 0] = 0.0
    x[:, 1] = -88.0  # 2^-127 of the shift after the step below, 2^-107 of the row maximum
    g = np.zeros(64)
    solve = NB.for_solve()
    solve.sweep(x, "logits", 1.0, g)
    g[0] = -14.0  # the row maximum drops by 14 nats: the warm shift overshoots by that
    got, ref = solve.sweep(x, "logits", 1.0, g), NP.sweep(x, "logits", 1.0, g)
    assert ref.colsum[1] > 1e-30 and got.colsum[1] > 0.0
    assert_same_stats(got, ref, np.float32)


def test_warm_state_is_per_block_and_not_kept_for_converted_blocks():
    solve = NB.for_solve()
    x8 = scores_for("logits", (200, 70), np.int8)
    for _ in range(2):
        solve.sweep(x8, "logits", 25.0, dual(70))
    assert not solve.state.blocks  # integers are converted block by block: nothing to reuse
    x16 = scores_for("logits", (200, 70), np.float16)  # read as they are: warm
    for _ in range(2):
        solve.sweep(x16, "logits", 25.0, dual(70))
    assert len(solve.state.blocks) == 1 and solve.state.warm_rows == (200, 0)
    solve = NB.for_solve()
    heads = scores_for("logits", (2, 200, 70), np.float32)
    for _ in range(2):
        for head in heads:
            solve.sweep(head, "logits", 25.0, dual(70))
            assert solve.state.warm_rows[0] in (0, 200)
    assert len(solve.state.blocks) == 2 and solve.state.warm_rows == (200, 0)
    narrow = scores_for("logits", (200, 10), np.float32)
    for _ in range(2):
        solve.sweep(narrow, "logits", 25.0, dual(10))
    assert solve.state.warm_rows[0] == 0 and len(solve.state.blocks) == 2  # K < 64: no cache


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["logits", "probs"])
def test_underflowed_columns_get_their_exact_colmax(kind, dtype):
    """Where a column's mass underflows, the sweep's extra pass supplies the exact colmax,
    so the driver's lower bound log m_j >= colmax_j - log K stays finite and tight."""
    x = scores_for(kind, (700, 37), dtype)
    g = dual(37)
    g[[4, 9]] -= 1000.0  # no row gives these labels any representable mass
    got, ref = NB.sweep(x, kind, 1.0, g), NP.sweep(x, kind, 1.0, g)
    assert got.colsum[4] == got.colsum[9] == 0.0
    assert np.isfinite(got.log_mass()).all()
    assert_same_stats(got, ref, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["logits", "logprobs"])
def test_labels_and_top_labels_are_identical_to_numpy(kind, dtype):
    x = scores_for(kind, (500, 29), dtype, seed=3)
    x[:, 7] = x[:, 3]  # exact ties: the lower index must win
    g = dual(29, dead=True)
    g[7] = g[3]
    assert np.array_equal(NB.labels(x, kind, 25.0, g), NP.labels(x, kind, 25.0, g))
    for k in (1, 4, 29):
        (ia, va), (ib, vb) = NB.top_labels(x, kind, 25.0, g, k), NP.top_labels(x, kind, 25.0, g, k)
        assert np.array_equal(ia, ib) and np.array_equal(va, vb)
        assert ia.dtype == np.int64 and va.dtype == vb.dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_labels_from_probs_agree_up_to_one_ulp_of_log(dtype):
    """log comes from libm here and from NumPy's own kernels there: they may differ by 1 ulp."""
    x = scores_for("probs", (500, 29), dtype, seed=3)
    g = dual(29, dead=True)
    (ia, va), (ib, vb) = (
        NB.top_labels(x, "probs", 25.0, g, 2),
        NP.top_labels(x, "probs", 25.0, g, 2),
    )
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(va, vb, rtol=rtol)
    clear = (vb[:, 0] - vb[:, 1]) > 4 * rtol * np.abs(vb[:, 0])
    assert clear.mean() > 0.9
    assert np.array_equal(ia[clear], ib[clear])
    assert np.array_equal(NB.labels(x, "probs", 25.0, g)[clear], ib[clear, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_codes_logprob_and_check_match_numpy(kind, dtype):
    x = scores_for(kind, (300, 41), dtype, seed=4)
    g = dual(41)
    a, b = NB.codes(x, kind, 25.0, g), NP.codes(x, kind, 25.0, g)
    assert a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=5e-5 if dtype == np.float32 else 1e-12, atol=1e-30)
    labels = NP.labels(x, kind, 25.0, g)
    np.testing.assert_allclose(
        NB.logprob_sum(x, kind, labels), NP.logprob_sum(x, kind, labels), rtol=1e-6
    )
    ca, cb = NB.check(x, kind), NP.check(x, kind)
    assert ca.finite_or_neg_inf and cb.finite_or_neg_inf
    assert ca.min_value == cb.min_value and ca.max_value == cb.max_value
    assert ca.min_row_max == cb.min_row_max == x.max(axis=1).min()
    assert ca.max_row_sum_deviation == pytest.approx(cb.max_row_sum_deviation, abs=1e-12)
    if kind == "probs":
        y = x.copy()
        y[::7, 3] = 0.0  # zeros on every 7th row of column 3, and all of column 5
        y[:, 5] = 0.0
        expected = (y > 0).sum(axis=0)
        np.testing.assert_array_equal(NB.check(y, kind).support, expected)
        np.testing.assert_array_equal(NP.check(y, kind).support, expected)
    else:
        assert ca.support is None and cb.support is None


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_check_reports_non_finite(bad):
    x = scores_for("logits", (200, 13), np.float32)
    x[150, 4] = bad
    assert not NB.check(x, "logits").finite_or_neg_inf


def test_check_accepts_neg_inf_and_counts_the_rows_where_labels_are_possible():
    """-inf is an impossible label, not a bad value: reported as the minimum, with the
    rows where each label is above -inf (as the NumPy backend reports them)."""
    x = scores_for("logits", (200, 13), np.float32)
    x[150, 4] = x[::3, 7] = -np.inf
    for backend in (NB, NP):
        report = backend.check(x, "logits")
        assert report.finite_or_neg_inf and report.min_value == -np.inf
        np.testing.assert_array_equal(report.support, (x > -np.inf).sum(axis=0))


def layouts(x: np.ndarray, tmp_path) -> dict[str, np.ndarray]:
    """Views of the same values in other memory layouts (x itself is C-contiguous)."""
    wide = np.zeros((x.shape[0] * 2, x.shape[1] * 3), dtype=x.dtype)
    wide[::2, ::3] = x
    path = tmp_path / "scores.dat"
    writer = np.memmap(path, dtype=x.dtype, mode="w+", shape=x.shape)
    writer[:] = x
    writer.flush()
    del writer
    return {
        "fortran": np.asfortranarray(x),
        "strided": wide[::2, ::3],
        "transposed": np.ascontiguousarray(x.T).T,
        "memmap_readonly": np.memmap(path, dtype=x.dtype, mode="r", shape=x.shape),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layouts_give_bit_identical_results_without_copying_the_input(dtype, tmp_path):
    x = scores_for("logits", (523, 47), dtype, seed=5)
    g = dual(47, dead=True)
    ref = NB.sweep(x, "logits", 25.0, g)
    ref_labels, ref_codes = NB.labels(x, "logits", 25.0, g), NB.codes(x, "logits", 25.0, g)
    for name, view in layouts(x, tmp_path).items():
        before = np.array(view, copy=True)
        stats = NB.sweep(view, "logits", 25.0, g)
        assert np.array_equal(stats.colsum, ref.colsum), name
        assert np.array_equal(stats.colmax, ref.colmax), name
        assert np.array_equal(NB.labels(view, "logits", 25.0, g), ref_labels), name
        assert np.array_equal(NB.codes(view, "logits", 25.0, g), ref_codes), name
        assert np.array_equal(view, before), name


def half_views(x: np.ndarray, tmp_path) -> tuple[np.ndarray, dict[str, object]]:
    """float16 and bfloat16 forms of x (rounded to bfloat16 first, so both hold the same
    values where |x| >= 2^-14) in the layouts the kernels read without a copy."""
    torch = pytest.importorskip("torch")
    from equipart.backends.numba import BFloat16Bits

    tensor = torch.from_numpy(x).to(torch.bfloat16)
    exact = tensor.float().numpy().astype(np.float16)
    assert np.array_equal(exact.astype(np.float32), tensor.float().numpy())
    views: dict[str, object] = {"float16 " + k: v for k, v in layouts(exact, tmp_path).items()}
    views["float16"] = exact
    views["bfloat16"] = BFloat16Bits(tensor.view(torch.int16).numpy())
    views["bfloat16 fortran"] = BFloat16Bits(tensor.T.contiguous().T.view(torch.int16).numpy())
    wide = torch.zeros(x.shape[0] * 2, x.shape[1] * 3, dtype=torch.bfloat16)
    wide[::2, ::3] = tensor
    views["bfloat16 strided"] = BFloat16Bits(wide[::2, ::3].view(torch.int16).numpy())
    return exact.astype(np.float32), views


@pytest.mark.parametrize("kind", KINDS)
def test_float16_and_bfloat16_read_directly_give_their_float32_upcast(kind, tmp_path):
    """float16 arrays (any layout, memmaps included) and bfloat16 bits are widened to
    float32 as the kernels read them: every pass gives the float32 upcast's bits, and a
    solve's warm sweeps apply to them as to float32 arrays."""
    x = scores_for(kind, (523, 70), np.float32, seed=5)
    if kind == "probs":  # above float16's subnormals, where bfloat16 values are float16s
        x = np.maximum(x, 1e-4)
    upcast, views = half_views(x, tmp_path)
    g = dual(70, dead=True)
    ref = NB.sweep(upcast, kind, 25.0, g)
    labels = NB.labels(upcast, kind, 25.0, g)
    top = NB.top_labels(upcast, kind, 25.0, g, 3)
    for name, view in views.items():
        stats = NB.sweep(view, kind, 25.0, g)
        assert np.array_equal(stats.colsum, ref.colsum) and np.array_equal(stats.colmax, ref.colmax)
        assert np.array_equal(NB.labels(view, kind, 25.0, g), labels), name
        assert np.array_equal(NB.codes(view, kind, 25.0, g), NB.codes(upcast, kind, 25.0, g))
        got_top = NB.top_labels(view, kind, 25.0, g, 3)
        assert np.array_equal(got_top[0], top[0]) and np.array_equal(got_top[1], top[1]), name
        assert NB.check(view, kind) == NB.check(upcast, kind), name
        assert NB.logprob_sum(view, kind, labels) == NB.logprob_sum(upcast, kind, labels), name
        solve, solve_ref = NB.for_solve(), NB.for_solve()
        for shift in (0.0, 0.5):  # a cold and a warm sweep
            got = solve.sweep(view, kind, 25.0, g + shift)
            assert np.array_equal(got.colsum, solve_ref.sweep(upcast, kind, 25.0, g + shift).colsum)
        assert solve.state.warm_rows == solve_ref.state.warm_rows, name


@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.int64])
def test_other_dtypes_compute_like_the_numpy_backend(dtype):
    x = (3 * scores_for("logits", (400, 23), np.float64, seed=6)).astype(dtype)
    g = dual(23)
    stats = NB.sweep(x, "logits", 2.0, g)
    assert_same_stats(stats, NP.sweep(x, "logits", 2.0, g), np.float32)
    assert np.array_equal(NB.labels(x, "logits", 2.0, g), NP.labels(x, "logits", 2.0, g))
    assert NB.codes(x, "logits", 2.0, g).dtype == NP.codes(x, "logits", 2.0, g).dtype


def test_result_does_not_depend_on_the_thread_count():
    x = scores_for("logits", (5000, 60), np.float32, seed=7)
    g = dual(60)
    original = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = NB.sweep(x, "logits", 25.0, g)
        solved_one = assign_labels(x, lam=25.0, backend="numba", tol=1e-6)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = NB.sweep(x, "logits", 25.0, g)
        solved_many = assign_labels(x, lam=25.0, backend="numba", tol=1e-6)
    finally:
        numba.set_num_threads(original)
    assert np.array_equal(one.colsum, many.colsum) and np.array_equal(one.colmax, many.colmax)
    assert np.array_equal(solved_one.state.g, solved_many.state.g)
    assert np.array_equal(solved_one.labels, solved_many.labels)


def every_pass(x: np.ndarray, kind: str, g: np.ndarray) -> list[np.ndarray]:
    """The outputs of every kernel on x (a solve's warm second sweep included)."""
    solve = NB.for_solve()
    stats = [solve.sweep(x, kind, 25.0, g + shift) for shift in (0.0, 0.25)]
    labels = NB.labels(x, kind, 25.0, g)
    check = NB.check(x, kind)
    return [
        *(part for s in stats for part in (s.colsum, s.colmax)),
        labels,
        NB.codes(x, kind, 25.0, g),
        *NB.top_labels(x, kind, 25.0, g, 4),
        np.array([NB.logprob_sum(x, kind, labels)]),
        np.array([check.min_value, check.max_value, check.max_row_sum_deviation]),
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_serial_and_parallel_kernels_give_the_same_bits(kind, monkeypatch):
    """Blocks below PARALLEL_MIN_ELEMENTS run on the calling thread, larger ones with
    helper threads claiming chunks: either way every pass gives the same bits (the chunks,
    and the order their partials merge in, depend on the shape only)."""
    numba_backend = pytest.importorskip("equipart.backends.numba")
    monkeypatch.setattr(numba_backend, "HELPER_WAIT_SHARE", np.inf)  # helpers never pause
    monkeypatch.setattr(numba_backend._HelperPause, "until", 0.0)
    x = scores_for(kind, (6000, 90), np.float32, seed=2)
    g = dual(90, dead=True)
    monkeypatch.setattr(numba_backend, "PARALLEL_MIN_ELEMENTS", x.size + 1)
    serial = every_pass(x, kind, g)
    monkeypatch.setattr(numba_backend, "PARALLEL_MIN_ELEMENTS", 0)
    for got, want in zip(every_pass(x, kind, g), serial, strict=True):
        assert np.array_equal(got, want)


def test_a_kernel_call_does_not_wait_for_busy_helpers(monkeypatch):
    """Helpers claim chunks only once they start: with every helper thread held by other
    work, the calling thread sweeps every chunk itself, with the same bits."""
    numba_backend = pytest.importorskip("equipart.backends.numba")
    monkeypatch.setattr(numba_backend, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(numba_backend._HelperPause, "until", 0.0)
    x = scores_for("logits", (6000, 90), np.float32, seed=3)
    g = dual(90)
    want = NB.sweep(x, "logits", 25.0, g)
    busy = threading.Event()
    numba_backend._TEAM.submit(busy.wait, max(1, numba.get_num_threads() - 1))
    try:
        got = NB.sweep(x, "logits", 25.0, g)
    finally:
        busy.set()
    assert np.array_equal(got.colsum, want.colsum)


def test_a_helper_descheduled_while_holding_a_chunk_pauses_the_helpers(monkeypatch):
    """A call whose caller waited for a helper's chunk longer than HELPER_WAIT_SHARE of
    its own time (as when a busy core deschedules the helper) runs the calls of the next
    HELPER_PAUSE_S seconds on the calling thread alone; then helpers are tried again."""
    numba_backend = pytest.importorskip("equipart.backends.numba")
    if numba.get_num_threads() < 2:
        pytest.skip("needs two threads")
    monkeypatch.setattr(numba_backend, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(numba_backend._HelperPause, "until", 0.0)
    lock, caller = threading.Lock(), threading.get_ident()

    def kernel(counters, n_chunks, seen):  # claims as the compiled kernels do
        last = False
        while True:
            with lock:
                c, counters[0] = counters[0], counters[0] + 1
            if c >= n_chunks:
                return last
            seen.append(threading.get_ident())
            # the caller's chunks take 1 ms; the helper is descheduled with its chunk
            time.sleep(0.001 if threading.get_ident() == caller else 0.2)
            with lock:
                last, counters[1] = counters[1] == n_chunks - 1, counters[1] + 1

    seen: list[int] = []
    numba_backend._run(kernel, 64, 1, 64, seen)
    if set(seen) == {caller}:
        pytest.skip("the helper did not start before the caller took every chunk")
    assert numba_backend._HelperPause.until > time.perf_counter()
    seen.clear()
    numba_backend._run(kernel, 64, 1, 64, seen)
    assert set(seen) == {caller}  # paused: no helper was asked
    monkeypatch.setattr(numba_backend._HelperPause, "until", 0.0)
    monkeypatch.setattr(numba_backend, "HELPER_WAIT_SHARE", np.inf)
    numba_backend._run(kernel, 64, 1, 64, seen)
    assert numba_backend._HelperPause.until == 0.0


def test_waiting_one_chunk_for_a_helper_is_not_late():
    """A helper on its core may hold the last chunk when the caller runs out: a wait of up
    to one chunk is expected and must not pause the helpers (7 chunks of 1,000 x 4,096
    scores on 2 threads: the caller ran 3 of them); a longer one, or the same wait over
    many small chunks, is a helper off its core."""
    numba_backend = pytest.importorskip("equipart.backends.numba")
    late = numba_backend._helpers_late
    chunk = 0.3e-3
    assert not late(3 * chunk, chunk, 7, 2)
    assert late(3 * chunk, 10 * chunk, 7, 2)
    assert late(32 * chunk, 10 * chunk, 64, 2)
    assert not late(32 * chunk, chunk, 64, 2)


def test_a_helper_waking_up_is_not_late():
    """A short call (a sweep of 10,000 x 100 scores: 0.29 ms of the caller's own work in
    78 chunks) may wait up to about 0.1 ms for a helper to wake up, even on an idle
    machine; that must not pause the helpers, while a helper off its core (a wait of a
    scheduler time slice, milliseconds) still does."""
    numba_backend = pytest.importorskip("equipart.backends.numba")
    late = numba_backend._helpers_late
    assert not late(0.29e-3, 0.1e-3, 78, 2)
    assert not late(0.12e-3, 0.1e-3, 78, 2)
    assert late(0.29e-3, 3e-3, 78, 2)


def test_more_threads_than_cores_gives_the_same_bits(tmp_path):
    """A fresh process with NUMBA_NUM_THREADS=3 (whatever the core count) agrees bit for bit."""
    x = scores_for("logits", (12_000, 50), np.float32, seed=8)  # above PARALLEL_MIN_ELEMENTS
    g = dual(50)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "g.npy", g)
    script = (
        "import sys, numpy as np, numba\n"
        "from equipart.backends.numba import NumbaBackend\n"
        "assert numba.get_num_threads() == 3\n"
        f"x = np.load(r'{tmp_path / 'x.npy'}'); g = np.load(r'{tmp_path / 'g.npy'}')\n"
        "s = NumbaBackend().sweep(x, 'logits', 25.0, g)\n"
        f"np.save(r'{tmp_path / 'out.npy'}', np.stack([s.colsum, s.colmax]))\n"
    )
    run_python(script, NUMBA_NUM_THREADS="3")
    other = np.load(tmp_path / "out.npy")
    here = NB.sweep(x, "logits", 25.0, g)
    assert np.array_equal(other[0], here.colsum) and np.array_equal(other[1], here.colmax)


def solve_both(x: np.ndarray, **kwargs):
    kwargs.setdefault("acceleration", "overrelax")  # the same sweeps on both backends
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return (
            assign_labels(x, backend="numba", **kwargs),
            assign_labels(x, backend="numpy", **kwargs),
        )


def assert_solves_agree(x: np.ndarray, lam: float, g_tol: float, **kwargs) -> None:
    """Same duals within g_tol, and the same labels wherever the top-2 margin exceeds it."""
    a, b = solve_both(x, lam=lam, **kwargs)
    assert a.n_iter == b.n_iter and a.converged == b.converged
    assert np.all(np.isfinite(a.state.g[np.isfinite(b.state.g)]))
    finite = np.isfinite(b.state.g)
    assert np.max(np.abs(a.state.g[finite] - b.state.g[finite])) <= g_tol
    _ind, val = NP.top_labels(x, kwargs.get("input", "logits"), lam, b.state.g, 2)
    margin = (val[:, 0] - val[:, 1]).astype(np.float64)
    clear = margin > 2 * g_tol + 1e-4 * np.abs(val[:, 0])
    assert clear.mean() > 0.5
    assert np.array_equal(a.labels[clear], b.labels[clear])


@pytest.mark.parametrize("dtype, g_tol", [(np.float32, 1e-3), (np.float64, 1e-8)])
def test_solves_agree_with_numpy_backend(dtype, g_tol):
    x = scores_for("logits", (3000, 40), dtype, seed=9)
    assert_solves_agree(x, 25.0, g_tol, tol=1e-5)
    sizes = np.full(40, 3000 // 39)
    sizes[0] = 0  # a label that must stay empty: g_0 = -inf
    sizes[1] += 3000 - sizes.sum()
    assert_solves_agree(x, 25.0, g_tol, tol=1e-5, marginals=Counts(sizes))


def test_near_uniform_float32_k3000_agrees_with_numpy_backend():
    """SeLa's float32 failure case (near-uniform softmax, lam=25, K=3000), both backends."""
    rng = np.random.default_rng(10)
    logits = 0.05 * rng.standard_normal((9000, 3000), dtype=np.float32)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    assert_solves_agree(probs, 25.0, 1e-3, input="probs", tol=1e-3)


def test_extreme_lam_float32_stays_finite_and_agrees():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    x[:, 0] += 4  # every point prefers label 0
    a, b = solve_both(x, lam=1e4, tol=1e-3, max_iter=200)
    assert np.all(np.isfinite(a.state.g)) and a.error < 0.05
    assert a.n_iter == b.n_iter
    assert abs(a.error - b.error) <= 1e-3
    counts = np.bincount(a.labels, minlength=16)
    assert counts.max() <= 1.1 * 2000 / 16 + 1, counts


@pytest.mark.parametrize("scale", [1e7, 1e8, 1e30])
def test_huge_scaled_scores_keep_finite_column_sums(scale):
    """Past |lam L| = 2^24 a float32 z has ulp > 1, and z_j - max_k z_k must still be <= 0
    exactly (else the exp overflows: NaN column sums at 3e7 before the fix), cold and warm."""
    x = (np.random.default_rng(0).standard_normal((2000, 100)) * scale).astype(np.float32)
    g = np.zeros(100)
    want = NP.sweep(x, "logits", 25.0, g).colsum
    solve = NumbaBackend().for_solve()
    for shift in (0.0, 0.1):  # a first (cold) and a second (warm) sweep; a common shift of g
        got = solve.sweep(x, "logits", 25.0, g + shift).colsum  # leaves Q unchanged
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_threads_solving_at_once_agree_with_solving_one_at_a_time():
    """Solves in several Python threads share the kernels' helper threads (each call claims
    its own chunks): they give the bits that one-at-a-time solves give."""
    x = [scores_for("logits", (3000 * (i + 1), 100), np.float32, seed=i) for i in range(3)]
    want = [assign_labels(a, lam=25.0, backend="numba", return_codes=True) for a in x]
    got: dict[int, list] = {i: [] for i in range(3)}

    def solve(i: int) -> None:
        for _ in range(3):
            got[i].append(assign_labels(x[i], lam=25.0, backend="numba", return_codes=True))

    threads = [threading.Thread(target=solve, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(3):
        assert len(got[i]) == 3
        for result in got[i]:
            assert np.array_equal(result.state.g, want[i].state.g)
            assert np.array_equal(result.codes, want[i].codes)


def test_disabled_jit_leaves_auto_on_the_numpy_backend():
    """With NUMBA_DISABLE_JIT=1 the kernels cannot run: "auto" picks NumPy for arrays and
    asking for "numba" is refused by name, instead of failing inside a kernel."""
    script = (
        "import numpy as np, equipart, pytest\n"
        "assert 'numba' not in equipart.backends.available()\n"
        "assert equipart.assign_labels(np.random.default_rng(0).random((50, 4))).converged\n"
        "with pytest.raises(ValueError, match=\"backend: 'numba' is not available here\"):\n"
        "    equipart.assign_labels(np.zeros((5, 2)), backend='numba')\n"
    )
    run_python(script, NUMBA_DISABLE_JIT="1")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_forked_after_a_solve_solves_on_the_kernels():
    """The kernels run on the backend's own helper threads (no OpenMP runtime), so a child
    forked after a parallel solve in the parent (multiprocessing's default on Linux) starts
    its own helpers and solves as the parent does, with NumPy arrays and CPU tensors."""
    pytest.importorskip("torch")
    script = (
        "import os, sys, numpy as np, torch, equipart\n"
        "x = np.random.default_rng(0).standard_normal((200_000, 20))\n"
        "want = equipart.assign_labels(x, backend='numba').labels\n"
        "pid = os.fork()\n"
        "if pid:\n"
        "    _, status = os.waitpid(pid, 0)\n"
        "    sys.exit(os.waitstatus_to_exitcode(status))\n"
        "try:\n"
        "    assert 'numba' in equipart.backends.available()\n"
        "    assert (equipart.assign_labels(x).labels == want).all()\n"
        "    assert (equipart.assign_labels(x, backend='numba').labels == want).all()\n"
        "    tensor = equipart.assign_labels(torch.from_numpy(x))\n"
        "    assert (tensor.labels.numpy() == want).all()\n"
        "except BaseException:\n"
        "    import traceback; traceback.print_exc(); os._exit(1)\n"
        "os._exit(0)\n"
    )
    run_python(script)


def test_float64_solves_stop_on_a_float64_error(monkeypatch):
    """A float64 solve of at least COARSE_MIN_ELEMENTS scores runs its coarse
    (float32-arithmetic) stage and then stops on the error of a float64 sweep: the
    returned dual's float64 column masses are within tol of the equipartition, and the
    labels are those of the float64 NumPy solve on all but near-tied rows."""
    x = scores_for("logits", (8000, 300), np.float64, seed=4)
    tol = 1e-6
    flags, sweep_with = [], NumbaBackend.sweep_with

    def spy(self, state, *args):
        flags.append(state is not None and state.coarse)
        return sweep_with(self, state, *args)

    monkeypatch.setattr(NumbaBackend, "sweep_with", spy)
    got = equipart.assign_labels(x, lam=25.0, tol=tol, backend="numba")
    assert flags[0] and not flags[-1]  # coarse first, then float64 to the end
    flags.clear()
    equipart.assign_labels(x[:1000], lam=25.0, tol=tol, backend="numba")
    assert flags and not any(flags)  # below COARSE_MIN_ELEMENTS: float64 throughout
    want = equipart.assign_labels(x, lam=25.0, tol=tol, backend="numpy")
    assert got.converged and got.error <= tol
    mass = NP.sweep(x, "logits", 25.0, got.state.g).colsum / x.shape[0]
    assert np.max(np.abs(mass * x.shape[1] - 1.0)) <= tol * (1 + 1e-9)
    assert np.mean(got.labels == want.labels) > 0.999
    # acceleration="none" keeps float64 sweeps throughout: identical to NumPy's iterates
    with pytest.warns(ConvergenceWarning):  # (5 sweeps: far from tol, on purpose)
        plain = assign_labels(x, lam=25.0, max_iter=5, acceleration="none", backend="numba")
    with pytest.warns(ConvergenceWarning):
        ref = assign_labels(x, lam=25.0, max_iter=5, acceleration="none", backend="numpy")
    np.testing.assert_allclose(plain.state.g, ref.state.g, rtol=0, atol=1e-10)


def _mean_log_softmax(x: np.ndarray, labels: np.ndarray) -> float:
    """The objective in float64, row by row: mean of log softmax(x_i)[labels_i]."""
    x = np.asarray(x, dtype=np.float64)
    top = x.max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        log_p = x - top - np.log(np.exp(x - top).sum(axis=1, keepdims=True))
    return float(log_p[np.arange(len(x)), labels].mean())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("form", ["array", "masked", "blocks", "heads"])
def test_the_objective_from_the_checks_normalisers(dtype, form, monkeypatch):
    """For logits the check reports the rows' log-normalisers (sum_i log sum_j exp x_ij)
    and the objective reads only the picked scores: the objective of the per-row
    log-softmax pass (``logprob_sum``, sums of exp in the compute precision) to 1e-12,
    and of float64 arithmetic to that precision's digits, in one array, with -inf
    masks, over streamed blocks and per head."""
    from equipart.sources import open_source
    from equipart.validation import check_all_values

    rng = np.random.default_rng(4)
    x = (3.0 * rng.standard_normal((3, 900, 40))).astype(dtype)
    if form == "masked":
        x[:, rng.random((900, 40)) < 0.2] = -np.inf
        x[:, :, 0] = 1.0  # (every row keeps a possible label)
    scores = x if form == "heads" else x[0]
    if form == "blocks":
        scores = equipart.RowBlocks(lambda: (x[0, i : i + 128] for i in range(0, 900, 128)))
    engine, source = open_source(scores, "numba")
    summaries = check_all_values(source, engine, "logits", 5.0, log_normaliser=True)
    assert all(np.isfinite(summary.log_normaliser) for summary in summaries)
    kinds = []
    picked = NumbaBackend.logprob_sum

    def spy(self, block, kind, labels):
        kinds.append(kind)
        return picked(self, block, kind, labels)

    monkeypatch.setattr(NumbaBackend, "logprob_sum", spy)
    result = assign_labels(scores, lam=5.0, backend="numba")
    monkeypatch.undo()
    assert set(kinds) == {"logprobs"}  # (the picked scores only)
    labels = np.asarray(result.labels).reshape(-1, 900)
    heads = range(len(labels))
    per_row = np.mean([NB.logprob_sum(x[h], "logits", labels[h]) / 900 for h in heads])
    assert result.objective == pytest.approx(per_row, rel=1e-12, abs=1e-12)
    exact = np.mean([_mean_log_softmax(x[h], labels[h]) for h in heads])
    assert result.objective == pytest.approx(exact, rel=1e-6 if dtype == np.float32 else 1e-12)


def test_the_normalisers_are_left_out_beyond_the_score_limit(monkeypatch):
    """Row maxima beyond +-NORMALISER_MAX_SCORE: no normaliser (the two sums would
    cancel digits), and the objective keeps its digits through the per-row pass; other
    kinds report none either, and a check that is not asked for them (sinkhorn_codes')
    does not compute them."""
    from equipart.sources import open_source
    from equipart.validation import NORMALISER_MAX_SCORE, check_all_values

    x = np.random.default_rng(5).standard_normal((500, 20))
    far = x + 4 * NORMALISER_MAX_SCORE
    for scores, kind in ((far, "logits"), (x - x.max(1, keepdims=True) - 3, "logprobs")):
        engine, source = open_source(scores, "numba")
        summary = check_all_values(source, engine, kind, 1.0, log_normaliser=True)[0]
        assert np.isnan(summary.log_normaliser)
    asked = []
    checked = NumbaBackend.check

    def spy(self, block, kind, log_normaliser=False):
        asked.append(log_normaliser)
        return checked(self, block, kind, log_normaliser)

    monkeypatch.setattr(NumbaBackend, "check", spy)
    equipart.sinkhorn_codes(x.astype(np.float32), backend="numba")
    assert asked == [False]
    monkeypatch.undo()
    near = assign_labels(x, lam=1.0, backend="numba")
    offset = assign_labels(far, lam=1.0, backend="numba")
    assert np.array_equal(np.asarray(near.labels), np.asarray(offset.labels))
    assert offset.objective == pytest.approx(near.objective, rel=1e-12)

"""Adversarial inputs: every case is refused with a named error or solved correctly.

Hypothesis draws shapes (N < K, N not divisible by K, single rows and labels), dtypes
(float16, float32, float64, int32, and bfloat16 torch tensors), ties (constant rows,
integer scores, repeated rows), masks (-1e9, the dtype's lowest value, -inf; whole rows
and labels included), extreme lam, every marginal and every rounding. A case passes when

* it raises ValueError or TypeError whose message starts with the argument at fault
  ("scores: ...", "lam: ...", "marginals: ..."); or
* it returns labels that meet their targets: ``balanced`` and ``exact`` exactly within
  the integer sizes; ``argmax`` (and ``auto`` where it kept argmax) within rounding
  noise, ``equipart.rounding.count_slack``: the solve's error plus the spread of counts
  were each row's label drawn from its row of Q, at a false-alarm rate of 1e-3 over all
  labels (for ``Relaxed``, around Q's own column masses); or with a RoundingWarning
  saying that they miss, where argmax was asked for (``auto`` balances instead);
* and codes, where returned, are finite with rows summing to 1.

No case may return a silent wrong result. Shapes stay small (N <= 48, K <= 9) so that the
module runs in well under a minute.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import equipart
from equipart import Bounds, Counts, Prior, Relaxed, RoundingWarning, Uniform
from equipart.rounding import count_slack

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NAMED = re.compile(r"^(scores|lam|eps|marginals|rounding|input|labels): ")
LAMS = [1e-30, 1e-3, 1.0, 25.0, 1e3, 1e5, 1e30]
DTYPES = ["float16", "float32", "float64", "int32", "bfloat16"]


@st.composite
def scores(draw) -> tuple[np.ndarray, str, str]:
    """(scores as float64 with any -inf, the dtype to pass them in, input kind)."""
    n_rows = draw(st.integers(1, 48))
    n_labels = draw(st.integers(1, 9))
    dtype = draw(st.sampled_from(DTYPES))
    family = draw(st.sampled_from(["normal", "constant", "integer", "repeated", "peaked"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if family == "normal":
        x = rng.standard_normal((n_rows, n_labels)) * draw(st.sampled_from([0.01, 1.0, 30.0]))
    elif family == "constant":
        x = np.full((n_rows, n_labels), draw(st.sampled_from([0.0, -3.0, 7.5])))
    elif family == "integer":
        x = rng.integers(0, 10, (n_rows, n_labels)).astype(np.float64)
    elif family == "repeated":
        x = np.tile(rng.standard_normal((1, n_labels)), (n_rows, 1))
    else:
        x = rng.standard_normal((n_rows, n_labels))
        x[np.arange(n_rows), rng.integers(0, n_labels, n_rows)] += 8.0
    if dtype == "int32":
        x = np.round(x)
    mask = draw(st.sampled_from(["none", "none", "-1e9", "lowest", "-inf"]))
    if mask != "none" and dtype != "int32":
        where = rng.random((n_rows, n_labels)) < draw(st.sampled_from([0.1, 0.4]))
        if draw(st.booleans()):
            where[rng.integers(0, n_rows)] = True  # a row with no possible label
        if draw(st.booleans()):
            where[:, rng.integers(0, n_labels)] = True  # a label possible nowhere
        fill = {"-1e9": -1e9, "-inf": -np.inf}.get(mask)
        if fill is None:
            fill = -65504.0 if dtype == "float16" else float(np.finfo(np.float32).min)
        x = np.where(where, fill, x)
    kind = draw(st.sampled_from(["logits", "logits", "logprobs", "probs"]))
    if kind != "logits":
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            top = np.max(x, axis=1, keepdims=True)
            shifted = x - np.where(np.isfinite(top), top, 0.0)
            log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        x = np.exp(log_p) if kind == "probs" else log_p
    return x, dtype, kind


def as_input(x: np.ndarray, dtype: str):
    """The scores in ``dtype``: NumPy, or a torch tensor for bfloat16."""
    if dtype == "bfloat16":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(dtype)


def host(array) -> np.ndarray:
    if hasattr(array, "detach"):
        return array.detach().float().numpy() if array.dtype.is_floating_point else array.numpy()
    return np.asarray(array)


@st.composite
def marginals(draw, n_labels: int):
    kind = draw(st.sampled_from(["uniform", "counts", "prior", "bounds", "relaxed"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "uniform":
        return Uniform()
    if kind == "prior":
        return Prior(rng.dirichlet(np.ones(n_labels)))
    if kind == "bounds":
        return Bounds.relative(draw(st.sampled_from([0.0, 0.5, 0.9])), 1.1)
    if kind == "relaxed":
        return Relaxed(Uniform(), draw(st.sampled_from([1e-3, 1.0, 1e3])))
    return "counts"  # bound to N in the test


def _refused(exc: Exception) -> None:
    assert isinstance(exc, (ValueError, TypeError)), repr(exc)
    assert NAMED.match(str(exc)), f"error does not name its argument: {exc}"


def _check_labels(result, spec, n_rows, n_labels, lam, rounding, caught) -> None:
    labels = host(result.labels).astype(np.int64)
    assert labels.shape == (n_rows,) and labels.min() >= 0 and labels.max() < n_labels
    counts = np.bincount(labels, minlength=n_labels)
    constraint = spec.bind(n_rows, n_labels, lam)
    warned = any(issubclass(w.category, RoundingWarning) for w in caught)
    if isinstance(spec, Relaxed):
        codes = host(result.codes).astype(np.float64)
        lo = hi = codes.sum(axis=0)
    else:
        lo, hi = (bound.astype(np.float64) for bound in constraint.count_bounds())
    if result.rounding in ("balanced", "exact"):
        assert not isinstance(spec, Relaxed)
        assert np.all((lo <= counts) & (counts <= hi)), (counts, lo, hi)
        return
    assert result.rounding == "argmax"
    within = np.all(
        (counts >= lo - count_slack(lo, result.error, n_labels))
        & (counts <= hi + count_slack(hi, result.error, n_labels))
    )
    if rounding == "auto" and not isinstance(spec, Relaxed):
        assert within and not warned, (counts, lo, hi)
    else:  # argmax asked for, or Relaxed: within the noise, or not silent about it
        assert within or warned, (counts, lo, hi)


@SETTINGS
@given(data=st.data(), problem=scores())
def test_assign_labels_is_right_or_refuses(data, problem):
    x, dtype, kind = problem
    n_rows, n_labels = x.shape
    spec = data.draw(marginals(n_labels))
    if spec == "counts":
        sizes = np.random.default_rng(n_rows).multinomial(n_rows, np.ones(n_labels) / n_labels)
        spec = Counts(sizes)
    rounding = data.draw(st.sampled_from(["auto", "argmax", "balanced", "exact"]))
    lam = data.draw(st.sampled_from(LAMS))
    codes = rounding != "exact"
    scores_in = as_input(x, dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = equipart.assign_labels(
                scores_in,
                lam,
                marginals=spec,
                rounding=rounding,
                input=kind,
                return_codes=codes,
                max_iter=300,
            )
        except (ValueError, TypeError, NotImplementedError) as exc:
            if isinstance(exc, NotImplementedError):
                pytest.fail(f"unnamed refusal: {exc!r}")
            _refused(exc)
            return
    allowed = (RoundingWarning, equipart.ConvergenceWarning)
    unexpected = [w for w in caught if not issubclass(w.category, allowed)]
    assert not unexpected, [str(w.message) for w in unexpected]
    _check_labels(result, spec, n_rows, n_labels, lam, rounding, caught)
    if codes:
        q = host(result.codes).astype(np.float64)
        assert np.isfinite(q).all()
        np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-4)
    assert np.isfinite(result.objective) or result.rounding == "argmax"


@pytest.mark.parametrize("lam", [lam for lam in LAMS if lam < 1e30])  # (1e30: lam's refusal)
def test_a_row_possible_only_on_closed_labels_is_refused_at_every_lam(lam):
    """Row 1 can take only labels 1, 4 and 5, which Counts closes. The refusal must not
    depend on lam: at lam 1e-30 the float limit of a mask, -max / lam, is -inf itself
    (a case hypothesis found, where the solve ran and returned NaN codes)."""
    x = np.array(
        [
            [8.0, -np.inf, 5.0, -np.inf, 3.0, 0.0],
            [-np.inf, 0.0, -np.inf, -np.inf, 6.0, 9.0],
            [5.0, -np.inf, 9.0, 7.0, 6.0, 5.0],
            [5.0, -np.inf, -np.inf, 8.0, 6.0, -np.inf],
        ]
    )
    with pytest.raises(ValueError, match=r"^scores: row 1 has .*closed: \[1, 3, 4, 5\]"):
        equipart.assign_labels(x, lam, marginals=Counts([2, 0, 2, 0, 0, 0]))


@SETTINGS
@given(data=st.data(), problem=scores())
def test_sinkhorn_codes_are_finite_or_refused(data, problem):
    x, dtype, kind = problem
    eps = data.draw(st.sampled_from([1e-30, 1e-3, 0.05, 1.0, 1e30]))
    n_iter = data.draw(st.sampled_from([1, 3]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            codes = equipart.sinkhorn_codes(as_input(x, dtype), eps, n_iter, input=kind)
        except (ValueError, TypeError) as exc:
            _refused(exc)
            return
    q = host(codes).astype(np.float64)
    assert q.shape == x.shape and np.isfinite(q).all()
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    n_rows=st.integers(1, 30),
    n_labels=st.integers(1, 12),
    heads=st.integers(1, 3),
    tied=st.booleans(),
)
def test_multi_head_rounds_like_separate_heads(n_rows, n_labels, heads, tied):
    """Stacked heads, N < K included: each head's labels are those of its own solve."""
    rng = np.random.default_rng(n_rows * 100 + n_labels)
    x = rng.integers(0, 3, (heads, n_rows, n_labels)).astype(np.float32)
    if not tied:
        x += rng.standard_normal(x.shape).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", equipart.ConvergenceWarning)
        stacked = equipart.assign_labels(x, 25.0, backend="numpy")
        used = stacked.rounding.split(",")
        used = used * heads if len(used) == 1 else used  # one name when every head agrees
        for h in range(heads):
            single = equipart.assign_labels(x[h], 25.0, backend="numpy")
            np.testing.assert_array_equal(stacked.labels[h], single.labels)
            assert used[h] == single.rounding

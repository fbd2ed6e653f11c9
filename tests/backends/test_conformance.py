"""``equipart.testing.check_backend`` on every backend installed here, and on broken
backends, each of which it must fail naming the broken method."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import backend_of, to_backend

from equipart.backends import get_backend
from equipart.backends.numpy import NumpyBackend
from equipart.testing import ConformanceReport, UnsupportedDtype, check_backend

FAST = ("float32", "float64")  # the broken backends fail within these


def _torch_cuda(host: np.ndarray, dtype: str):
    import torch

    return torch.from_numpy(np.ascontiguousarray(host)).to("cuda", getattr(torch, dtype))


def _cupy(host: np.ndarray, dtype: str):
    import cupy

    if dtype == "bfloat16":
        raise UnsupportedDtype("CuPy has no bfloat16 dtype")
    return cupy.asarray(host)


HOOKS = {"torch-cuda": _torch_cuda, "cupy": _cupy}  # (GPU arrays; the others: the default)


def test_installed_backend_conforms(backend_name: str) -> None:
    """Each backend as the registry picks it for its arrays (CPU torch tensors: the Numba
    kernels; ``torch-pure``: the torch path)."""
    probe = to_backend(np.zeros((2, 3), dtype=np.float32), backend_name)
    backend = get_backend(backend_of(backend_name), probe)
    report = check_backend(backend, to_backend=HOOKS.get(backend_name))
    assert isinstance(report, ConformanceReport)
    assert len(report.passed) > 400
    numpy_arrays = backend_name in ("numpy", "numba", "cupy")
    skipped = [what for what, _ in report.skipped]
    assert skipped == (["dtype bfloat16"] if numpy_arrays else [])
    assert any(check.startswith("assign_labels [bfloat16") for check in report.passed) != (
        numpy_arrays
    )
    for method in ("sweep", "check", "labels", "top_labels", "codes", "logprob_sum",
                   "column_logsumexp", "head", "concat", "stack", "for_solve().sweep"):
        assert any(check.startswith(method + " [") for check in report.passed), method


# -- broken backends: each must fail, naming what is broken --------------------------------


class DropsMask(NumpyBackend):
    """Its sweep reads -inf (an impossible label) as a score of 0."""

    def sweep(self, block, kind, lam, g):
        return super().sweep(np.where(np.isneginf(block), 0.0, block), kind, lam, g)


class ScaledColumnSums(NumpyBackend):
    """Its column sums are 1% high."""

    def sweep(self, block, kind, lam, g):
        stats = super().sweep(block, kind, lam, g)
        return type(stats)(stats.colsum * 1.01, stats.colmax)


class NoColumnMax(NumpyBackend):
    """Leaves colmax out (-inf) also where a column sum underflowed to 0."""

    def sweep(self, block, kind, lam, g):
        stats = super().sweep(block, kind, lam, g)
        return type(stats)(stats.colsum, np.full_like(stats.colmax, -np.inf))


class LastOfTies(NumpyBackend):
    """Breaks ties towards the higher label."""

    def labels(self, block, kind, lam, g):
        flipped = super().labels(block[:, ::-1], kind, lam, g[::-1])
        return block.shape[1] - 1 - flipped


class TopTiesReversed(NumpyBackend):
    """top_labels ordered by (-value, -index): ties keep the higher index first."""

    def top_labels(self, block, kind, lam, g, k):
        idx, val = super().top_labels(block[:, ::-1], kind, lam, g[::-1], k)
        return block.shape[1] - 1 - idx, val


class MissesInfinity(NumpyBackend):
    """Its check flags NaN only, not +inf."""

    def check(self, block, kind):
        report = super().check(np.where(np.isposinf(block), 0.0, block), kind)
        return report


class WrapsLabels(NumpyBackend):
    """Its logprob_sum reads label -1 as the last label instead of refusing it."""

    def logprob_sum(self, block, kind, labels):
        return super().logprob_sum(block, kind, np.asarray(labels) % block.shape[1])


class ForgetsLam(NumpyBackend):
    """Its column_logsumexp ignores lam."""

    def column_logsumexp(self, block, kind, lam):
        return super().column_logsumexp(block, kind, 1.0)


class WritesScores(NumpyBackend):
    """Its codes are computed in the caller's array."""

    def codes(self, block, kind, lam, g):
        out = super().codes(block, kind, lam, g)
        if block.size and block.flags.writeable:
            block[0, 0] += 1.0
        return out


class StaleSolveSweeps(NumpyBackend):
    """A solve's backend that replays its first sweep (a broken per-solve cache)."""

    replay, first = False, None

    def for_solve(self):
        solve = copy.copy(self)
        solve.replay = True
        return solve

    def sweep(self, block, kind, lam, g):
        if not self.replay:
            return super().sweep(block, kind, lam, g)
        if self.first is None:
            self.first = super().sweep(block, kind, lam, g)
        return self.first


class WrongDtypeName(NumpyBackend):
    """Reports float16 scores as float32 (their compute precision)."""

    def shape_dtype(self, scores):
        shape, dtype = super().shape_dtype(scores)
        return shape, np.dtype(np.float32) if dtype == np.float16 else dtype


class SkewedHeads(NumpyBackend):
    """head(i) returns head i + 1 (wrapping)."""

    def head(self, scores, index):
        return scores[(index + 1) % scores.shape[0]]


class LabelsInFloat(NumpyBackend):
    """Returns labels as float64 rather than int64."""

    def labels(self, block, kind, lam, g):
        return super().labels(block, kind, lam, g).astype(np.float64)


BROKEN = [
    (DropsMask, "sweep", "masked"),
    (ScaledColumnSums, "sweep", "colsum"),
    (NoColumnMax, "sweep", "colmax underflow"),
    (LastOfTies, "labels", "exact ties"),
    (TopTiesReversed, "top_labels", "exact ties"),
    (MissesInfinity, "check", "finite_or_neg_inf"),
    (WrapsLabels, "logprob_sum", "expected ValueError"),
    (ForgetsLam, "column_logsumexp", "float32"),
    (WritesScores, "codes", "modified the scores"),
    (StaleSolveSweeps, r"for_solve\(\).sweep", "sweep 2 of a solve"),
    (WrongDtypeName, "shape_dtype", "expected 'float16'"),
    (SkewedHeads, "head", "head 0"),
    (LabelsInFloat, "labels", "expected int64"),
]


@pytest.mark.parametrize(
    ("broken", "method", "detail"), BROKEN, ids=[b[0].__name__ for b in BROKEN]
)
def test_broken_backend_fails_naming_the_method(broken, method: str, detail: str) -> None:
    backend = type(broken.__name__, (broken,), {"name": "broken"})()
    dtypes = ("float16", *FAST) if broken is WrongDtypeName else FAST
    with pytest.raises(AssertionError, match=rf"check_backend\('broken'\): {method} \[") as info:
        check_backend(backend, dtypes=dtypes)
    assert detail in str(info.value)


# -- arguments and the report --------------------------------------------------------------


def test_a_skipped_dtype_is_recorded_with_its_reason() -> None:
    def hook(host: np.ndarray, dtype: str) -> np.ndarray:
        if dtype == "float16":
            raise UnsupportedDtype("no half precision here")
        return host

    report = check_backend("numpy", dtypes=("float16", "float32"), to_backend=hook)
    assert report.skipped == [("dtype float16", "to_backend: no half precision here")]
    assert not any("float16" in check for check in report.passed)
    assert "1 skipped" in str(report) and "no half precision here" in str(report)


def test_a_backend_refusing_the_dtype_in_shape_dtype_is_skipped() -> None:
    class NoHalf(NumpyBackend):
        name = "no-half"

        def shape_dtype(self, scores):
            if scores.dtype == np.float16:
                raise TypeError("scores: float16 is not read; pass float32")
            return super().shape_dtype(scores)

    report = check_backend(NoHalf(), dtypes=("float16", "float64"))
    assert report.skipped == [("dtype float16", "shape_dtype: scores: float16 is not read; "
                                                 "pass float32")]


def test_reading_no_dtype_fails() -> None:
    with pytest.raises(AssertionError, match="reads none of the dtypes"):
        check_backend("numpy", dtypes=("bfloat16",))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match=r"backend: expected an equipart\.backends\.Backend"):
        check_backend(NumpyBackend)
    with pytest.raises(ValueError, match="unknown backend"):
        check_backend("no-such-backend")
    with pytest.raises(ValueError, match="dtypes: expected"):
        check_backend("numpy", dtypes=("float8",))


def test_runs_repeat_with_the_same_seed() -> None:
    a = check_backend("numpy", dtypes=("float64",), rng=3)
    b = check_backend("numpy", dtypes=("float64",), rng=np.random.default_rng(3))
    assert a.passed == b.passed


def test_the_docstring_example_runs() -> None:
    import doctest

    import equipart.testing

    failures, tried = doctest.testmod(equipart.testing, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0



def test_results_must_stay_in_the_backends_library() -> None:
    pytest.importorskip("torch")
    from equipart.backends.torch import TorchBackend

    class HostLabels(TorchBackend):
        name = "broken"

        def labels(self, block, kind, lam, g):
            return super().labels(block, kind, lam, g).numpy()

    with pytest.raises(AssertionError, match=r"'broken'\): labels \[float32.*numpy ndarray"):
        check_backend(HostLabels(kernel="torch"), dtypes=("float32",))

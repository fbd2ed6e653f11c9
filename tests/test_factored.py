"""Factored scores (features x prototypes): the same solves as on the dense matrix, on
every backend, in bounded memory, with every bad input refused at the boundary."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from conftest import backend_of, to_backend, to_numpy

import equipart
from equipart import Bounds, Counts, Factored, assign_labels, sinkhorn_codes

METRICS = ("dot", "cosine", "sqeuclidean")


@pytest.fixture
def backend_name(backend_name):
    """conftest's backends, less JAX: Factored reads NumPy, torch and CuPy factors."""
    if backend_name == "jax":
        pytest.skip("Factored reads NumPy, torch and CuPy factors, not JAX arrays")
    return backend_name


def _factors(n_rows=600, n_labels=12, n_features=8, heads=None, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n_rows, n_features)).astype(dtype)
    shape = (n_labels, n_features) if heads is None else (heads, n_labels, n_features)
    return features, rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("metric", METRICS)
def test_scores_are_the_metric_of_the_factors(metric):
    features, prototypes = _factors(heads=2, dtype=np.float64)
    dense = Factored(features, prototypes, metric=metric, scale=3.0).to_dense()
    assert dense.shape == (2, 600, 12)
    for head in range(2):
        c = prototypes[head]
        if metric == "dot":
            expected = 3.0 * features @ c.T
        elif metric == "cosine":
            unit = features / np.linalg.norm(features, axis=1, keepdims=True)
            expected = 3.0 * unit @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T
        else:  # -scale |x - c|^2 up to the row term scale |x|^2
            squared = ((features[:, None, :] - c[None]) ** 2).sum(-1)
            expected = -3.0 * squared + 3.0 * (features**2).sum(1)[:, None]
        np.testing.assert_allclose(dense[head], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rounding", ["argmax", "balanced"])
@pytest.mark.parametrize("metric", METRICS)
def test_labels_equal_the_dense_solve(backend_name, metric, rounding):
    features, prototypes = _factors(n_labels=70)  # K >= 64: the Numba backend's warm sweeps
    factored = Factored(
        to_backend(features, backend_name), to_backend(prototypes, backend_name), metric=metric
    )
    dense = factored.to_dense()
    options = {"backend": backend_of(backend_name), "rounding": rounding, "tol": 1e-6}
    lam = 10.0 if metric == "cosine" else 0.5
    got = assign_labels(factored, lam, **options)
    want = assign_labels(dense, lam, **options)
    np.testing.assert_array_equal(to_numpy(got.labels), to_numpy(want.labels))
    np.testing.assert_allclose(got.state.g, want.state.g, atol=1e-5)
    assert got.n_iter == want.n_iter
    assert got.objective == pytest.approx(want.objective, rel=1e-6)
    assert type(got.labels) is type(want.labels)


def test_multi_head_bands_and_counts_equal_the_dense_solve(backend_name):
    features, prototypes = _factors(heads=3, n_labels=10)
    factored = Factored(
        to_backend(features, backend_name), to_backend(prototypes, backend_name), scale=2.0
    )
    dense = factored.to_dense()
    sizes = np.array([30, 90, 60, 60, 60, 60, 60, 60, 60, 60])
    for marginals in (Counts(sizes), Bounds.relative(0.8, 1.2)):
        options = {"backend": backend_of(backend_name), "marginals": marginals, "tol": 1e-6}
        got = assign_labels(factored, 1.0, rounding="balanced", **options)
        want = assign_labels(dense, 1.0, rounding="balanced", **options)
        np.testing.assert_array_equal(to_numpy(got.labels), to_numpy(want.labels))
        assert to_numpy(got.labels).shape == (3, 600)


def test_codes_and_swav_codes_equal_the_dense_ones(backend_name):
    features, prototypes = _factors(n_labels=20)
    factored = Factored(
        to_backend(features, backend_name), to_backend(prototypes, backend_name),
        metric="cosine", scale=10.0,
    )  # fmt: skip
    dense = factored.to_dense()
    backend = backend_of(backend_name)
    got = to_numpy(sinkhorn_codes(factored, 0.05, 3, backend=backend))
    want = to_numpy(sinkhorn_codes(dense, 0.05, 3, backend=backend))
    np.testing.assert_allclose(got, want, atol=1e-5)
    solved = assign_labels(factored, 2.0, return_codes=True, backend=backend)
    reference = assign_labels(dense, 2.0, return_codes=True, backend=backend)
    np.testing.assert_allclose(to_numpy(solved.codes), to_numpy(reference.codes), atol=1e-5)


@pytest.mark.parametrize("layout", ["fortran", "strided", "memmap", "float64"])
def test_any_layout_of_the_features_gives_the_same_labels(layout, tmp_path):
    features, prototypes = _factors(n_labels=9)
    expected = assign_labels(Factored(features, prototypes), 1.0, tol=1e-7).labels
    if layout == "fortran":
        given = np.asfortranarray(features)
    elif layout == "strided":
        wide = np.zeros((features.shape[0], 2 * features.shape[1]), dtype=np.float32)
        wide[:, ::2] = features
        given = wide[:, ::2]
    elif layout == "memmap":
        np.save(tmp_path / "features.npy", features)
        given = np.load(tmp_path / "features.npy", mmap_mode="r")
    else:
        given, prototypes = features.astype(np.float64), prototypes.astype(np.float64)
    labels = assign_labels(Factored(given, prototypes), 1.0, tol=1e-7).labels
    np.testing.assert_array_equal(labels, expected)


def test_fused_sweep_equals_the_blocks_handed_to_the_backend():
    """The Numba backend's fused pass and the NumPy backend's computed blocks agree."""
    features, prototypes = _factors(n_rows=3000, n_labels=80)
    factored = Factored(features, prototypes, metric="sqeuclidean", block_rows=512)
    assert factored.open("numba")[0]._fused is not None  # the fused passes do run
    fused = assign_labels(factored, 0.3, tol=1e-6, backend="numba", rounding="balanced")
    blocks = assign_labels(factored, 0.3, tol=1e-6, backend="numpy", rounding="balanced")
    np.testing.assert_array_equal(fused.labels, blocks.labels)
    np.testing.assert_allclose(fused.state.g, blocks.state.g, atol=1e-4)


def test_torch_half_precision_and_non_fused_paths():
    torch = pytest.importorskip("torch")
    from equipart.backends.torch import TorchBackend

    features, prototypes = _factors(n_labels=16)
    reference = assign_labels(Factored(features, prototypes), 1.0, tol=1e-6).labels
    x, c = torch.from_numpy(features), torch.from_numpy(prototypes)
    pure = assign_labels(Factored(x, c), 1.0, tol=1e-6, backend=TorchBackend(kernel="torch"))
    np.testing.assert_array_equal(pure.labels.numpy(), reference)
    half = assign_labels(Factored(x.bfloat16(), c.bfloat16()), 1.0, rounding="balanced")
    assert isinstance(half.labels, torch.Tensor)
    assert np.bincount(half.labels.numpy(), minlength=16).max() <= 38  # ceil(600 / 16)


def _traced_peak(solve) -> int:
    tracemalloc.start()
    try:
        solve()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_solve_memory_is_the_factors_plus_a_block():
    """tracemalloc's peak during an argmax solve stays a fraction of the N x K array,
    which is never formed; with balanced rounding (whose host candidates are N x width, up
    to N x K for soft duals) it is the same solve's peak on the dense array plus a block."""
    features, prototypes = _factors(n_rows=40_000, n_labels=250, n_features=16)
    dense_bytes = 40_000 * 250 * 4
    factored = Factored(features, prototypes, metric="sqeuclidean", block_rows=1_000)
    dense = factored.to_dense()
    for backend in ("numba", "numpy"):
        argmax = {"backend": backend, "rounding": "argmax"}
        assign_labels(factored, 0.2, max_iter=2, tol=1.0, **argmax)  # compile, warm up
        peak = _traced_peak(lambda o=argmax: assign_labels(factored, 0.2, **o))
        assert peak < 0.25 * dense_bytes, (backend, peak / dense_bytes)
        options = {"backend": backend, "rounding": "balanced"}
        peak = _traced_peak(lambda o=options: assign_labels(factored, 3.0, **o))
        reference = _traced_peak(lambda o=options: assign_labels(dense, 3.0, **o))
        assert peak < reference + 2 * 1_000 * 250 * 4, (backend, peak, reference)


def test_inputs_are_not_modified():
    features, prototypes = _factors(heads=2)
    before = features.copy(), prototypes.copy()
    for metric in METRICS:
        factored = Factored(features, prototypes, metric=metric, scale=0.5)
        assign_labels(factored, 2.0, rounding="balanced", return_codes=True)
        sinkhorn_codes(factored)
    np.testing.assert_array_equal(features, before[0])
    np.testing.assert_array_equal(prototypes, before[1])


def test_factored_repr_shape_and_export():
    features, prototypes = _factors(heads=4)
    factored = equipart.Factored(features, prototypes, metric="cosine")
    assert factored.shape == (4, 600, 12)
    assert factored.dtype == "float32"
    assert "cosine" in repr(factored)


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"features": [[1.0, 2.0]]}, TypeError, "features: expected a NumPy array"),
        ({"features": np.ones(5, np.float32)}, ValueError, "features: expected a 2-D"),
        ({"features": np.ones((5, 0), np.float32)}, ValueError, "features: expected a 2-D"),
        ({"features": np.ones((5, 8), np.int64)}, TypeError, "features: expected a floating"),
        ({"prototypes": np.ones((3, 7), np.float32)}, ValueError, "prototypes: 7 features"),
        ({"prototypes": np.ones((3, 8), np.float64)}, TypeError, "prototypes: dtype float64"),
        ({"prototypes": np.ones((0, 8), np.float32)}, ValueError, "prototypes: expected"),
        ({"prototypes": np.ones((2, 2, 3, 8), np.float32)}, ValueError, "prototypes: expected"),
        ({"metric": "euclidean"}, ValueError, "metric: expected one of"),
        ({"metric": None}, TypeError, "metric: expected one of"),
        ({"scale": 0.0}, ValueError, "scale: expected a finite number > 0"),
        ({"scale": np.inf}, ValueError, "scale: expected a finite number > 0"),
        ({"scale": "2"}, TypeError, "scale: expected a positive real number"),
        ({"block_rows": 0}, ValueError, "block_rows: expected an integer >= 1"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(change, error, message):
    features, prototypes = _factors()
    arguments = {"features": features, "prototypes": prototypes, **change}
    options = {k: v for k, v in arguments.items() if k not in ("features", "prototypes")}
    with pytest.raises(error, match=message):
        Factored(arguments["features"], arguments["prototypes"], **options)


def test_non_finite_values_and_zero_vectors_are_refused():
    features, prototypes = _factors()
    features[3, 1] = np.nan
    with pytest.raises(ValueError, match="features: contains NaN or infinite"):
        Factored(features, prototypes)
    features, prototypes = _factors()
    prototypes[0, 0] = np.inf
    with pytest.raises(ValueError, match="prototypes: contains NaN or infinite"):
        Factored(features, prototypes)
    features[7] = 0.0
    with pytest.raises(ValueError, match=r"features: 1 vector\(s\) of zero norm \(at \(7,\)\)"):
        Factored(features, np.ones_like(prototypes), metric="cosine")
    Factored(features, np.ones_like(prototypes), metric="dot")  # a zero vector has dot products


def test_mixed_libraries_are_refused():
    torch = pytest.importorskip("torch")
    features, prototypes = _factors()
    with pytest.raises(TypeError, match=r"prototypes: a torch.Tensor, but features are"):
        Factored(features, torch.from_numpy(prototypes))
    with pytest.raises(TypeError, match=r"backend: 'numba' does not read torch.Tensor"):
        assign_labels(Factored(torch.from_numpy(features), torch.from_numpy(prototypes)),
                      backend="numba")  # fmt: skip


def test_exact_rounding_and_empty_features_are_refused():
    features, prototypes = _factors()
    with pytest.raises(ValueError, match="scores: rounding='exact' solves a dense LP"):
        assign_labels(Factored(features, prototypes), rounding="exact")
    with pytest.raises(ValueError, match="scores: every dimension must be non-empty"):
        assign_labels(Factored(features[:0], prototypes))


def test_overflowing_scores_are_refused_by_the_solve():
    features, prototypes = _factors()
    huge = Factored(features * 1e20, prototypes * 1e20)  # finite factors, inf dot products
    with pytest.raises(ValueError, match=r"scores: contains NaN or \+inf values"):
        assign_labels(huge)

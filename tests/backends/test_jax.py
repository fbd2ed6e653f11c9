"""The JAX backend (an entry-point plugin written against the array-API passes): float64
honesty, dtypes of its results, and the registry's "auto" for JAX arrays. Its agreement
with the NumPy backend is ``check_backend``'s (tests/backends/test_conformance.py), and
the cross-backend suites run on it through conftest's ``backend_name``."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import equipart  # noqa: E402
from equipart.backends import get_backend  # noqa: E402
from equipart.backends.jax import JaxBackend, _x64  # noqa: E402

JAX = JaxBackend()


def _scores(dtype: str) -> jax.Array:
    x = np.random.default_rng(0).standard_normal((120, 9)) * 2
    with _x64(True):
        return jnp.asarray(x, dtype=getattr(jnp, dtype))


def test_float64_scores_are_computed_in_float64_with_x64_disabled():
    assert not jax.config.jax_enable_x64  # JAX's default: 32-bit types
    scores = _scores("float64")
    assert scores.dtype == jnp.float64
    got = equipart.assign_labels(scores, lam=5.0, tol=1e-10, return_codes=True)
    want = equipart.assign_labels(np.asarray(scores), lam=5.0, tol=1e-10, backend="numpy",
                                  return_codes=True)
    assert got.codes.dtype == jnp.float64 and got.labels.dtype == jnp.int64
    np.testing.assert_allclose(got.state.g, want.state.g, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(got.codes), want.codes, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(got.labels), want.labels)


def test_results_keep_their_dtypes():
    scores = _scores("bfloat16")
    g = np.zeros(9)
    assert JAX.shape_dtype(scores) == ((120, 9), "bfloat16")
    assert JAX.labels(scores, "logits", 5.0, g).dtype == jnp.int64
    assert JAX.codes(scores, "logits", 5.0, g).dtype == jnp.float32
    indices, values = JAX.top_labels(scores, "logits", 5.0, g, 3)
    assert indices.dtype == jnp.int64 and values.dtype == jnp.float32
    assert JAX.to_numpy(scores).dtype == np.float32  # widened, exactly
    for host in (np.arange(4), np.linspace(0.0, 1.0, 3)):
        moved = JAX.from_numpy(host, scores)
        assert moved.dtype == host.dtype and np.array_equal(np.asarray(moved), host)


def test_auto_picks_the_jax_backend_for_jax_arrays():
    assert isinstance(get_backend("auto", _scores("float32")), JaxBackend)
    assert get_backend("jax", _scores("float32")) is not None


def test_empty_blocks():
    with _x64(True):
        empty = jnp.zeros((0, 4), dtype=jnp.float32)
    assert JAX.labels(empty, "logits", 1.0, np.zeros(4)).shape == (0,)
    assert JAX.codes(empty, "logits", 1.0, np.zeros(4)).shape == (0, 4)
    assert JAX.logprob_sum(empty, "logits", JAX.from_numpy(np.zeros(0, np.int64), empty)) == 0.0

"""The quasi-Newton step's arithmetic (``equipart._lbfgs``), plain and compiled.

The plain functions are checked against the definitions they implement (the gradient and
metric formulas, and the two-loop recursion against dense BFGS updates of the inverse
Hessian); the compiled ones (where Numba is installed) against the plain ones; and solves
with either arithmetic against each other.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import equipart._lbfgs as lbfgs
from equipart import ConvergenceWarning, Relaxed, Uniform, assign_labels, solver

MEMORY = 4


def arithmetics() -> list:
    compiled = lbfgs.compiled()
    return [lbfgs.PLAIN] if compiled is None else [lbfgs.PLAIN, compiled]


ARITHMETICS = pytest.mark.parametrize(
    "arithmetic", arithmetics(), ids=["plain", "compiled"][: len(arithmetics())]
)


def swept(n_labels: int, seed: int) -> tuple[np.ndarray, ...]:
    """(g, target, log_mass, log_aim) with a masked label, a label without a target, and
    labels whose mass is within 1e-9 nats of their aim."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(n_labels)
    target = g + 0.1 * rng.standard_normal(n_labels)
    log_aim = np.log(rng.uniform(50, 150, n_labels))
    log_mass = log_aim + 0.3 * rng.standard_normal(n_labels)
    log_mass[:3] = log_aim[:3] + np.array([0.0, 1e-9, -3e-10])
    g[3] = target[3] = log_mass[3] = -np.inf  # masked
    log_aim[4] = -np.inf  # no target
    return g, target, log_mass, log_aim


@ARITHMETICS
def test_point_is_the_gradient_and_the_sinkhorn_metric(arithmetic):
    g, target, log_mass, log_aim = swept(40, 0)
    rho = 0.7
    free, x, gradient, metric, log_masses, finite = arithmetic.point(
        g, target, log_mass, log_aim, rho
    )
    want_free = np.ones(40, dtype=bool)
    want_free[[3, 4]] = False
    assert finite and np.array_equal(free, want_free)
    np.testing.assert_array_equal(x, g[free])
    mass, aim = np.exp(log_mass[free]), np.exp(log_aim[free])
    np.testing.assert_allclose(gradient, mass - aim, rtol=1e-12, atol=1e-12)
    # W_j = rho log(a_j / m_j) / (a_j - m_j), and rho / a_j where m_j = a_j
    gap = log_mass[free] - log_aim[free]
    wide = np.abs(gap) > 1e-6
    want = np.where(wide, rho * -gap / np.where(wide, aim - mass, 1.0), rho / aim)
    np.testing.assert_allclose(metric, want, rtol=1e-8)
    # -W grad is the marginal's column step rho log(a / m)
    np.testing.assert_allclose(-metric * gradient, rho * -gap, rtol=1e-8, atol=1e-15)
    np.testing.assert_array_equal(log_masses, np.stack([log_mass[free], log_aim[free]]))


@ARITHMETICS
def test_point_reports_masses_beyond_float_range(arithmetic):
    g, target, log_mass, log_aim = swept(10, 1)
    log_mass[5] = 800.0  # e^800 counts: no float64 gradient
    assert not arithmetic.point(g, target, log_mass, log_aim, 1.0)[-1]


def dense_inverse_hessian(pairs: list, h0: np.ndarray) -> np.ndarray:
    """BFGS updates of the inverse Hessian from h0, oldest pair first:
    H <- (I - rho s y^T) H (I - rho y s^T) + rho s s^T."""
    h = h0
    eye = np.eye(len(h0))
    for s, y in pairs:
        rho = 1.0 / (s @ y)
        h = (eye - rho * np.outer(s, y)) @ h @ (eye - rho * np.outer(y, s)) + rho * np.outer(s, s)
    return h


def memory_of(arithmetic, steps: list) -> tuple[np.ndarray, np.ndarray, int, int]:
    """A ring of MEMORY slots after learning ``steps`` (each (x, gradient, log_masses))."""
    n_free = steps[0][0].shape[0]
    pairs, inverse = np.empty((2, MEMORY, n_free)), np.empty(MEMORY)
    count, newest = 0, 0
    for old, new in itertools.pairwise(steps):
        count, newest = arithmetic.learn(pairs, inverse, count, newest, new, old, 1.0)
    return pairs, inverse, count, newest


def convex_steps(n_free: int, n_steps: int, seed: int) -> list:
    """Points of a strictly convex quadratic (gradient A x): every pair has s.y > 0."""
    rng = np.random.default_rng(seed)
    half = rng.standard_normal((n_free, n_free))
    hessian = half @ half.T + n_free * np.eye(n_free)
    xs = rng.standard_normal((n_steps, n_free))
    log_masses = np.zeros((2, n_free))
    return [(x, hessian @ x, log_masses + 0.01 * k) for k, x in enumerate(xs)]


@ARITHMETICS
@pytest.mark.parametrize("n_steps", [2, 4, 9])  # one pair, a full ring, a ring wrapped twice
def test_descent_is_the_bfgs_inverse_hessian_of_the_newest_pairs(arithmetic, n_steps):
    n_free = 7
    steps = convex_steps(n_free, n_steps, seed=n_steps)
    pairs, inverse, count, newest = memory_of(arithmetic, steps)
    assert count == min(n_steps - 1, MEMORY)
    kept = [(new[0] - old[0], new[1] - old[1]) for old, new in itertools.pairwise(steps)]
    kept = kept[-MEMORY:]
    rng = np.random.default_rng(0)
    gradient, metric = rng.standard_normal(n_free), rng.uniform(0.5, 2.0, n_free)
    s, y = kept[-1]
    gamma = max(1.0, (s @ y) / (y @ (metric * y)))
    want = -dense_inverse_hessian(kept, gamma * np.diag(metric)) @ gradient
    d, slope = arithmetic.descent(pairs, inverse, count, newest, gradient, metric)
    np.testing.assert_allclose(d, want, rtol=1e-10, atol=1e-12)
    assert slope == pytest.approx(gradient @ want, rel=1e-10)


@ARITHMETICS
def test_learn_skips_non_convex_pairs_and_forgets_far_moves(arithmetic):
    x0, gradient0, log_masses0 = np.zeros(3), np.zeros(3), np.zeros((2, 3))
    pairs, inverse = np.empty((2, MEMORY, 3)), np.empty(MEMORY)
    old = (x0, gradient0, log_masses0)
    count, newest = arithmetic.learn(
        pairs, inverse, 0, 0, (np.ones(3), np.ones(3), log_masses0 + 0.5), old, 1.0
    )
    assert (count, newest) == (1, 1)
    np.testing.assert_array_equal(pairs[:, 1], np.ones((2, 3)))
    assert inverse[1] == pytest.approx(1 / 3)
    # s.y <= 0: the memory stays as it was
    flat = (np.ones(3), -np.ones(3), log_masses0)
    assert arithmetic.learn(pairs, inverse, count, newest, flat, old, 1.0) == (1, 1)
    # a log mass moved by more than 1 nat: the memory empties
    far = (np.ones(3), np.ones(3), log_masses0 + np.array([[0.0, 0.0, 1.5], [0.0] * 3]))
    assert arithmetic.learn(pairs, inverse, count, newest, far, old, 1.0)[0] == 0


@pytest.mark.skipif(lbfgs.compiled() is None, reason="needs Numba")
def test_compiled_and_plain_arithmetic_agree():
    compiled = lbfgs.compiled()
    for seed in range(5):
        args = (*swept(60, seed), 1.0)
        for got, want in zip(compiled.point(*args), lbfgs.PLAIN.point(*args), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-13)
        steps = convex_steps(9, 8, seed)
        rings = [memory_of(arithmetic, steps) for arithmetic in (compiled, lbfgs.PLAIN)]
        assert rings[0][2:] == rings[1][2:]
        for got, want in zip(rings[0][:2], rings[1][:2], strict=True):
            np.testing.assert_allclose(got[..., : rings[0][2]], want[..., : rings[0][2]])
        gradient, metric = steps[-1][1], np.full(9, 0.5)
        d_c, slope_c = compiled.descent(*rings[0], gradient, metric)
        d_p, slope_p = lbfgs.PLAIN.descent(*rings[1], gradient, metric)
        np.testing.assert_allclose(d_c, d_p, rtol=1e-12)
        assert slope_c == pytest.approx(slope_p, rel=1e-12)


@pytest.mark.skipif(lbfgs.compiled() is None, reason="needs Numba")
@pytest.mark.parametrize("marginals", [Uniform(), Relaxed(Uniform(), tau=0.5)], ids=repr)
def test_solves_with_plain_and_compiled_arithmetic_agree(monkeypatch, marginals):
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(3000, 40)) + 2 * rng.normal(size=40)
    kwargs = dict(marginals=marginals, tol=1e-6, max_iter=2000, rounding="argmax")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        compiled = assign_labels(scores, 25.0, **kwargs)
        monkeypatch.setattr(lbfgs, "compiled", lambda: None)
        plain = assign_labels(scores, 25.0, **kwargs)
    assert plain.n_iter > 5  # the quasi-Newton steps ran
    assert abs(plain.n_iter - compiled.n_iter) <= 2
    np.testing.assert_array_equal(plain.labels, compiled.labels)
    np.testing.assert_allclose(plain.state.g, compiled.state.g, rtol=0, atol=1e-9)


def test_a_numba_that_cannot_compile_leaves_the_plain_arithmetic(monkeypatch):
    numba = pytest.importorskip("numba")

    def no_cache(*args, **kwargs):
        raise RuntimeError("cannot cache function: no locator available")

    monkeypatch.setattr(numba, "njit", no_cache)
    lbfgs.compiled.cache_clear()
    try:
        assert lbfgs.compiled() is None
        assert solver._arithmetic() is lbfgs.PLAIN
    finally:
        lbfgs.compiled.cache_clear()

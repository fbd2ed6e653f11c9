"""The dual tolerance of docs/design.md, for tests that compare converged solves.

Two solves of one problem converged at ``tol`` (on other backends, rank counts or
streaming blocks, or with other step rules) have duals within 2 tol' / (1 - r) of each
other up to a common shift, tol' = -log(1 - tol) and r the linear rate of plain steps on
the problem; their labels are equal on every row whose margin exceeds twice that.
"""

from __future__ import annotations

import numpy as np
from conftest import to_numpy


def plain_rate(history: tuple[float, ...], low: float = 1e-7, high: float = 1e-2) -> float:
    """The linear rate r of plain steps: the mean factor per sweep by which a plain solve's
    error fell from its first error below ``high`` to its last above ``low`` (above the
    round-off floor of the sweep, where the error stops falling)."""
    errors = np.asarray(history)
    inside = np.flatnonzero((errors <= high) & (errors >= low))
    first, last = inside[0], inside[-1]
    assert last - first >= 5, "too few plain sweeps between high and low to read a rate"
    rate = float((errors[last] / errors[first]) ** (1.0 / (last - first)))
    assert 0.0 < rate < 1.0, rate
    return rate


def dual_tolerance(tol: float, rate: float) -> float:
    """docs/design.md: two solves converged at ``tol`` have duals within 2 tol' / (1 - r)
    of each other (tol' = -log(1 - tol), the largest log step a converged dual has left),
    up to a common shift."""
    return 2.0 * -np.log1p(-tol) / (1.0 - rate)


def assert_same_solution(result, reference, scores, lam, bound) -> None:
    """Duals within ``bound`` after removing their mean difference, and labels equal,
    with every row's margin (best minus second of lam L_i + g) above 2 bound, so that no
    label could flip within the bound (the test is not vacuous)."""
    g, want = np.atleast_2d(result.state.g), np.atleast_2d(reference.state.g)
    difference = g - want
    difference -= difference.mean(axis=-1, keepdims=True)
    assert np.abs(difference).max() <= bound, (np.abs(difference).max(), bound)
    z = lam * np.atleast_3d(scores.T).T + want[:, None, :]  # (H, N, K)
    top = np.sort(z, axis=-1)
    assert (top[..., -1] - top[..., -2]).min() > 2 * bound
    np.testing.assert_array_equal(to_numpy(result.labels), reference.labels)

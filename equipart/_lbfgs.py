"""The vector arithmetic of the solver's quasi-Newton step, plain or compiled.

``equipart.solver._QuasiNewton`` keeps the step's logic (the line search, the restarts,
the fallback); the arithmetic on K-vectors lives here, in three functions written in
NumPy's array style so that the same source runs as plain NumPy (``PLAIN``) and compiled
by Numba (``compiled()``; the solver uses it where a backend has imported Numba, see
``equipart.solver._arithmetic``). Per sweep the step is some 60 array
operations on K-vectors: as NumPy calls they cost 0.1-0.2 ms of call overhead at K = 100
to 3,000, whatever N; compiled they are three calls and two NumPy transcendentals.

Vectors are over the step's *free* labels (finite dual, column step, masses and aim); the
L-BFGS memory is a ring of m (s, y) pairs, written in place (``learn``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np


def free_point(
    g: np.ndarray,
    target: np.ndarray,
    log_mass: np.ndarray,
    log_aim: np.ndarray,
    aim: np.ndarray,
    growth: np.ndarray,
    rho: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """A swept dual's coordinates on its free labels (``Arithmetic.point``), given
    aim = exp(log a) and growth = expm1(log m - log a) over all K labels."""
    free = np.isfinite(g) & np.isfinite(target) & np.isfinite(log_aim) & np.isfinite(log_mass)
    log_m, log_a, aim, growth = log_mass[free], log_aim[free], aim[free], growth[free]
    gap = log_m - log_a
    gradient = aim * growth
    small = np.abs(gap) < 1e-8
    w = rho * np.where(small, (1.0 - gap / 2) / aim, gap / np.where(small, 1.0, gradient))
    finite = bool(np.isfinite(gradient).all() and np.isfinite(w).all())
    return free, g[free], gradient, w, np.stack((log_m, log_a)), finite


def learn(
    pairs: np.ndarray,
    inverse: np.ndarray,
    count: int,
    newest: int,
    new: tuple[np.ndarray, np.ndarray, np.ndarray],
    old: tuple[np.ndarray, np.ndarray, np.ndarray],
    local: float,
) -> tuple[int, int]:
    """Learn the curvature of the step from the kept dual ``old`` to ``new``, in place.

    The L-BFGS memory is a ring of m slots: ``pairs`` (2, m, F) holds the changes of x (s)
    and of the gradient (y), ``inverse`` (m,) their 1 / s.y; ``count`` pairs are held, the
    newest in slot ``newest``. ``new`` and ``old`` are (x, gradient, log_masses).
    Returns the new (count, newest): 0 pairs where some log mass (or aim) moved more than
    ``local`` nats (such a pair is not local curvature); unchanged where s.y is not
    positive (to 1e-10 relative); else (s, y) written over the oldest slot.
    """
    n_free, size = new[0].shape[0], inverse.shape[0]
    if n_free and np.abs(new[2] - old[2]).max() > local:
        return 0, newest
    s, y = new[0] - old[0], new[1] - old[1]
    curvature = np.dot(s, y)
    if not curvature > 1e-10 * np.sqrt(np.dot(s, s) * np.dot(y, y)):
        return count, newest
    slot = (newest + 1) % size
    pairs[0, slot], pairs[1, slot], inverse[slot] = s, y, 1.0 / curvature
    return min(count + 1, size), slot


def descent(
    pairs: np.ndarray,
    inverse: np.ndarray,
    count: int,
    newest: int,
    gradient: np.ndarray,
    w: np.ndarray,
) -> tuple[np.ndarray, float]:
    """d = -H grad by the two-loop recursion (Nocedal 1980) and the slope grad.d.

    H is the L-BFGS inverse Hessian of the ring's ``count`` >= 1 pairs (see ``learn``)
    built on the diagonal gamma W, gamma = max(1, s.y / y.W y) of the newest pair. d is a
    descent direction where the slope is negative and d finite.
    """
    size = inverse.shape[0]
    q = gradient.copy()
    alphas = np.empty(size)
    for age in range(count):  # newest first
        slot = (newest - age) % size
        alphas[slot] = inverse[slot] * np.dot(pairs[0, slot], q)
        q -= alphas[slot] * pairs[1, slot]
    y = pairs[1, newest]
    scale = max(1.0, 1.0 / (inverse[newest] * np.dot(y, w * y)))
    d = scale * w * q
    for age in range(count - 1, -1, -1):  # oldest first
        slot = (newest - age) % size
        d += pairs[0, slot] * (alphas[slot] - inverse[slot] * np.dot(pairs[1, slot], d))
    d = -d
    return d, float(np.dot(gradient, d))


@dataclass(frozen=True)
class Arithmetic:
    """The quasi-Newton step's arithmetic: ``point``, and ``learn`` and ``descent`` (plain
    or compiled)."""

    free_point: Any
    learn: Any
    descent: Any

    def point(
        self, g: np.ndarray, target: np.ndarray, log_mass: np.ndarray, log_aim: np.ndarray,
        rho: float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
        """A swept dual's coordinates on its free labels.

        Returns (free, x, gradient, metric, log_masses, finite): the free labels (bool,
        (K,)), x = g there, the semi-dual's gradient m - a (counts), the diagonal metric W
        (1 / counts), log m and log a stacked ((2, F), nats), and whether the gradient
        and the metric are finite (masses beyond float range are not).

        With gap = log m_j - log a_j: grad_j = a_j expm1(gap) (no cancellation of
        m_j - a_j), and W_j = rho log(a_j / m_j) / (a_j - m_j) = rho gap / grad_j > 0, the
        diagonal with -W grad = the marginal's column step (-> rho (1 - gap / 2) / a_j at
        gap 0).

        The two transcendentals, exp(log a) and expm1(gap), are NumPy's, over all K labels
        (overflow and nan where a label is not free are harmless): its SIMD loops take
        about a fifth of the time of Numba's scalar ones, which would make them most of
        the compiled step's time at K = 3,000.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            aim, growth = np.exp(log_aim), np.expm1(log_mass - log_aim)
            return self.free_point(g, target, log_mass, log_aim, aim, growth, rho)


PLAIN = Arithmetic(free_point=free_point, learn=learn, descent=descent)


@functools.cache
def compiled() -> Arithmetic | None:
    """The same functions compiled by Numba (each on its first call, then cached on disk),
    or None where Numba is not installed or cannot compile here (no cache location, for
    one: the plain functions then give the same results)."""
    try:
        import numba

        jit = numba.njit(cache=True, error_model="numpy")
        return Arithmetic(free_point=jit(free_point), learn=jit(learn), descent=jit(descent))
    except Exception:  # any failure of this optional fast path: the plain functions
        return None

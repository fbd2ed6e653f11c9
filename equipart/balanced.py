r"""Exact-count hard labels from a Sinkhorn dual: successive shortest paths on K labels.

The problem (``rounding="balanced"``). Given scores with log-probabilities L (N x K),
integer label bands lo_j <= hi_j with sum(lo) <= N <= sum(hi), find labels a(i) maximising

    sum_i L_i,a(i)    subject to   lo_j <= #{i : a(i) = j} <= hi_j.

This is a transportation LP with an integral optimum. We solve it in units of the scaled
scores w_ij = lam * L_ij (the same argmax) and with node potentials pi_j ("prices" with the
sign of the Sinkhorn dual g: a point prefers the label maximising w_ij + pi_j).

Candidates. Each row keeps only its k best labels by z_ij = w_ij + g_j (the backend's
``top_labels``), so the host holds N*k numbers and never an N x K array.

Algorithm (primal-dual, successive shortest paths). Start with every point on its best
candidate under pi = g (Sinkhorn's dual, already near-optimal, so the counts are already
close to the targets). Label j's *surplus* is c_j - f_j, where f_j in [lo_j, hi_j] is the
flow it passes to a slack node T (f_j = hi_j when pi_j < pi_T, lo_j when pi_j > pi_T,
which keeps the slack arcs dual feasible); T's surplus is sum_j f_j - N. A residual arc
a -> b (move one point from label a to label b) costs, in reduced terms,

    R_ab = min_{i on a, b in cand(i)} (w_ia + pi_a) - (w_ib + pi_b)  >= 0,

and the slack arcs j -> T (f_j < hi_j) and T -> j (f_j > lo_j) cost pi_j - pi_T and
pi_T - pi_j. Each phase runs one dense Dijkstra from all surplus nodes over the K + 1
nodes, raises pi by the distances (every reduced cost stays >= 0, so every point stays on
a best candidate), and pushes one unit along every shortest path to a deficit node whose
arcs (one point each) are still unused. Phases repeat until no node has a surplus.
Only the rows of R whose labels gained or lost points are recomputed.

Guarantee (the certificate). At the end every point sits on a maximiser of w_ij + pi_j
over its candidates, every slack arc has a non-negative reduced cost, and counts are
within [lo, hi]: these are the LP's complementary-slackness conditions, so the labels are
an exact optimum of the LP *restricted to the candidates*. They are optimal for the full
N x K problem when, for every row, the assigned utility is at least
t_i + max_{j not in cand(i)} (pi_j - g_j), t_i being the row's k-th best z (every
non-candidate has z_ij <= t_i). ``solve`` checks this for every row; the caller enlarges k
and repeats from the new prices when it fails, so the returned labels are always a
certified exact optimum of the full LP, in the arithmetic precision of z (float32 for
float32 scores: the objective is exact up to N times the rounding of lam * L + g).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends.base import Backend, ScoreKind
from .marginals import ColumnConstraint
from .solver import RowSource

__all__ = ["FIRST_WIDTH", "WIDEN", "CandidateSolution", "balanced_labels", "solve_candidates"]

FIRST_WIDTH = 8  # candidates per row at the first try
WIDEN = 4  # growth of the candidate count when the certificate fails

_SLACK_TOL = 1e-9  # relative slack for floating-point ties in the certificate


@dataclass(frozen=True)
class CandidateSolution:
    """What ``solve_candidates`` returns.

    Attributes
    ----------
    labels : int64 (N,)
        One label per row, counts within [lo, hi].
    prices : float64 (K,)
        The final potentials pi = g + delta (labels with hi = 0 keep g's -inf).
    certified : bool
        Whether the labels are proven optimal for the full N x K problem (see the module
        docstring); False means some row's non-candidate labels might do better.
    feasible : bool
        False when the candidate graph cannot meet the bands (enlarge k); labels are then
        the best-candidate labels and not balanced.
    n_phases : int
        Dijkstra runs made.
    n_moves : int
        Points moved from their initial best candidate.
    """

    labels: np.ndarray
    prices: np.ndarray
    certified: bool
    feasible: bool
    n_phases: int
    n_moves: int


class _Transport:
    """The state of the successive-shortest-path solve on candidate arcs."""

    def __init__(
        self,
        cand: np.ndarray,
        value: np.ndarray,
        base: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
    ) -> None:
        self.cand = cand  # (N, k) int64 labels
        self.value = value  # (N, k) float64 z = w + g (-inf where impossible)
        self.n_rows, self.width = cand.shape
        self.n_labels = lo.shape[0]
        self.lo, self.hi = lo, hi
        self.base = base  # g with -inf (labels that take no point) read as 0
        self.delta = np.zeros(self.n_labels)  # label potentials pi = g + delta
        self.slot = np.zeros(self.n_rows, dtype=np.int64)  # every row on its best candidate
        self.assign = cand[:, 0].copy()
        counts = np.bincount(self.assign, minlength=self.n_labels)
        order = np.argsort(self.assign, kind="stable")
        self.members = np.split(order, np.cumsum(counts)[:-1])
        self.counts = counts.astype(np.int64)
        # the slack node T: its potential, and the flows f_j that keep its arcs feasible
        self.slack = _slack_price(base, self.counts, lo, hi, self.n_rows)
        self.flow = np.where(base < self.slack, hi, lo).astype(np.int64)
        self.transfer = np.full((self.n_labels, self.n_labels), np.inf)
        self.mover = np.full((self.n_labels, self.n_labels), -1, dtype=np.int64)
        self.n_moves = 0

    # -- the label graph ---------------------------------------------------------------

    def refresh(self, labels: np.ndarray) -> None:
        """Recompute the transfer rows (cost in z, argmin point) of ``labels``."""
        if labels.size == 0:
            return
        self.transfer[labels] = np.inf
        self.mover[labels] = -1
        points = np.concatenate([self.members[a] for a in labels])
        if points.size == 0:
            return
        source = self.assign[points]
        own = self.value[points, self.slot[points]]
        cost = own[:, None] - self.value[points]
        dest = self.cand[points]
        keep = (dest != source[:, None]) & np.isfinite(cost)
        rows = np.nonzero(keep)
        key = source[rows[0]] * self.n_labels + dest[keep]
        cost, pid = cost[keep], points[rows[0]]
        best = self.transfer.reshape(-1)
        np.minimum.at(best, key, cost)
        hit = cost == best[key]  # the cheapest point(s) of each arc; the lowest id wins
        mover = self.mover.reshape(-1)
        mover[key[hit]] = self.n_rows
        np.minimum.at(mover, key[hit], pid[hit])

    def surplus(self) -> np.ndarray:
        """Surplus of every node (labels, then T); they sum to zero."""
        labels = self.counts - self.flow
        return np.append(labels, self.flow.sum() - self.n_rows)

    # -- one phase ---------------------------------------------------------------------

    def dijkstra(self, surplus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shortest reduced distances from every surplus node, and predecessors."""
        n_labels, delta = self.n_labels, self.delta
        slack_gap = self.base + delta - self.slack  # reduced cost of j -> T; T -> j is minus
        dist = np.full(n_labels + 1, np.inf)
        dist[surplus > 0] = 0.0
        pred = np.full(n_labels + 1, -1, dtype=np.int64)
        done = np.zeros(n_labels + 1, dtype=bool)
        open_dist = dist.copy()
        to_slack = self.flow < self.hi
        from_slack = self.flow > self.lo
        for _ in range(n_labels + 1):
            u = int(np.argmin(open_dist))
            if not np.isfinite(open_dist[u]):
                break
            done[u] = True
            open_dist[u] = np.inf
            if u < n_labels:
                reduced = np.maximum(self.transfer[u] + (delta[u] - delta), 0.0)
                new = np.append(dist[u] + reduced, np.inf)
                if to_slack[u]:
                    new[n_labels] = dist[u] + max(slack_gap[u], 0.0)
            else:
                new = np.full(n_labels + 1, np.inf)
                new[:n_labels][from_slack] = dist[u] + np.maximum(-slack_gap[from_slack], 0.0)
            better = (new < dist) & ~done
            dist[better] = new[better]
            open_dist[better] = new[better]
            pred[better] = u
        return dist, pred

    def phase(self) -> bool:
        """One Dijkstra and the augmentations it allows; False if no deficit is reachable."""
        n_labels = self.n_labels
        surplus = self.surplus()
        dist, pred = self.dijkstra(surplus)
        reached = np.isfinite(dist)
        targets = np.flatnonzero(reached & (surplus < 0))
        if targets.size == 0:
            return False
        raise_by = np.where(reached, dist, dist[reached].max())
        self.delta += raise_by[:n_labels]
        self.slack += raise_by[n_labels]
        used = set()
        touched: set[int] = set()
        spare_to = self.hi - self.flow
        spare_from = self.flow - self.lo
        for t in targets[np.lexsort((targets, dist[targets]))]:
            path, v = [], int(t)
            while pred[v] >= 0:
                path.append((int(pred[v]), v))
                v = int(pred[v])
            root = v
            if surplus[root] <= 0 or surplus[t] >= 0:
                continue
            movers = [int(self.mover[a, b]) for a, b in path if a < n_labels and b < n_labels]
            if any(m in used for m in movers):
                continue
            if any(
                (b == n_labels and spare_to[a] < 1) or (a == n_labels and spare_from[b] < 1)
                for a, b in path
            ):
                continue
            for a, b in path:
                if a == n_labels:
                    self.flow[b] -= 1
                    spare_from[b] -= 1
                elif b == n_labels:
                    self.flow[a] += 1
                    spare_to[a] -= 1
                else:
                    self._move(int(self.mover[a, b]), a, b)
                    touched.update((a, b))
            used.update(movers)
            surplus[root] -= 1
            surplus[t] += 1
        self.refresh(np.array(sorted(touched), dtype=np.int64))
        return True

    def _move(self, point: int, source: int, dest: int) -> None:
        self.members[source] = self.members[source][self.members[source] != point]
        self.members[dest] = np.append(self.members[dest], point)
        self.slot[point] = int(np.flatnonzero(self.cand[point] == dest)[0])
        self.assign[point] = dest
        self.counts[source] -= 1
        self.counts[dest] += 1
        self.n_moves += 1

    # -- the certificate ---------------------------------------------------------------

    def certify(self, complete: bool) -> bool:
        """Complementary slackness on candidates, slack arcs and non-candidate labels."""
        delta = self.delta
        utility = self.value + delta[self.cand]
        own = utility[np.arange(self.n_rows), self.slot]
        scale = _SLACK_TOL * (1.0 + np.abs(own))
        if np.any(own < utility.max(axis=1) - scale):
            return False
        gap = self.base + delta - self.slack
        tol = _SLACK_TOL * (1.0 + abs(self.slack))
        if np.any(gap[self.counts < self.hi] < -tol) or np.any(gap[self.counts > self.lo] > tol):
            return False
        if complete:
            return True
        outside = self._best_outside(delta)
        kth = self.value[:, -1]
        bound = np.where(np.isfinite(kth), kth + outside, -np.inf)
        return bool(np.all(own >= bound - scale))

    def _best_outside(self, delta: np.ndarray) -> np.ndarray:
        """max_{j not in cand(i), hi_j > 0} delta_j for every row (-inf if none)."""
        open_labels = np.flatnonzero(self.hi > 0)
        ranked = open_labels[np.argsort(-delta[open_labels], kind="stable")]
        ranked = ranked[: self.width + 1]
        best = np.full(self.n_rows, -np.inf)
        unresolved = np.ones(self.n_rows, dtype=bool)
        for label in ranked:  # at most k + 1 labels: one of them is outside every row
            outside = unresolved & ~np.any(self.cand == label, axis=1)
            best[outside] = delta[label]
            unresolved &= ~outside
        return best


def _slack_price(
    potential: np.ndarray, counts: np.ndarray, lo: np.ndarray, hi: np.ndarray, n_rows: int
) -> float:
    """A potential for the slack node T that makes the initial surpluses smallest.

    Labels with potential below T's start with f_j = hi_j, the others with lo_j (the slack
    arcs are then dual feasible). The choice only changes how much work the solve does.
    """
    order = np.argsort(potential, kind="stable")
    c, lo_s, hi_s, d = counts[order], lo[order], hi[order], potential[order]
    at_hi = np.concatenate(([0], np.cumsum(np.abs(c - hi_s))))
    at_lo = np.concatenate((np.cumsum(np.abs(c - lo_s)[::-1])[::-1], [0]))
    flow = np.concatenate(([0], np.cumsum(hi_s))) + np.concatenate(
        (np.cumsum(lo_s[::-1])[::-1], [0])
    )
    best = int(np.argmin(at_hi + at_lo + np.abs(flow - n_rows)))
    if best == 0:
        return float(d[0]) - 1.0
    if best == d.size:
        return float(d[-1]) + 1.0
    return 0.5 * float(d[best - 1] + d[best])


def solve_candidates(
    cand: np.ndarray,
    value: np.ndarray,
    g: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    complete: bool,
) -> CandidateSolution:
    """Optimal labels with counts in [lo, hi] using only each row's candidate labels.

    Parameters
    ----------
    cand : int64 (N, k)
        Each row's k best labels by z = lam * L + g, best first (``Backend.top_labels``).
    value : float (N, k)
        Their z values (-inf marks an impossible label).
    g : float64 (K,)
        The dual the candidates were ranked with (-inf for labels with hi = 0).
    lo, hi : int64 (K,)
        Label bands, sum(lo) <= N <= sum(hi).
    complete : bool
        Whether the candidates are all K labels (then no non-candidate check is needed).
    """
    value = np.asarray(value, dtype=np.float64)
    cand = np.asarray(cand, dtype=np.int64)
    base = np.where(np.isfinite(g), g, 0.0)
    state = _Transport(cand, value, base, lo, hi)
    state.refresh(np.flatnonzero(state.counts > 0))
    n_phases, feasible = 0, True
    while np.any(state.surplus() != 0):
        n_phases += 1
        if not state.phase():
            feasible = False
            break
    prices = g + state.delta
    certified = feasible and state.certify(complete)
    return CandidateSolution(
        labels=state.assign,
        prices=prices,
        certified=certified,
        feasible=feasible,
        n_phases=n_phases,
        n_moves=state.n_moves,
    )


def balanced_labels(
    source: RowSource,
    backend: Backend,
    head: int,
    kind: ScoreKind,
    lam: float,
    g: np.ndarray,
    constraint: ColumnConstraint,
) -> Any:
    """The ``rounding="balanced"`` rounder: certified optimal labels with counts in bands.

    Asks the backend for each row's ``k`` best labels by lam * L + g (k = ``FIRST_WIDTH``
    at first), moves those N*k candidates to the host, solves the restricted LP exactly
    (``solve_candidates``) and returns the labels in the backend's library. When the
    certificate fails (a row's non-candidate label could be better at the final prices)
    it re-ranks with the final prices and ``WIDEN`` times as many candidates, up to all K.
    Each pass reads the blocks afresh from ``source`` (a loader may reuse one buffer), so
    one block is held at a time.
    """
    lo, hi = constraint.count_bounds()
    n_labels = lo.shape[0]
    width = min(FIRST_WIDTH, n_labels)
    prices = np.asarray(g, dtype=np.float64)
    like = None  # a block of this head: the library and device of the labels
    while True:
        cand, value = [], []
        for block in source.blocks(head):
            idx, val = backend.top_labels(block, kind, lam, prices, width)
            cand.append(backend.to_numpy(idx))
            value.append(backend.to_numpy(val))
            like = block
        solution = solve_candidates(
            np.concatenate(cand),
            np.concatenate(value),
            prices,
            lo,
            hi,
            complete=width == n_labels,
        )
        if solution.certified or width == n_labels:
            break
        width = min(n_labels, width * WIDEN)
        prices = solution.prices
    if not solution.feasible:
        raise ValueError(
            "marginals: no labelling gives every label a count within its bounds using "
            "labels of non-zero probability; give impossible labels a zero size"
        )
    return backend.from_numpy(solution.labels, like=like)  # (the library of the blocks)

r"""Exact-count hard labels from a Sinkhorn dual: successive shortest paths on K labels.

The problem (``rounding="balanced"``). Given scores with log-probabilities L (N x K),
integer label bands lo_j <= hi_j with sum(lo) <= N <= sum(hi), find labels a(i) maximising

    sum_i L_i,a(i)    subject to   lo_j <= #{i : a(i) = j} <= hi_j.

This is a transportation LP with an integral optimum. We solve it in units of the scaled
scores w_ij = lam * L_ij (the same argmax) and with node potentials pi_j ("prices" with the
sign of the Sinkhorn dual g: a point prefers the label maximising w_ij + pi_j).

Candidates. Each row keeps only its k best labels by z_ij = w_ij + g_j (the backend's
``top_labels``), so the host holds N*k numbers and never an N x K array: the labels as
int32 and z in the scores' precision (4 + 4 bytes each for float32 scores). Every pass
over all N*k of them (building the label graph, the certificate) runs on rows of
``CHUNK_ENTRIES`` candidates at a time, in float64, so its temporaries stay small.

Algorithm (primal-dual, successive shortest paths). Start with every point on a best
candidate under pi = g (Sinkhorn's dual, already near-optimal, so the counts are already
close to the targets); a row whose best candidates tie exactly starts on slot i mod t of
its t tied ones, so identical rows spread over their tied labels. Label j's *surplus* is
c_j - f_j, where f_j in [lo_j, hi_j] is the flow it passes to a slack node T (f_j = hi_j
when pi_j < pi_T, lo_j when pi_j > pi_T, which keeps the slack arcs dual feasible); T's
surplus is sum_j f_j - N. A residual arc a -> b (move one point from label a to label b)
costs, in reduced terms,

    R_ab = min_{i on a, b in cand(i)} (w_ia + pi_a) - (w_ib + pi_b)  >= 0,

and the slack arcs j -> T (f_j < hi_j) and T -> j (f_j > lo_j) cost pi_j - pi_T and
pi_T - pi_j. The arc a -> b carries as many units at that cost as label a has points
attaining the minimum (its *tight movers*: all of them when rows tie). Each phase runs
one Dijkstra from all surplus nodes over the K + 1 nodes (SciPy's, on the dense reduced
costs), raises pi by the distances capped at the farthest reached deficit node's (every
reduced cost stays >= 0, so every point stays on a best candidate, and every arc of the
shortest-path tree up to that node has reduced cost 0; the cap keeps the prices of labels
the flow does not reach from drifting, which would make rows prefer labels outside their
candidates and fail the certificate), and
pushes along the tree path of every reached deficit node as many units as its root's
surplus, its deficit, its slack arcs and the still unmoved tight movers of its label arcs
allow. Phases repeat until no node has a surplus; their number grows with the distinct
price levels the flow needs, not with the points moved. Only the rows of R whose labels
gained or lost points are recomputed, and R is built only when some point must move.

Where Numba is installed the phases run in one compiled call (``equipart._balanced_numba``:
the same phases, with linked lists of every label's points and the O(K^2) array Dijkstra);
``solve_candidates(..., phases="python")`` runs the NumPy phases described above.

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
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra as shortest_paths

from .backends.base import Backend, ScoreKind
from .marginals import ColumnConstraint
from .solver import RowSource

__all__ = [
    "FIRST_WIDTH",
    "WIDEN",
    "CandidateSolution",
    "auction_labels",
    "balanced_labels",
    "balanced_passes",
    "has_compiled_passes",
    "solve_candidates",
    "top_candidates",
]

FIRST_WIDTH = 8  # candidates per row at the first try
WIDEN = 4  # growth of the candidate count when the certificate fails
CHUNK_ENTRIES = 1 << 19  # candidates per chunk of the passes over every row

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
        self.cand = cand  # (N, k) int32 labels
        self.value = value  # (N, k) z = w + g, float32 or float64 (-inf where impossible)
        self.n_rows, self.width = cand.shape
        self.n_labels = lo.shape[0]
        self.lo, self.hi = lo, hi
        self.base = base  # g with -inf (labels that take no point) read as 0
        self.delta = np.zeros(self.n_labels)  # label potentials pi = g + delta
        self.slot = _spread_ties(value)  # every row on one of its best candidates
        self.assign = cand[np.arange(self.n_rows), self.slot].astype(np.int64)
        counts = np.bincount(self.assign, minlength=self.n_labels)
        order = np.argsort(self.assign, kind="stable")
        self.members = np.split(order, np.cumsum(counts)[:-1])
        self.counts = counts.astype(np.int64)
        # the slack node T: its potential, and the flows f_j that keep its arcs feasible
        self.slack = _slack_price(base, self.counts, lo, hi, self.n_rows)
        self.flow = np.where(base < self.slack, hi, lo).astype(np.int64)
        # the costs of the K + 1 node graph, in z, before potentials: label arcs (the
        # transfer costs, inf where no candidate arc exists), j -> T costs base_j and
        # T -> j costs -base_j, so that with node potentials (delta, slack) the reduced
        # cost of u -> v is cost_uv + p_u - p_v
        n_nodes = self.n_labels + 1
        self.cost = np.full((n_nodes, n_nodes), np.inf)
        self.cost[: self.n_labels, self.n_labels] = base
        self.cost[self.n_labels, : self.n_labels] = -base
        self.transfer = self.cost[: self.n_labels, : self.n_labels]  # a view
        self.reduced = np.empty_like(self.cost)  # the reduced costs of one phase
        # every pair is an entry of the CSR graph (infinite costs are no arcs to SciPy's
        # Dijkstra), so its structure never changes
        self.columns = np.tile(np.arange(n_nodes, dtype=np.int32), n_nodes)
        self.row_starts = np.arange(0, n_nodes * n_nodes + 1, n_nodes, dtype=np.int32)
        empty = np.zeros(0, dtype=np.int64)
        # per label a: the cheapest movers of every arc a -> b, as (b, point) sorted by both
        self.tight = [(empty, empty)] * self.n_labels
        self.n_moves = 0

    # -- the label graph ---------------------------------------------------------------

    def refresh(self, labels: np.ndarray) -> None:
        """Recompute the transfer rows (cost in z) and cheapest movers of ``labels``.

        One pass over the labels' points in chunks: each chunk lowers the arcs' least
        costs, and the points at an arc's least cost so far are kept (those of earlier
        chunks filtered again), so at the end they are every arc's cheapest movers."""
        if labels.size == 0:
            return
        self.transfer[labels] = np.inf
        points = np.concatenate([self.members[a] for a in labels])
        stride = self.n_labels + 1  # arc a -> b is entry a * stride + b of the cost matrix
        step = max(1, CHUNK_ENTRIES // self.width)
        best = self.cost.reshape(-1)  # (a view: the cost matrix is contiguous)
        key = pid = np.zeros(0, dtype=np.int64)
        cost = np.zeros(0)
        for start in range(0, points.size, step):
            new = self._arcs(points[start : start + step], stride)
            np.minimum.at(best, new[0], new[1])
            old = (key, cost, pid)
            key, cost, pid = (np.concatenate(pair) for pair in zip(old, new, strict=True))
            hit = cost == best[key]  # every point at an arc's least cost moves at that cost
            key, cost, pid = key[hit], cost[hit], pid[hit]
        key, pid = _sorted_pairs(key, pid, self.n_rows)
        bounds = np.searchsorted(key, (labels + np.arange(2)[:, None]) * stride).T
        for a, (first, last) in zip(labels.tolist(), bounds.tolist(), strict=True):
            self.tight[a] = (key[first:last] - a * stride, pid[first:last])

    def _arcs(self, points: np.ndarray, stride: int) -> tuple[np.ndarray, ...]:
        """(arc key source * stride + dest, cost in z, point) of every candidate move of
        ``points`` (not to their own label, nor to an impossible one), in float64."""
        source = self.assign[points]
        value = self.value[points].astype(np.float64)
        own = value[np.arange(points.size), self.slot[points]]
        cost = own[:, None] - value
        dest = self.cand[points]
        keep = (dest != source[:, None]) & np.isfinite(cost)
        rows = np.nonzero(keep)[0]
        return source[rows] * stride + dest[keep], cost[keep], points[rows]

    def movers(self, a: int, b: int, used: np.ndarray) -> np.ndarray:
        """Points on label a, not yet moved this phase, whose move to b costs the least."""
        dest, pid = self.tight[a]
        first, last = np.searchsorted(dest, (b, b + 1))
        points = pid[first:last]
        return points[~used[points]]

    def surplus(self) -> np.ndarray:
        """Surplus of every node (labels, then T); they sum to zero."""
        labels = self.counts - self.flow
        return np.append(labels, self.flow.sum() - self.n_rows)

    # -- one phase ---------------------------------------------------------------------

    def dijkstra(self, surplus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shortest reduced distances from every surplus node, and predecessors (-1: none).

        The reduced costs of the K + 1 node graph are written as one dense matrix (inf
        where there is no arc) and handed, as a CSR matrix of every pair, to SciPy's
        Dijkstra from all surplus nodes at once (``min_only``: the distance to the
        nearest one). The matrix is one buffer, rewritten every phase.
        """
        n_labels = self.n_labels
        potential = np.append(self.delta, self.slack)
        reduced = np.add(self.cost, potential[:, None], out=self.reduced)
        reduced -= potential[None, :]
        np.maximum(reduced, 0.0, out=reduced)
        reduced[:n_labels, n_labels][self.flow >= self.hi] = np.inf  # j -> T is full
        reduced[n_labels, :n_labels][self.flow <= self.lo] = np.inf  # T -> j is empty
        graph = csr_matrix(
            (reduced.ravel(), self.columns, self.row_starts), shape=reduced.shape, copy=False
        )
        dist, pred, _ = shortest_paths(
            graph, indices=np.flatnonzero(surplus > 0), min_only=True, return_predecessors=True
        )
        return dist, np.where(pred >= 0, pred, -1).astype(np.int64)

    def phase(self) -> bool:
        """One Dijkstra and the augmentations it allows; False if no deficit is reachable.

        After the potentials are raised by the distances, capped at the farthest deficit
        node's (nodes beyond it rise by the cap, unreached ones too), every arc of the
        shortest-path tree up to a deficit node has reduced cost 0, so flow may be pushed
        along any such path: as many units as its end nodes need, the slack arcs allow and
        its label arcs have unmoved least-cost points (all tied points of an arc move at
        once).
        """
        n_labels = self.n_labels
        surplus = self.surplus()
        dist, pred = self.dijkstra(surplus)
        reached = np.isfinite(dist)
        targets = np.flatnonzero(reached & (surplus < 0))
        if targets.size == 0:
            return False
        raise_by = np.minimum(dist, dist[targets].max())  # unreached: dist = inf
        self.delta += raise_by[:n_labels]
        self.slack += raise_by[n_labels]
        used = np.zeros(self.n_rows, dtype=bool)
        spare_to = self.hi - self.flow
        spare_from = self.flow - self.lo
        moves: list[tuple[np.ndarray, int, int]] = []
        for t in targets[np.lexsort((targets, dist[targets]))].tolist():
            path, v = [], t
            while pred[v] >= 0:
                path.append((int(pred[v]), v))
                v = int(pred[v])
            root = v
            amount = min(int(surplus[root]), int(-surplus[t]))
            movers = {}
            for a, b in path:
                if a == n_labels:
                    amount = min(amount, int(spare_from[b]))
                elif b == n_labels:
                    amount = min(amount, int(spare_to[a]))
                else:
                    movers[a, b] = self.movers(a, b, used)
                    amount = min(amount, movers[a, b].size)
            if amount <= 0:
                continue
            for a, b in path:
                if a == n_labels:
                    self.flow[b] -= amount
                    spare_from[b] -= amount
                elif b == n_labels:
                    self.flow[a] += amount
                    spare_to[a] -= amount
                else:
                    points = movers[a, b][:amount]
                    used[points] = True
                    moves.append((points, a, b))
            surplus[root] -= amount
            surplus[t] += amount
        self._apply(moves)
        return True

    def _apply(self, moves: list[tuple[np.ndarray, int, int]]) -> None:
        """Move the phase's points and refresh the graph rows of the labels they touched."""
        if not moves:
            return
        points = np.concatenate([p for p, _, _ in moves])
        source = np.concatenate([np.full(p.size, a) for p, a, _ in moves])
        dest = np.concatenate([np.full(p.size, b) for p, _, b in moves])
        touched = np.union1d(source, dest)
        self.assign[points] = dest
        self.slot[points] = np.argmax(self.cand[points] == dest[:, None], axis=1)
        np.add.at(self.counts, source, -1)
        np.add.at(self.counts, dest, 1)
        gone = np.zeros(self.n_rows, dtype=bool)
        gone[points] = True
        for a in touched.tolist():
            arrived = points[dest == a]
            kept = self.members[a][~gone[self.members[a]]]
            self.members[a] = np.concatenate((kept, arrived))
        self.n_moves += points.size
        self.refresh(touched)

    def run(self) -> tuple[int, bool]:
        """Phases until no node has a surplus: (phases, feasible)."""
        n_phases = 0
        while np.any(self.surplus() != 0):
            if n_phases == 0:  # the label graph is built only when some point must move
                self.refresh(np.flatnonzero(self.counts > 0))
            n_phases += 1
            if not self.phase():
                return n_phases, False
        return n_phases, True

    def run_compiled(self, phases: Any) -> tuple[int, bool]:
        """The phases of ``run`` in one compiled call (``equipart._balanced_numba``),
        updating labels, slots, counts, flows and potentials (not ``members``/``tight``,
        which only ``phase`` reads): (phases, feasible)."""
        n_phases, n_moves, feasible, self.slack = phases(
            self.cand, self.value, self.base, self.lo, self.hi, self.slot, self.assign,
            self.counts, self.flow, self.delta, float(self.slack),
        )  # fmt: skip
        self.n_moves = int(n_moves)
        return int(n_phases), bool(feasible)

    # -- the certificate ---------------------------------------------------------------

    def certify(self, complete: bool) -> bool:
        """Complementary slackness on candidates, slack arcs and non-candidate labels."""
        delta = self.delta
        gap = self.base + delta - self.slack
        tol = _SLACK_TOL * (1.0 + abs(self.slack))
        if np.any(gap[self.counts < self.hi] < -tol) or np.any(gap[self.counts > self.lo] > tol):
            return False
        open_labels = np.flatnonzero(self.hi > 0)
        ranked = open_labels[np.argsort(-delta[open_labels], kind="stable")][: self.width + 1]
        step = max(1, CHUNK_ENTRIES // self.width)
        for start in range(0, self.n_rows, step):
            rows = slice(start, start + step)
            cand, value = self.cand[rows], self.value[rows].astype(np.float64)
            utility = value + delta[cand]
            own = utility[np.arange(cand.shape[0]), self.slot[rows]]
            scale = _SLACK_TOL * (1.0 + np.abs(own))
            if np.any(own < utility.max(axis=1) - scale):
                return False
            if complete:
                continue
            outside = _best_outside(cand, delta, ranked)
            kth = value[:, -1]
            bound = np.where(np.isfinite(kth), kth + outside, -np.inf)
            if not np.all(own >= bound - scale):
                return False
        return True


def _best_outside(cand: np.ndarray, delta: np.ndarray, ranked: np.ndarray) -> np.ndarray:
    """max_{j not in cand(i), hi_j > 0} delta_j for every row of ``cand`` (-inf if none),
    from ``ranked``: the k + 1 open labels (hi_j > 0) of largest delta, largest first (one
    of them is outside every row's k candidates)."""
    best = np.full(cand.shape[0], -np.inf)
    unresolved = np.ones(cand.shape[0], dtype=bool)
    for label in ranked:
        outside = unresolved & ~np.any(cand == label, axis=1)
        best[outside] = delta[label]
        unresolved &= ~outside
    return best


def _sorted_pairs(key: np.ndarray, pid: np.ndarray, n_rows: int) -> tuple[np.ndarray, ...]:
    """(key, pid) pairs sorted by key, then pid: one sort of key * N + pid (pid < N) where
    that fits in int64, else a lexicographic sort."""
    if key.size and int(key.max()) < (2**62) // max(n_rows, 1):
        combined = np.sort(key * n_rows + pid)
        return combined // n_rows, combined % n_rows
    order = np.lexsort((pid, key))
    return key[order], pid[order]


def _spread_ties(value: np.ndarray) -> np.ndarray:
    """The slot of a best candidate for every row, tied rows spread round-robin.

    A row whose leading candidates tie exactly (equal z) may start on any of them: the
    start is then still optimal for the potentials g, as the successive shortest paths
    require. Row i with t tied leading candidates starts on slot i mod t, so identical
    rows (constant scores) spread evenly over their tied labels instead of all taking
    the lowest index; the flow corrects whatever imbalance is left.
    """
    n_rows, width = value.shape
    if width < 2 or n_rows == 0:
        return np.zeros(n_rows, dtype=np.int64)
    n_tied = np.count_nonzero(value == value[:, :1], axis=1)
    return np.arange(n_rows, dtype=np.int64) % np.maximum(n_tied, 1)


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


def _labels_can_cover(cand: np.ndarray, value: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    """A necessary condition for a feasible candidate graph, checked before any work.

    Every label with lo > 0 must be some row's (possible) candidate, and the candidate
    labels' upper bounds must hold all N rows. Exactly tied rows ranked by the lowest
    index share their candidates, so narrow widths fail here at no cost.
    """
    possible = np.isfinite(value)
    labels = cand.ravel() if possible.all() else cand[possible]
    present = np.bincount(labels, minlength=lo.shape[0]) > 0
    return not np.any(lo[~present] > 0) and int(hi[present].sum()) >= cand.shape[0]


def has_compiled_passes() -> bool:
    """Whether the compiled phases and auction (``equipart._balanced_numba``: Numba) run
    here."""
    return _compiled_phases("auto") is not None


def _compiled_phases(phases: str) -> Any:
    """The compiled phase loop for ``phases`` ("auto", "compiled", "python"), or None."""
    if phases not in ("auto", "compiled", "python"):
        raise ValueError(f"phases: {phases!r} is not one of 'auto', 'compiled', 'python'")
    if phases == "python":
        return None
    try:
        from ._balanced_numba import run_phases
    except ImportError:
        if phases == "compiled":
            raise ValueError(
                "phases: 'compiled' needs Numba (pip install numba); pass 'python'"
            ) from None
        return None
    return run_phases


def solve_candidates(
    cand: np.ndarray,
    value: np.ndarray,
    g: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    complete: bool,
    phases: str = "auto",
) -> CandidateSolution:
    """Optimal labels with counts in [lo, hi] using only each row's candidate labels.

    Parameters
    ----------
    cand : integer (N, k)
        Each row's k best labels by z = lam * L + g, best first (``Backend.top_labels``);
        held as int32.
    value : float (N, k)
        Their z values (-inf marks an impossible label); float32 stays float32 (every
        computation with them is in float64).
    g : float64 (K,)
        The dual the candidates were ranked with (-inf for labels with hi = 0).
    lo, hi : int64 (K,)
        Label bands, sum(lo) <= N <= sum(hi).
    complete : bool
        Whether the candidates are all K labels (then no non-candidate check is needed).
    phases : {"auto", "compiled", "python"}
        Where the phases run: "compiled" in one Numba call (``equipart._balanced_numba``),
        "python" as NumPy calls per phase (``_Transport.phase``); "auto" compiles where
        Numba is installed.
    """
    compiled = _compiled_phases(phases)
    value = np.asarray(value)
    if value.dtype not in (np.float32, np.float64):
        value = value.astype(np.float64)
    cand = np.asarray(cand, dtype=np.int32)
    if not _labels_can_cover(cand, value, lo, hi):
        return CandidateSolution(
            labels=cand[:, 0].copy(),
            prices=np.array(g, dtype=np.float64),
            certified=False,
            feasible=False,
            n_phases=0,
            n_moves=0,
        )
    base = np.where(np.isfinite(g), g, 0.0)
    state = _Transport(cand, value, base, lo, hi)
    n_phases, feasible = state.run() if compiled is None else state.run_compiled(compiled)
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


def top_candidates(
    source: RowSource,
    backend: Backend,
    head: int,
    kind: ScoreKind,
    lam: float,
    g: np.ndarray,
    width: int,
) -> tuple[np.ndarray, np.ndarray, Any]:
    """Every row's ``width`` best labels by lam * L + g (``Backend.top_labels``, block by
    block), on the host: (int32 labels (N, width), their values, the last block read)."""
    cand, value, like = [], [], None
    for block in source.blocks(head):
        idx, val = backend.top_labels(block, kind, lam, g, width)
        cand.append(backend.to_numpy(idx).astype(np.int32, copy=False))
        del idx
        value.append(backend.to_numpy(val))
        like = block
    cand = cand[0] if len(cand) == 1 else np.concatenate(cand)
    value = value[0] if len(value) == 1 else np.concatenate(value)
    return cand, value, like


def balanced_passes(
    source: RowSource,
    backend: Backend,
    head: int,
    kind: ScoreKind,
    lam: float,
    g: np.ndarray,
    constraint: ColumnConstraint,
) -> tuple[list[tuple[int, CandidateSolution]], Any]:
    """The candidate passes of ``balanced_labels``: (width, solution) for each, and a block.

    Asks the backend for each row's ``k`` best labels by lam * L + g (k = ``FIRST_WIDTH``
    at first), moves those N*k candidates to the host (labels as int32, block by block) and
    solves the restricted LP exactly
    (``solve_candidates``). When the certificate fails (a row's non-candidate label could
    be better at the final prices) it re-ranks with the final prices, at the same width
    once after a feasible pass, else with ``WIDEN`` times as many candidates, up to all K
    (``_next_width``). Each pass reads the blocks afresh from ``source`` (a
    loader may reuse one buffer), so one block is held at a time. The block returned is
    the last one read (the library and device of the labels).
    """
    lo, hi = constraint.count_bounds()
    n_labels = lo.shape[0]
    width = min(FIRST_WIDTH, n_labels)
    prices = np.asarray(g, dtype=np.float64)
    passes = []
    while True:
        cand, value, like = top_candidates(source, backend, head, kind, lam, prices, width)
        solution = solve_candidates(cand, value, prices, lo, hi, complete=width == n_labels)
        passes.append((width, solution))
        if solution.certified or width == n_labels:
            return passes, like
        width = _next_width(width, n_labels, value, passes)
        prices = solution.prices
        del cand, value  # before the next pass's candidates exist


def _next_width(
    width: int, n_labels: int, values: np.ndarray, passes: list[tuple[int, CandidateSolution]]
) -> int:
    """The candidate width after a pass that did not certify: the same width once, after
    a first feasible pass at it (re-ranked at its final prices, the candidates usually
    contain the optimum: the prices the first ranking used were only a start), else
    ``WIDEN`` times wider, or K.

    All K labels at once when the candidate labels could not even cover the bands
    (``_labels_can_cover``) and every row's candidates tie exactly: the backend breaks
    ties by label index, so rows tied beyond the width (constant scores, a collapsed
    network) all share the lowest-index labels, and the intermediate widths would fail
    the same way, each after a full pass over the scores.
    """
    failed = passes[-1][1]
    at_width = [solution for w, solution in passes if w == width]
    if failed.feasible and len(at_width) == 1:
        return width
    uncovered = not failed.feasible and failed.n_phases == 0
    if uncovered and values.size and np.all(values[:, -1] == values[:, 0]):
        return n_labels
    return min(n_labels, width * WIDEN)


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

    Runs ``balanced_passes`` and returns the last pass's labels in the backend's library.
    """
    passes, like = balanced_passes(source, backend, head, kind, lam, g, constraint)
    solution = passes[-1][1]
    if not solution.feasible:
        raise ValueError(
            "marginals: no labelling gives every label a count within its bounds using "
            "labels of non-zero probability; give impossible labels a zero size"
        )
    return backend.from_numpy(solution.labels, like=like)  # (the library of the blocks)


# --------------------------------------------------------------------------- the auction
AUCTION_BIDS = 500  # most bids per row of one auction stage before it gives up


def auction_labels(
    rank: Any, counts: np.ndarray, potential: np.ndarray, epsilons: tuple[float, ...], width: int
) -> tuple[np.ndarray, np.ndarray] | None:
    r"""Labels with exactly ``counts[j]`` rows on label j, within N eps of the optimum of
    sum_i z_i,a(i) (an auction, ``equipart._balanced_numba.auction_bids``), or None when
    a stage makes more than ``AUCTION_BIDS`` bids per row (Numba is needed).

    Parameters
    ----------
    rank : callable
        ``rank(rows, g, k)``: the k best labels of the rows ``rows`` (all rows: None) by
        z_ij + g_j, best first, as (int32 labels, their values z + g) on the host; z is the
        assignment's utility (lam L), g label potentials (-inf: a label that takes no row).
    counts : int64 (K,)
        The exact label sizes, summing to N.
    potential : float64 (K,)
        The starting potentials (the previous solve's, or zeros): the closer to the
        optimum's, the fewer bids.
    epsilons : tuple of float
        The bid increments of the stages, decreasing (eps-scaling): each stage starts
        with every row unassigned at the potentials the last one ended with; the labels
        of the last are within N eps of the optimum.
    width : int
        Candidates per row. A row whose candidates all fall below the bound that its
        k-th candidate gives the other labels is re-ranked at the current potentials
        (all such rows at once, with ``rank``), so the result holds over all K labels.

    Returns
    -------
    (labels int64 (N,), potential float64 (K,)): the labels and the final potentials,
    minus each label's cheapest slot price (a start for the next solve).
    """
    from ._balanced_numba import auction_bids

    n_labels = counts.shape[0]
    n_rows = int(counts.sum())
    width = min(width, n_labels)
    potential = np.where(counts > 0, potential, -np.inf)
    ranked_at = np.where(counts > 0, potential, 0.0)
    cand, value = rank(None, potential, width)
    limit = _outside_bound(value, width, n_labels)
    first = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    for eps in epsilons:
        cost = np.where(counts > 0, -potential, np.inf)
        labels = np.full(n_rows, -1, dtype=np.int64)
        state = (np.empty(n_rows), np.empty(n_rows, dtype=np.int64), first,
                 np.zeros(n_labels, dtype=np.int64), cost, labels)  # fmt: skip
        pending, budget = np.arange(n_rows, dtype=np.int64), AUCTION_BIDS * n_rows
        while pending.size:
            args = (cand, value, ranked_at, limit, counts, float(eps), state, pending, budget)
            aside, bids, rest = auction_bids(*args)
            budget -= bids
            if rest.size or (bids == 0 and aside.size == pending.size):
                return None  # out of bids, or no row can bid (no possible label)
            if aside.size:  # re-rank the rows set aside at the current potentials
                now = -cost
                new_cand, new_value = rank(aside, now, width)
                shift = ranked_at - np.where(np.isfinite(now), now, 0.0)
                cand[aside] = new_cand
                value[aside] = new_value + shift[new_cand]
                limit[aside] = _outside_bound(new_value, width, n_labels)
            pending = aside
        potential = -cost
    return labels, potential


def _outside_bound(value: np.ndarray, width: int, n_labels: int) -> np.ndarray:
    """Each row's bound on the utility of its non-candidate labels: its k-th candidate's
    value (-inf when the candidates are all K labels)."""
    if width >= n_labels:
        return np.full(value.shape[0], -np.inf)
    return value[:, -1].astype(np.float64)

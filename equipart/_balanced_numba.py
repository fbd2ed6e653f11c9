"""The phases of the balanced rounding's successive shortest paths, compiled with Numba.

``run_phases`` is the loop of ``equipart.balanced._Transport.phase`` in one compiled call:
the same label graph (K labels and the slack node T), the same Dijkstra from every
surplus node with potentials raised by the distances capped at the farthest reached
deficit's, the same pushes along the tree paths of the reached deficits (targets by
distance, then index), each taking the unmoved points of a label arc that attain its
least cost. What differs is the bookkeeping: every label's points are a doubly linked
list (a move is O(1)), an arc's least-cost points are found by scanning its label's
points when a path uses it, the Dijkstra is the O(K^2) array version on the dense reduced
costs, and the transfer costs of the labels a phase touched are recomputed from their
points after it. Among tied movers the points chosen may differ from the Python loop's;
the optimum and the certificate conditions are the same.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _link(assign: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(head, next, previous): every label's points as a doubly linked list (-1 ends)."""
    n_rows = assign.shape[0]
    head = np.full(n_labels, -1, dtype=np.int64)
    nxt = np.full(n_rows, -1, dtype=np.int64)
    prv = np.full(n_rows, -1, dtype=np.int64)
    for i in range(n_rows - 1, -1, -1):
        a = assign[i]
        nxt[i] = head[a]
        if head[a] >= 0:
            prv[head[a]] = i
        head[a] = i
    return head, nxt, prv


@njit(cache=True)
def _refresh(a, transfer, tight, movers, head, nxt, cand, value, slot) -> None:
    """transfer[a, b] = min over points i on a with b a candidate of i of z_i,own - z_ib,
    tight[a, b] the number of points attaining it, and movers[a] those points as
    (b, point) pairs sorted by b (a (2, m) array)."""
    transfer[a, :] = np.inf
    tight[a, :] = 0
    width = cand.shape[1]
    for sweep in range(2):  # the least costs, then the points attaining them
        total = 0
        if sweep == 1:
            pairs = np.empty((2, tight[a].sum()), dtype=np.int64)
        i = head[a]
        while i >= 0:
            own = np.float64(value[i, slot[i]])
            for s in range(width):
                b = cand[i, s]
                if b == a:
                    continue
                cost = own - np.float64(value[i, s])
                if sweep == 0 and np.isfinite(cost) and cost <= transfer[a, b]:
                    if cost < transfer[a, b]:
                        transfer[a, b] = cost
                        tight[a, b] = 0
                    tight[a, b] += 1
                elif sweep == 1 and np.isfinite(cost) and cost == transfer[a, b]:
                    pairs[0, total], pairs[1, total] = b, i
                    total += 1
            i = nxt[i]
    order = np.argsort(pairs[0], kind="mergesort")
    movers[a] = pairs[:, order]


@njit(cache=True)
def _untighten(i, a, transfer, tight, cand, value, slot) -> None:
    """Point i leaves label a: it no longer counts among the least-cost movers of a's arcs."""
    own = np.float64(value[i, slot[i]])
    for s in range(cand.shape[1]):
        b = cand[i, s]
        cost = own - np.float64(value[i, s])
        if b != a and np.isfinite(cost) and cost == transfer[a, b]:
            tight[a, b] -= 1


@njit(cache=True)
def _mover_slot(i, b, cost, cand, value, slot) -> int:
    """The slot of label b among point i's candidates if moving i there costs ``cost``
    (the arc's least), else -1."""
    own = np.float64(value[i, slot[i]])
    for s in range(cand.shape[1]):
        if cand[i, s] == b:
            if own - np.float64(value[i, s]) == cost:
                return s
            return -1
    return -1


@njit(cache=True)
def _relax(u, best, transfer, delta, slack, base, flow, lo, hi, done, dist, pred) -> None:
    """Relax the arcs out of node u (a label, or T = K) at distance ``best``."""
    n_labels = delta.shape[0]
    if u == n_labels:  # T -> v, open while f_v > lo_v
        for v in range(n_labels):
            if not done[v] and flow[v] > lo[v]:
                r = max(slack - base[v] - delta[v], 0.0) + best
                if r < dist[v]:
                    dist[v], pred[v] = r, u
        return
    row = transfer[u]
    for v in range(n_labels):
        if not done[v] and row[v] != np.inf:
            r = max(row[v] + delta[u] - delta[v], 0.0) + best
            if r < dist[v]:
                dist[v], pred[v] = r, u
    if flow[u] < hi[u] and not done[n_labels]:  # u -> T, open while f_u < hi_u
        r = max(base[u] + delta[u] - slack, 0.0) + best
        if r < dist[n_labels]:
            dist[n_labels], pred[n_labels] = r, u


@njit(cache=True)
def _dijkstra(transfer, delta, slack, base, flow, lo, hi, surplus, dist, pred) -> None:
    """Shortest reduced distances from every surplus node over the K + 1 node graph
    (reduced costs clipped at 0 against rounding), and predecessors (-1: none)."""
    n_nodes = delta.shape[0] + 1
    done = np.zeros(n_nodes, dtype=np.bool_)
    dist[:] = np.inf
    pred[:] = -1
    for v in range(n_nodes):
        if surplus[v] > 0:
            dist[v] = 0.0
    for _ in range(n_nodes):
        u, best = -1, np.inf
        for v in range(n_nodes):
            if not done[v] and dist[v] < best:
                u, best = v, dist[v]
        if u < 0:
            return
        done[u] = True
        _relax(u, best, transfer, delta, slack, base, flow, lo, hi, done, dist, pred)


@njit(cache=True)
def _move(a, b, amount, phase, lists, graph, cand, value, slot, assign, stamp) -> None:
    """Move ``amount`` unmoved least-cost movers of arc a -> b (``graph``'s movers[a])."""
    head, nxt, prv = lists
    transfer, tight, movers = graph
    pairs = movers[a]
    moved = 0
    for q in range(np.searchsorted(pairs[0], b), pairs.shape[1]):
        i = pairs[1, q]
        if moved == amount or pairs[0, q] != b:
            return
        if stamp[i] == phase:  # moved already in this phase
            continue
        s = _mover_slot(i, b, transfer[a, b], cand, value, slot)
        _untighten(i, a, transfer, tight, cand, value, slot)
        if prv[i] >= 0:  # unlink from a, link at the head of b
            nxt[prv[i]] = nxt[i]
        else:
            head[a] = nxt[i]
        if nxt[i] >= 0:
            prv[nxt[i]] = prv[i]
        prv[i], nxt[i] = -1, head[b]
        if head[b] >= 0:
            prv[head[b]] = i
        head[b] = i
        assign[i], slot[i], stamp[i] = b, s, phase
        moved += 1


@njit(cache=True)
def _path_amount(t, surplus, pred, path, flow, lo, hi, tight) -> tuple[int, int, int]:
    """(root, length, units) of the tree path to target t, written to ``path`` from t back:
    as many units as its root's surplus, t's deficit, its slack arcs and its label arcs'
    unmoved least-cost movers allow."""
    n_labels = lo.shape[0]
    length, v = 0, t
    while pred[v] >= 0:
        path[length] = v
        length += 1
        v = pred[v]
    amount = min(surplus[v], -surplus[t])
    for p in range(length):
        b = path[p]
        a = pred[b]
        if a == n_labels:
            amount = min(amount, flow[b] - lo[b])
        elif b == n_labels:
            amount = min(amount, hi[a] - flow[a])
        else:
            amount = min(amount, tight[a, b])
    return v, length, amount


@njit(cache=True)
def _phase(state, lists, graph, cand, value, slot, assign, stamp, dirty) -> int:
    """One Dijkstra, the potential raise and the pushes: the points moved, -1 if no
    deficit is reached."""
    base, lo, hi, counts, flow, delta, slack, surplus, dist, pred, path, phase = state
    n_labels = lo.shape[0]
    _dijkstra(graph[0], delta, slack[0], base, flow, lo, hi, surplus, dist, pred)
    targets = np.flatnonzero((surplus < 0) & (dist < np.inf))
    if targets.size == 0:
        return -1
    cap = dist[targets].max()
    delta += np.minimum(dist[:n_labels], cap)
    slack[0] += min(dist[n_labels], cap)
    moves = 0
    for t in targets[np.argsort(dist[targets], kind="mergesort")]:  # by distance, index
        root, length, amount = _path_amount(t, surplus, pred, path, flow, lo, hi, graph[1])
        if amount <= 0:
            continue
        for p in range(length):
            b = path[p]
            a = pred[b]
            if a == n_labels:
                flow[b] -= amount
            elif b == n_labels:
                flow[a] += amount
            else:
                _move(a, b, amount, phase, lists, graph, cand, value, slot, assign, stamp)
                counts[a] -= amount
                counts[b] += amount
                dirty[a] = dirty[b] = True
                moves += amount
        surplus[root] -= amount
        surplus[t] += amount
    return moves


@njit(cache=True)
def run_phases(cand, value, base, lo, hi, slot, assign, counts, flow, delta, slack):
    """Phases until no node has a surplus; the arrays are updated in place.

    Returns (phases, moves, feasible, slack): feasible is False when a phase reaches no
    deficit node (the candidate graph cannot meet the bands).
    """
    n_rows = cand.shape[0]
    n_labels = lo.shape[0]
    n_nodes = n_labels + 1
    lists = _link(assign, n_labels)
    transfer = np.full((n_labels, n_labels), np.inf)  # built when some point must move
    tight = np.zeros((n_labels, n_labels), dtype=np.int64)  # unmoved least-cost movers
    movers = [np.empty((2, 0), dtype=np.int64) for _ in range(n_labels)]
    graph = (transfer, tight, movers)
    stamp = np.zeros(n_rows, dtype=np.int64)  # the phase that moved a point
    dirty = np.zeros(n_labels, dtype=np.bool_)
    surplus = np.empty(n_nodes, dtype=np.int64)
    slack_box = np.array([slack])
    dist, pred = np.empty(n_nodes), np.empty(n_nodes, dtype=np.int64)
    path = np.empty(n_nodes, dtype=np.int64)
    n_phases, n_moves = 0, 0
    while True:
        surplus[:n_labels] = counts - flow
        surplus[n_labels] = flow.sum() - n_rows
        if not np.any(surplus != 0):
            break
        if n_phases == 0:
            dirty[:] = True
        for a in np.flatnonzero(dirty):
            _refresh(a, transfer, tight, movers, lists[0], lists[1], cand, value, slot)
        dirty[:] = False
        n_phases += 1
        state = (base, lo, hi, counts, flow, delta, slack_box, surplus, dist, pred, path, n_phases)
        moves = _phase(state, lists, graph, cand, value, slot, assign, stamp, dirty)
        if moves < 0:
            return n_phases, n_moves, False, slack_box[0]
        n_moves += moves
    return n_phases, n_moves, True, slack_box[0]


# --------------------------------------------------------------------------- the auction
@njit(cache=True)
def _sift_down(price, person, first, size, at) -> None:
    """Restore the min-heap of one label's slots (entries first .. first + size) from
    position ``at`` down."""
    while True:
        child = 2 * at + 1
        if child >= size:
            return
        if child + 1 < size and price[first + child + 1] < price[first + child]:
            child += 1
        if price[first + at] <= price[first + child]:
            return
        a, c = first + at, first + child
        price[a], price[c] = price[c], price[a]
        person[a], person[c] = person[c], person[a]
        at = child


@njit(cache=True)
def _sift_up(price, person, first, at) -> None:
    """Restore the min-heap of one label's slots from position ``at`` up."""
    while at > 0:
        parent = (at - 1) // 2
        a, p = first + at, first + parent
        if price[p] <= price[a]:
            return
        price[a], price[p] = price[p], price[a]
        person[a], person[p] = person[p], person[a]
        at = parent


@njit(cache=True)
def _best_two(i, cand, value, ranked_at, cost) -> tuple[float, float, int]:
    """(best, second best, best label) of row i's utilities w_ij - cost_j over its
    candidates (w_ij = z_ij - ranked_at_j)."""
    best, second, choice = -np.inf, -np.inf, -1
    for s in range(cand.shape[1]):
        j = cand[i, s]
        utility = np.float64(value[i, s]) - ranked_at[j] - cost[j]
        if utility > best:
            best, second, choice = utility, best, j
        elif utility > second:
            second = utility
    return best, second, choice


@njit(cache=True)
def auction_bids(cand, value, ranked_at, limit, counts, eps, state, pending, max_bids):
    """Bids of a Gauss-Seidel auction for exact counts on candidate labels, from the rows
    ``pending`` until every row holds a slot, some rows need new candidates, or
    ``max_bids`` bids were made.

    Row i's utility for label j is w_ij - cost_j, w_ij = z_ij - ranked_at_j (z: the
    candidates' values ``value``, best first). Label j sells ``counts[j]`` identical
    slots, each at its own price (a min-heap); cost_j is the cheapest slot's price when
    all are sold, else the price of the unsold ones. An unassigned row bids for its best
    candidate at cost_j plus its margin over its second best plus ``eps``, evicting the
    holder of the cheapest slot when the label is full. ``limit[i]`` bounds the utility
    of every label outside row i's candidates (costs only rise, so a bound stays valid):
    the margin is taken against it too, and a row whose best candidate falls below it
    is set aside (its candidates must be re-ranked at the current costs).

    ``state`` = (price, person, first, size, cost, labels), updated in place. Returns
    (set-aside rows, bids made, rows still unassigned and not set aside).
    """
    price, person, first, size, cost, labels = state
    n_rows = cand.shape[0]
    queue = np.empty(n_rows, dtype=np.int64)  # a ring of the unassigned rows
    queue[: pending.shape[0]] = pending
    aside = np.empty(n_rows, dtype=np.int64)
    head, waiting, n_aside, bids = 0, pending.shape[0], 0, 0
    while waiting > 0 and bids < max_bids:
        i = queue[head]
        head = (head + 1) % n_rows
        waiting -= 1
        best, second, j = _best_two(i, cand, value, ranked_at, cost)
        if best < limit[i] or j < 0:
            aside[n_aside] = i
            n_aside += 1
            continue
        second = max(second, limit[i])
        margin = best - second if second > -np.inf else 0.0  # (one possible label)
        bid = cost[j] + margin + eps
        if size[j] < counts[j]:
            at = size[j]
            price[first[j] + at], person[first[j] + at] = bid, i
            size[j] += 1
            _sift_up(price, person, first[j], at)
        else:
            evicted = person[first[j]]
            labels[evicted] = -1
            queue[(head + waiting) % n_rows] = evicted
            waiting += 1
            price[first[j]], person[first[j]] = bid, i
            _sift_down(price, person, first[j], size[j], 0)
        if size[j] == counts[j]:
            cost[j] = price[first[j]]
        labels[i] = j
        bids += 1
    rest = np.empty(waiting, dtype=np.int64)
    for q in range(waiting):
        rest[q] = queue[(head + q) % n_rows]
    return aside[:n_aside].copy(), bids, rest

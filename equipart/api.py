"""The public entry points: thin, documented, validating everything before any work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from .backends.base import Backend, ColumnStats, ScoreKind
from .distributed import open_group
from .exact import exact_assign
from .factored import Factored
from .marginals import ColumnConstraint, Marginal, Relaxed, Uniform, as_marginal, normalise_dual
from .result import Assignment, SolverState
from .rounding import ROUNDERS, CountCheck, round_head
from .solver import RowSource, check_feasible, column_stats, mask_depth, run_sinkhorn
from .sources import InMemory, RowBlocks, open_source
from .validation import (
    ScoreSummary,
    check_acceleration,
    check_flag,
    check_kind,
    check_lam,
    check_positive_int,
    check_positive_real,
    check_rounding,
    check_support,
    check_tol,
    check_values,
    initial_dual,
    sweep_precision,
)

__all__ = ["assign_labels", "sinkhorn_codes"]


def _source(
    backend: str | Backend, scores: Any, allow_empty_rows: bool = False
) -> tuple[Backend, RowSource]:
    """The backend and row source for ``scores``: an array, a memmap, a .npy path or a
    ``RowBlocks`` factory (see ``equipart.sources.open_source``)."""
    return open_source(scores, backend, allow_empty_rows=allow_empty_rows)


def _check_solver_arguments(tol, max_iter, check_every, acceleration, callback) -> tuple:
    """The Sinkhorn loop's settings, checked: (tol, max_iter, check_every, acceleration)."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable or None, got {type(callback).__name__}")
    return (
        check_tol(tol),
        check_positive_int(max_iter, "max_iter"),
        check_positive_int(check_every, "check_every"),
        check_acceleration(acceleration),
    )


def _exact_labels(
    scores: Any,
    lam: float,
    *,
    marginals: Marginal | None,
    input: str,
    backend: str | Backend,
    warm_start: Any,
    return_codes: bool,
    solver_arguments: tuple,
) -> Assignment:
    """``assign_labels(..., rounding="exact")``: every argument checked as for a solve,
    then ``exact_assign`` (which needs the whole matrix and no Sinkhorn loop)."""
    return_codes = check_flag(return_codes, "return_codes")
    check_kind(input)
    check_lam(lam)
    _check_solver_arguments(*solver_arguments)
    if return_codes:
        raise ValueError(
            "return_codes: rounding='exact' solves the hard LP and has no transport plan Q; "
            "pass return_codes=False, or use rounding='argmax' or 'balanced' for codes"
        )
    if isinstance(scores, Factored):
        raise ValueError(
            "scores: rounding='exact' solves a dense LP on the whole N x K matrix; pass "
            "scores.to_dense() where it fits, or use rounding='balanced' (the same optimum)"
        )
    if isinstance(scores, RowBlocks) or (callable(scores) and not hasattr(scores, "shape")):
        raise ValueError(
            "scores: rounding='exact' reads every entry of the matrix at once (a dense LP); "
            "pass an array, a memmap or a .npy path, or use rounding='balanced' on a stream"
        )
    spec = as_marginal(marginals)
    _, source = _source(backend, scores)
    initial_dual(warm_start, source.n_heads, source.n_labels, lam)  # checked; the LP needs none
    result = exact_assign(source.scores, spec, input, backend=backend)
    # the LP's prices are the lam -> infinity limit of g / lam: at this lam, g = lam * prices
    state = SolverState(g=result.state.g * lam, lam=lam, shape=result.state.shape)
    return replace(result, state=state)


def _check_all_values(
    source: RowSource, backend: Backend, kind: ScoreKind, lam: float, lam_name: str = "lam"
) -> list[ScoreSummary]:
    """``check_values`` over every head (for a rank without rows: support and spread 0)."""
    if source.n_rows == 0:
        empty = ScoreSummary(np.zeros(source.n_labels, dtype=np.int64), 0.0)
        return [empty] * source.n_heads
    return [
        check_values(
            backend,
            source.blocks(head),
            kind,
            lam=lam,
            lam_name=lam_name,
            where=f" of head {head}" if source.n_heads > 1 else "",
        )
        for head in range(source.n_heads)
    ]


def _stranded_rows(
    source: RowSource, backend: Backend, kind: ScoreKind, closed: np.ndarray, lam: float
) -> tuple:
    """(count, (head, row) of the first) of the rows that can take only labels the
    marginals close (size 0): no assignment can place them. A row's best of L_ij + g_j,
    with g_j = -inf on closed labels, times lam, is -inf in the sweep's float type there:
    zero probabilities, or masks at the dtype's lowest value (a finite mask such as -1e9
    still lets the row take one of those labels, as the exact LP would). One pass, run
    only when labels are closed."""
    g_open = np.where(closed, -np.inf, 0.0)
    count, first = 0, None
    for head in range(source.n_heads):
        start = 0
        for block in source.blocks(head):
            if block.shape[0]:
                precision = sweep_precision(backend.shape_dtype(block)[1])
                values = backend.top_labels(block, kind, 1.0, g_open, 1)[1]
                best_open = backend.to_numpy(values)[:, 0].astype(np.float64)
                rows = np.flatnonzero(best_open < -float(np.finfo(precision).max) / lam)
                if rows.size and first is None:
                    first = (head, start + int(rows[0]))
                count += rows.size
            start += block.shape[0]
    return count, first


def _check_placeable(
    comm: Any,
    source: RowSource,
    backend: Backend,
    kind: ScoreKind,
    lam: float,
    constraint: Any,
    supports: list,
) -> None:
    """Before the solve: refuse rows that can take only labels the marginals close (size
    0; a pass only when labels are closed) and labels possible at fewer rows than their
    least size (zero probabilities, -inf scores), from counts summed over the ranks in
    one all-reduce."""
    least, most = constraint.count_bounds()
    closed = most == 0
    count, first = 0, None
    if closed.any():
        with comm.rounding():  # across ranks, a failing read is announced by the all-reduce
            count, first = _stranded_rows(source, backend, kind, closed, lam)
    totals, total = comm.total_support(supports, source.n_labels, count)
    if total:
        if comm.sharded:
            where = f"{total} row(s) of the ranks have"
        else:  # the first one by its index
            head, row = first
            where = f"row {row}" + (f" of head {head}" if source.n_heads > 1 else "")
            where += (f" (and {total - 1} more rows)" if total > 1 else "") + " has"
        allowed = (
            "non-zero probability"
            if kind == "probs"
            else "scores above the dtype's lowest values (masks), at this lam,"
        )
        raise ValueError(
            f"scores: {where} {allowed} only on labels the marginals give no "
            f"point (closed: {np.flatnonzero(closed)[:10].tolist()}), so no assignment can "
            f"place {'it' if total == 1 else 'them'}; give one of their labels a size or "
            "check the scores"
        )
    for head, support in enumerate(totals):
        check_support(support, least, head if source.stacked else None, kind)


def _logprob_sum(source: RowSource, backend: Backend, head: int, kind: ScoreKind, labels: Any):
    total, start = 0.0, 0
    for block in source.blocks(head):
        stop = start + block.shape[0]
        total += backend.logprob_sum(block, kind, labels[start:stop])
        start = stop
    return total


def _per_head(backend: Backend, parts: list[Any], stacked: bool) -> Any:
    return backend.stack(parts) if stacked else parts[0]


def finish_assignment(
    source: InMemory,
    backend: Backend,
    *,
    kind: ScoreKind,
    lam: float,
    g: np.ndarray,
    constraint: ColumnConstraint,
    rounding: str,
    return_codes: bool,
    n_iter: int,
    converged: bool,
    error: float,
    history: tuple[float, ...],
    check: CountCheck,
) -> Assignment:
    """Round every head (``equipart.rounding.round_head``), compute the objective (and
    codes), and package the result. ``check`` carries the count check's hooks (a
    distributed solve's own rounder and sums across ranks)."""
    labels, codes, used, total = [], [], [], 0.0
    for head in range(source.n_heads):
        head_labels, how = round_head(
            rounding, source, backend, head, kind, lam, g[head], constraint, check
        )
        labels.append(head_labels)
        used.append(how)
        total += _logprob_sum(source, backend, head, kind, head_labels)
        if return_codes:
            parts = [backend.codes(b, kind, lam, g[head]) for b in source.blocks(head)]
            codes.append(backend.concat(parts))
    shape = (
        (source.n_heads, source.n_rows, source.n_labels)
        if source.stacked
        else (
            source.n_rows,
            source.n_labels,
        )
    )
    state = SolverState(g=g if source.stacked else g[0], lam=lam, shape=shape)
    return Assignment(
        labels=_per_head(backend, labels, source.stacked),
        state=state,
        n_iter=n_iter,
        converged=converged,
        error=error,
        history=history,
        objective=total / (source.n_rows * source.n_heads),
        rounding=used[0] if len(set(used)) == 1 else ",".join(used),
        codes=_per_head(backend, codes, source.stacked) if return_codes else None,
    )


def assign_labels(
    scores: Any,
    lam: float = 25.0,
    *,
    marginals: Marginal | None = None,
    rounding: str = "auto",
    tol: float = 1e-3,
    max_iter: int = 1000,
    check_every: int = 1,
    warm_start: SolverState | np.ndarray | None = None,
    input: str = "logits",
    backend: str | Backend = "auto",
    return_codes: bool = False,
    callback: Callable[[int, float], Any] | None = None,
    group: Any = None,
    acceleration: str = "auto",
) -> Assignment:
    r"""Assign labels to N points so that every label gets its share (SeLa's step).

    Solves the entropy-regularised transport problem of self-labelling (Asano et al.,
    ICLR 2020)

    .. math:: \max_Q \langle Q, L\rangle + \tfrac{1}{\lambda} H(Q)
              \quad\text{s.t. } Q\mathbf 1 = \mathbf 1,\; Q^\top \mathbf 1 = b

    with L the log-probabilities of the scores and b the label masses in counts (N/K
    each by default). The solution is ``Q_ij = exp(lam * L_ij + f_i + g_j)``; hard labels
    are ``argmax_j (lam * L_ij + g_j)`` (``rounding="argmax"``).

    Parameters
    ----------
    scores : array, shape (N, K) or (H, N, K), path, or RowBlocks
        Scores of N points over K labels (H independent heads are solved in one call):
        a NumPy array, a torch tensor (CPU or CUDA) or a CuPy array; or, out of core, a
        ``np.memmap``, a path to a ``.npy`` file, or ``equipart.RowBlocks(factory)``,
        streamed in row blocks every sweep with memory O(block + N + K); or
        ``equipart.Factored(features, prototypes)``, computed a block of rows at a time
        (one GEMM each), never forming N x K. Never modified.
        With ``group``, this rank's rows only (possibly none). -inf in logits or
        log-probabilities marks a label impossible for a point (zero probability, as
        ``masked_fill(mask, float("-inf"))`` writes); NaN and +inf are refused.
    lam : float, default 25.0
        Inverse temperature (SeLa's lambda): larger is closer to the hard LP.
    marginals : Marginal, optional
        Label masses: ``Uniform()`` (default), ``Counts(sizes)``, ``Prior(p)``, a band
        ``Bounds(lo, hi)`` / ``Bounds.relative(0.9, 1.1)``, or ``Relaxed(target, tau)``.
    rounding : {"auto", "argmax", "balanced", "exact"}, default "auto"
        How hard labels are made. ``"argmax"`` is SeLa's rule, argmax_j (lam L_ij + g_j);
        it warns (``RoundingWarning``) where its label counts miss their sizes by more
        than rounding noise (tied rows, such as an untrained network's constant output,
        all take the first of their tied labels). ``"balanced"`` gives every label
        exactly its size (floor/ceil of N b_j), a certified optimum of the hard LP
        (``equipart.balanced``). ``"auto"`` is argmax where its counts are within that
        noise of the sizes and balanced where they are not (for ``Relaxed``, which has
        no hard sizes, argmax with the warning); ``result.rounding`` says which ran
        (per head, comma-separated, where heads differ; docs/rounding.md). ``"exact"``
        skips the solve and calls ``exact_assign``
        (POT's network simplex; refuses problems too big for it, ``RowBlocks`` streams and
        ``return_codes=True``; the other arguments are checked as for a solve, a
        ``warm_start`` included, though the LP does not use it; its ``state`` holds lam
        times the LP's label prices at the lam passed, so that a training loop can pass it
        back as ``warm_start``). ``"balanced"`` and
        ``"exact"`` need hard counts, so they refuse ``Relaxed`` marginals.
    tol : float, default 1e-3
        Stop when max_j |m_j / b_j - 1| <= tol, m_j being label j's mass in Q.
    max_iter : int, default 1000
        Largest number of sweeps; hitting it warns (ConvergenceWarning) and returns the
        best state seen with ``converged=False``.
    check_every : int, default 1
        Test convergence (and record history, call the callback) every this many sweeps.
    warm_start : SolverState or array, optional
        A previous result's ``state`` (same K and lam), or a dual g of shape (K,)/(H, K).
    input : {"logits", "logprobs", "probs"}
        What ``scores`` hold. Logits and log-probabilities give the same solution.
    backend : str or Backend, default "auto"
        ``"auto"`` picks by the array's library; or ``"numpy"``, ``"numba"``,
        ``"torch"``, ``"cupy"`` (see ``equipart.backends.available()``); or a backend
        object with settings, such as ``TorchBackend(kernel="torch")``.
    return_codes : bool, default False
        Also return Q (rows sum to 1) as ``codes``; this allocates an N x K array.
    callback : callable, optional
        ``callback(iteration, error)`` at each check; returning True (or ``numpy.True_``)
        stops the solve.
        With ``group``, it runs on every rank and any rank's True stops all of them.
    group : None, "default" or torch.distributed.ProcessGroup
        ``None`` (default) solves in this process only, even when torch.distributed is
        initialised. ``"default"`` (the WORLD group) or a ProcessGroup solves the
        concatenation of every member rank's ``scores`` (in rank order): column statistics
        are all-reduced per sweep (O(K) numbers), the marginals bind to the global N, every
        rank stops at the same sweep with the same state, and each rank gets the labels of
        its own rows. ``rounding="auto"``, ``"argmax"`` and ``"balanced"`` (exact
        global counts) work across ranks. See ``equipart.distributed`` and docs/distributed.md.
    acceleration : {"auto", "anderson", "overrelax", "none"}, default "auto"
        How the column step is accelerated (any marginal). ``"auto"``: quasi-Newton
        (L-BFGS) steps on the semi-dual for equalities and relaxed targets, Anderson
        acceleration for bands, each falling back to plain steps where it does not
        help; 11x fewer sweeps than plain Sinkhorn (geometric mean; 1.3-290x) on the
        problems of benchmarks/results/acceleration.json, never more. ``"anderson"``: safeguarded
        Anderson acceleration for every marginal. ``"overrelax"``: adaptive
        over-relaxation (up to about 2x fewer sweeps). ``"none"``: plain Sinkhorn.
        Accelerated iterates depend on rounding (another backend, rank count or
        streaming block size), so solves agree at convergence, within the tolerance of
        docs/design.md, not sweep by sweep; ``"none"`` and ``"overrelax"`` repeat
        the same sweeps wherever the sweeps agree.

    Returns
    -------
    Assignment
        ``labels`` (int64, in the input's library and device), ``state``, ``n_iter``,
        ``converged``, ``error``, ``history``, ``objective`` and optionally ``codes``.
    """
    if rounding == "exact" and group is None:  # the hard LP needs no Sinkhorn solve
        return _exact_labels(
            scores,
            lam,
            marginals=marginals,
            input=input,
            backend=backend,
            warm_start=warm_start,
            return_codes=return_codes,
            solver_arguments=(tol, max_iter, check_every, acceleration, callback),
        )
    comm = open_group(group)
    with comm.validating():  # a rank whose inputs fail tells the others in the handshake
        return_codes = check_flag(return_codes, "return_codes")
        engine, source = _source(backend, scores, allow_empty_rows=comm.sharded)
        kind = check_kind(input)
        lam = check_lam(lam)
        tol, max_iter, check_every, acceleration = _check_solver_arguments(
            tol, max_iter, check_every, acceleration, callback
        )
        rounding = check_rounding(rounding)
        spec = as_marginal(marginals)
        if rounding == "balanced" and isinstance(spec, Relaxed):
            raise ValueError(
                "rounding: 'balanced' enforces hard label counts, and a Relaxed marginal has "
                "none (any count from 0 to N); use rounding='argmax', or Bounds(lo, hi) for "
                "count limits"
            )
        if not comm.sharded:  # marginal errors before the data pass (ranks: global N later)
            spec.bind(source.n_rows, source.n_labels, lam)
        g0 = initial_dual(warm_start, source.n_heads, source.n_labels, lam)
        summaries = _check_all_values(source, engine, kind, lam)
    n_rows = comm.agree(  # the global N; K, lam, ... must match on every rank
        source.n_rows,
        entry="assign_labels",
        n_heads=source.n_heads,
        n_labels=source.n_labels,
        dtype=source.dtype,
        prototypes=getattr(source, "prototypes_key", None),  # Factored scores: shared factors
        lam=lam,
        input=kind,
        tol=tol,
        max_iter=max_iter,
        check_every=check_every,
        rounding=rounding,
        marginals=spec,
        warm_start=None if warm_start is None else g0,  # a cold start anneals lam: not zeros
        callback=callback is not None,
        acceleration=acceleration,
    )
    constraint = spec.bind(n_rows, source.n_labels, lam)
    source, engine = comm.shard(source, engine, n_rows)
    supports = [summary.support for summary in summaries]
    _check_placeable(comm, source, engine, kind, lam, constraint, supports)

    # per-solve backend state (Backend.for_solve); entry-point backends need not subclass
    loop_engine = engine.for_solve() if hasattr(engine, "for_solve") else engine
    outcome = run_sinkhorn(
        source,
        loop_engine,
        kind=kind,
        lam=lam,
        constraint=constraint,
        tol=tol,
        max_iter=max_iter,
        check_every=check_every,
        g0=g0,
        callback=comm.wrap_callback(callback),
        reduce=comm.reduce,
        anneal=warm_start is None,
        acceleration=acceleration,
        depth=mask_depth(source.dtype),
        spread=max(summary.spread for summary in summaries),
    )
    g = comm.same_dual(outcome.g)
    result = None  # stays None on a rank whose rounding failed; comm.finish names it
    with comm.rounding():  # a rank failing here is named in the objective's all-reduce
        result = finish_assignment(
            source,
            engine,
            kind=kind,
            lam=lam,
            g=g,
            constraint=constraint,
            rounding=rounding,
            return_codes=return_codes,
            n_iter=outcome.n_iter,
            converged=outcome.converged,
            error=outcome.error,
            history=outcome.history,
            check=CountCheck(
                error=outcome.error,
                balanced=comm.rounder("balanced") or ROUNDERS["balanced"],
                total=comm.total_counts,
                reduce=comm.reduce,
            ),
        )
    return comm.finish(result)


def sinkhorn_codes(
    scores: Any,
    eps: float = 0.05,
    n_iter: int = 3,
    *,
    input: str = "logits",
    backend: str | Backend = "auto",
    group: Any = None,
) -> Any:
    r"""Soft batch codes of SwAV / DINOv2: their Sinkhorn loop, a fixed number of steps.

    The loop of SwAV's ``distributed_sinkhorn`` (Caron et al., NeurIPS 2020) and of
    DINOv2's ``sinkhorn_knopp_teacher`` (with ``eps`` the teacher temperature), step for
    step: with P = exp(scores / eps), B samples and K prototypes, ``n_iter`` times
    normalise every prototype's column of P to mass 1/K and then every sample's row to
    1/B, and return B P (every row sums to 1, every column is close to B/K). Their first
    step acts on the raw kernel, so the result depends on the rows' scales; it is part of
    their algorithm and kept here.

    Computed in the log domain on the column dual g (P_ij = exp(lam S_ij + f_i + g_j),
    lam = 1/eps): the first prototype step is g_j = -log sum_i exp(lam S_ij), taken with
    each column's maximum subtracted (``Backend.column_logsumexp``), so scores whose
    lam S_ij overflow exp, where their loops return inf or NaN, give finite codes; each
    later prototype step is one fused sweep (rows normalised, column masses measured,
    g_j += log(B/K) - log m_j); the codes are the row-normalised Q at the last g.

    Parameters
    ----------
    scores : array, shape (B, K) or (H, B, K)
        Prototype scores of a batch (for example cosine similarities), any backend;
        -inf marks a prototype impossible for a sample.
    eps : float, default 0.05
        Entropic temperature (SwAV: 0.05; DINOv2 teacher: the teacher temperature).
    n_iter : int, default 3
        Prototype (column) steps, each followed by a sample (row) step; SwAV and DINOv2
        use 3.
    group : None, "default" or torch.distributed.ProcessGroup
        As in :func:`assign_labels`: ``None`` is this process only; otherwise every rank
        passes its part of the global batch, the column sums are all-reduced (SwAV's
        ``dist.all_reduce(sum_of_rows)``), B is the global batch size, and each rank gets
        the codes of its own rows.

    Returns
    -------
    array, shape like ``scores``
        Q in the input's array library, on its device, not tracking gradients; float32
        for float16, bfloat16 and float32 scores, float64 otherwise.
    """
    comm = open_group(group)
    with comm.validating():
        engine, source = _source(backend, scores, allow_empty_rows=comm.sharded)
        kind = check_kind(input)
        eps = check_positive_real(eps, "eps", "a temperature; SwAV uses 0.05")
        if not np.isfinite(1.0 / eps):
            raise ValueError(f"eps: {eps!r} is too small (1 / eps overflows); SwAV uses 0.05")
        lam = check_lam(1.0 / eps)
        n_iter = check_positive_int(n_iter, "n_iter")
        summaries = _check_all_values(source, engine, kind, lam, lam_name="eps")
    n_rows = comm.agree(
        source.n_rows,
        entry="sinkhorn_codes",
        n_heads=source.n_heads,
        n_labels=source.n_labels,
        dtype=source.dtype,
        prototypes=getattr(source, "prototypes_key", None),
        lam=lam,
        input=kind,
        n_iter=n_iter,
    )
    constraint = Uniform().bind(n_rows, source.n_labels)
    depth = mask_depth(source.dtype)
    source, engine = comm.shard(source, engine, n_rows)
    codes = []
    for head in range(source.n_heads):
        where = f"head {head}: " if source.n_heads > 1 else ""
        # the masks test of assign_labels, on a sweep at g = 0 (reduced: the same on every
        # rank, which all make it); in one process only where some entry lies more than
        # the mask depth below another (-inf or zero probabilities included)
        zero = np.zeros(source.n_labels)
        if comm.sharded or summaries[head].extent > depth:
            stats = column_stats(source, engine, head, kind, lam, zero, comm.reduce)
            remedy = "leave those prototypes out of the scores, or check the scores"
            check_feasible(constraint, stats, lam, zero, depth, remedy=remedy, where=where)
        g = normalise_dual(-_column_logsumexp(source, engine, head, kind, lam, comm.reduce))
        for _ in range(n_iter - 1):
            stats = column_stats(source, engine, head, kind, lam, g, comm.reduce)
            g = constraint.update(g, stats.log_mass())
        with comm.rounding():  # a rank failing here is named by the collective below
            parts = [engine.codes(b, kind, lam, g) for b in source.blocks(head)]
            codes.append(engine.concat(parts))
    comm.raise_failures("codes pass")
    return _per_head(engine, codes, source.stacked)


def _column_logsumexp(
    source: RowSource,
    backend: Backend,
    head: int,
    kind: ScoreKind,
    lam: float,
    reduce: Callable[[ColumnStats], ColumnStats] | None,
) -> np.ndarray:
    """log sum_i exp(lam L_ij) over every row of ``head`` and every rank (float64, (K,)).

    Blocks merge by ``np.logaddexp``; ranks by the column-statistics reducer, twice: the
    maxima (as ``colmax``), then the sums of exp(lse - max) (as ``colsum``)."""
    total = np.full(source.n_labels, -np.inf)
    for block in source.blocks(head):
        if block.shape[0]:
            np.logaddexp(total, backend.column_logsumexp(block, kind, lam), out=total)
    if reduce is None:
        return total
    zeros = np.zeros(source.n_labels)
    top = reduce(ColumnStats(zeros, total)).colmax
    shift = np.where(top > -np.inf, top, 0.0)
    with np.errstate(divide="ignore"):
        summed = reduce(ColumnStats(np.exp(total - shift), top)).colsum
        return np.log(summed) + shift

"""The public entry points: thin, documented, validating everything before any work.

Each checks its arguments once (``equipart.validation``) into the immutable objects of
``equipart.problem``, agrees them across ranks where the solve is distributed, runs the
driver (``equipart.solver.run_sinkhorn``) and packages the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from .backends.base import Backend
from .distributed import RankGroup, SingleProcess, open_group
from .exact import exact_assign
from .factored import Factored
from .marginals import Marginal, Relaxed, Uniform, as_marginal
from .problem import OutputOptions, Problem, SolveOptions
from .result import Assignment, SolverState
from .rounding import ROUNDERS, CountCheck, round_head
from .solver import SolveOutcome, run_sinkhorn
from .sources import RowBlocks, open_source
from .validation import (
    check_all_values,
    check_eps,
    check_flag,
    check_kind,
    check_lam,
    check_placeable,
    check_positive_int,
    check_prototypes_possible,
    check_rounding,
    initial_dual,
    solve_options,
)

__all__ = ["assign_labels", "sinkhorn_codes"]

Group = SingleProcess | RankGroup


def _exact_labels(
    scores: Any,
    lam: float,
    *,
    marginals: Marginal | None,
    input: str,
    backend: str | Backend,
    warm_start: Any,
    return_codes: bool,
) -> Assignment:
    """``assign_labels(..., rounding="exact")``: every argument checked as for a solve
    (the loop's settings by the caller), then ``exact_assign`` (which needs the whole
    matrix and no Sinkhorn loop)."""
    return_codes = check_flag(return_codes, "return_codes")
    check_kind(input)
    check_lam(lam)
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
    _, source = open_source(scores, backend)
    initial_dual(warm_start, source.n_heads, source.n_labels, lam)  # checked; the LP needs none
    result = exact_assign(source.scores, spec, input, backend=backend)
    # the LP's prices are the lam -> infinity limit of g / lam: at this lam, g = lam * prices
    state = SolverState(g=result.state.g * lam, lam=lam, shape=result.state.shape)
    return replace(result, state=state)


def _checked_problem(
    scores: Any,
    lam: Any,
    *,
    input: Any,
    backend: str | Backend,
    marginals: Any,
    warm_start: Any,
    output: OutputOptions,
    sharded: bool,
) -> Problem:
    """The problem of an ``assign_labels`` call, every argument checked, the values of
    the scores in one pass (``check_all_values``). In one process the marginals are bound
    to N first, so that their errors come before that pass (across ranks they bind to the
    global N, after the handshake)."""
    engine, source = open_source(scores, backend, allow_empty_rows=sharded)
    kind, lam = check_kind(input), check_lam(lam)
    spec = as_marginal(marginals)
    if output.rounding == "balanced" and isinstance(spec, Relaxed):
        raise ValueError(
            "rounding: 'balanced' enforces hard label counts, and a Relaxed marginal has "
            "none (any count from 0 to N); use rounding='argmax', or Bounds(lo, hi) for "
            "count limits"
        )
    if not sharded:
        spec.bind(source.n_rows, source.n_labels, lam)
    g0 = None
    if warm_start is not None:
        g0 = initial_dual(warm_start, source.n_heads, source.n_labels, lam)
    summaries = check_all_values(source, engine, kind, lam, log_normaliser=True)
    return Problem(source, engine, lam, kind, spec, g0, summaries=summaries)


def _agree(comm: Group, entry: str, problem: Problem, *settings: Any) -> Problem:
    """The problem as this process solves it: the handshake of a distributed call (every
    rank's rows counted, the agreed fields compared), this rank's shard of the global N,
    and the marginals bound to that N."""
    n_rows = comm.agree(entry, problem, *settings)
    return comm.shard(problem, n_rows).bound()


def _codes(problem: Problem, head: int, g: Any) -> Any:
    """Q of one head at dual g (rows sum to 1), in the scores' library."""
    backend = problem.backend
    parts = [backend.codes(b, problem.kind, problem.lam, g) for b in problem.source.blocks(head)]
    return backend.concat(parts)


def _logprob_sum(problem: Problem, head: int, labels: Any) -> float:
    """sum_i log P_i,labels_i of one head. For logits whose check reported the rows'
    log-normalisers (``ScoreSummary.log_normaliser``), the picked scores summed as they
    are (as log-probabilities) less that sum: a read of one score per row instead of a
    pass over every score."""
    kind, normaliser = problem.kind, 0.0
    if problem.summaries and kind == "logits":
        reported = problem.summaries[head].log_normaliser
        if not math.isnan(reported):
            kind, normaliser = "logprobs", reported
    total, start = 0.0, 0
    for block in problem.source.blocks(head):
        stop = start + block.shape[0]
        total += problem.backend.logprob_sum(block, kind, labels[start:stop])
        start = stop
    return total - normaliser


def _per_head(backend: Backend, parts: list[Any], stacked: bool) -> Any:
    return backend.stack(parts) if stacked else parts[0]


def finish_assignment(
    problem: Problem, outcome: SolveOutcome, output: OutputOptions, check: CountCheck
) -> Assignment:
    """Round every head (``equipart.rounding.round_head``) at the solved dual, compute the
    objective (and codes), and package the result. ``check`` carries the count check's
    hooks (a distributed solve's own rounder and sums across ranks)."""
    g, backend, stacked = outcome.g, problem.backend, problem.stacked
    labels, codes, used, total = [], [], [], 0.0
    for head in range(problem.n_heads):
        head_labels, how = round_head(output.rounding, problem, head, g[head], check)
        labels.append(head_labels)
        used.append(how)
        total += _logprob_sum(problem, head, head_labels)
        if output.return_codes:
            codes.append(_codes(problem, head, g[head]))
    return Assignment(
        labels=_per_head(backend, labels, stacked),
        state=SolverState(g=g if stacked else g[0], lam=problem.lam, shape=problem.shape),
        n_iter=outcome.n_iter,
        converged=outcome.converged,
        error=outcome.error,
        history=outcome.history,
        objective=total / (problem.n_rows * problem.n_heads),
        rounding=used[0] if len(set(used)) == 1 else ",".join(used),
        codes=_per_head(backend, codes, stacked) if output.return_codes else None,
        start_sweeps=outcome.start_sweeps,
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
        solve_options(tol, max_iter, check_every, acceleration, callback)
        return _exact_labels(
            scores,
            lam,
            marginals=marginals,
            input=input,
            backend=backend,
            warm_start=warm_start,
            return_codes=return_codes,
        )
    comm = open_group(group)
    with comm.validating():  # a rank whose inputs fail tells the others in the handshake
        output = OutputOptions(check_rounding(rounding), check_flag(return_codes, "return_codes"))
        options = solve_options(
            tol, max_iter, check_every, acceleration, callback, anneal=warm_start is None
        )
        problem = _checked_problem(
            scores,
            lam,
            input=input,
            backend=backend,
            marginals=marginals,
            warm_start=warm_start,
            output=output,
            sharded=comm.sharded,
        )
    problem = _agree(comm, "assign_labels", problem, options, output)
    check_placeable(comm, problem)
    # per-solve backend state (Backend.for_solve); entry-point backends need not subclass
    engine = problem.backend
    engine = engine.for_solve() if hasattr(engine, "for_solve") else engine
    callback = comm.wrap_callback(options.callback)  # any rank's True stops every rank
    outcome = run_sinkhorn(replace(problem, backend=engine), replace(options, callback=callback))
    outcome = replace(outcome, g=comm.same_dual(outcome.g))  # group rank 0's on every rank
    balanced = comm.rounder("balanced") or ROUNDERS["balanced"]
    check = CountCheck(outcome.error, balanced, comm.total_counts, problem.reduce)
    result = None  # stays None on a rank whose rounding failed; comm.finish names it
    with comm.rounding():  # a rank failing here is named in the objective's all-reduce
        result = finish_assignment(problem, outcome, output, check)
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
        engine, source = open_source(scores, backend, allow_empty_rows=comm.sharded)
        kind, lam = check_kind(input), check_eps(eps)
        steps = check_positive_int(n_iter, "n_iter")
        summaries = check_all_values(source, engine, kind, lam, lam_name="eps")
    problem = Problem(source, engine, lam, kind, Uniform(), summaries=summaries)
    options = SolveOptions(acceleration="none", fixed_steps=steps)
    problem = _agree(comm, "sinkhorn_codes", problem, options)
    check_prototypes_possible(problem, comm.sharded)
    g = run_sinkhorn(problem, options).g
    codes = []
    for head in range(problem.n_heads):
        with comm.rounding():  # a rank failing here is named by the collective below
            codes.append(_codes(problem, head, g[head]))
    comm.raise_failures("codes pass")
    return _per_head(problem.backend, codes, problem.stacked)

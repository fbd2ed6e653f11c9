"""Distributed solves over torch.distributed (Gloo on CPU, spawned processes).

Each test spawns one small world (3 processes) and runs several scenarios in it, so the
cost of starting interpreters is paid three times for the whole file. Every wait is
bounded: a world that does not report within its deadline is killed and the test fails.
Results come back to the parent, which compares them with single-process solves of the
concatenated rows.
"""

from __future__ import annotations

import os
import queue
import socket
import time
import traceback
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest
from dual_tolerance import assert_same_solution, dual_tolerance, plain_rate

import equipart
from equipart import (
    Bounds,
    Counts,
    Factored,
    Relaxed,
    RowBlocks,
    Uniform,
    assign_labels,
    sinkhorn_codes,
)

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with Gloo is not available", allow_module_level=True)

N_ROWS, N_LABELS, LAM = 257, 6, 8.0
GROUP_TIMEOUT_S = 20  # the process group's timeout: the bound on any failure's detection
WORLD_DEADLINE_S = 120  # the parent's bound on a whole world (spawn, import, scenarios)
# Unequal shards of the 257 rows per group size, including a rank with no rows.
SHARDS = {1: [257], 2: [100, 157], 3: [180, 0, 77]}


def _scores(n_rows: int = N_ROWS, n_labels: int = N_LABELS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n_rows, n_labels)).astype(np.float32)


NEAR_BALANCED = (Bounds.relative(0.9, 1.1), Relaxed(Uniform(), 2.0))


def _shard(array: np.ndarray, sizes: list[int], rank: int) -> np.ndarray:
    start = sum(sizes[:rank])
    return array[..., start : start + sizes[rank], :]


# --------------------------------------------------------------------------- harness
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(
    rank: int, world: int, port: int, scenarios, out, workdir: str, backend: str = "gloo"
) -> None:
    """Child process: join the world, run the scenarios in order, report each one."""
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=GROUP_TIMEOUT_S),
        )
        for name in scenarios:
            out.put((rank, name, True, SCENARIOS[name](rank, world, workdir)))
    except BaseException:  # report anything, the parent decides
        out.put((rank, "?", False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run_world(
    scenarios: tuple[str, ...],
    world: int,
    tmp_path,
    dying: dict[int, int] | None = None,
    backend: str = "gloo",
) -> dict[str, dict[int, object]]:
    """Spawn ``world`` ranks running ``scenarios``; results[scenario][rank], or fail.

    ``dying`` maps the ranks expected to exit during the last scenario (without reporting
    it) to their exit codes.
    """
    dying = dying or {}
    expected = len(scenarios) * world - len(dying)
    context = torch.multiprocessing.get_context("spawn")
    out = context.Queue()
    port = _free_port()
    procs = [
        context.Process(
            target=_entry, args=(r, world, port, scenarios, out, str(tmp_path), backend)
        )
        for r in range(world)
    ]
    for proc in procs:
        proc.start()
    results: dict[str, dict[int, object]] = {name: {} for name in scenarios}
    received = 0
    deadline = time.monotonic() + WORLD_DEADLINE_S
    try:
        while received < expected and time.monotonic() < deadline:
            try:
                rank, name, ok, payload = out.get(timeout=1.0)
            except queue.Empty:
                if all(not p.is_alive() for p in procs) and out.empty():
                    break
                continue
            if not ok:
                pytest.fail(f"rank {rank} of {scenarios} failed:\n{payload}")
            results[name][rank] = payload
            received += 1
    finally:
        for proc in procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
    for rank, code in dying.items():
        assert procs[rank].exitcode == code, f"rank {rank} exited with {procs[rank].exitcode}"
    for position, name in enumerate(scenarios):
        gone = set(dying) if position == len(scenarios) - 1 else set()
        missing = sorted(set(range(world)) - set(results[name]) - gone)
        if missing:
            pytest.fail(f"scenario {name!r}: ranks {missing} never reported (hang or crash)")
    return results


def _outcome(call) -> tuple[str, str]:
    """('ok', '') or (exception type name, message) of ``call()``."""
    try:
        call()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return "ok", ""


def _refilled_blocks(rows: np.ndarray, step: int = 7) -> RowBlocks:
    """The rows as a loader that refills one buffer per block, as data loaders do."""
    buffer = np.empty((step, rows.shape[1]), dtype=rows.dtype)

    def blocks():
        for start in range(0, rows.shape[0], step):
            part = rows[start : start + step]
            buffer[: part.shape[0]] = part
            yield buffer[: part.shape[0]]

    return RowBlocks(blocks)


# --------------------------------------------------------------------------- scenarios
def _equivalence(rank: int, world: int, workdir: str) -> dict:
    """Solves on groups of 1, 2 and 3 ranks, each rank's rows in a different form."""
    scores = _scores()
    heads = np.stack([scores, _scores(seed=1)])
    sizes = np.array([60, 40, 50, 30, 40, 37])
    results = {}
    for size in (1, 2, 3):
        group = dist.new_group(list(range(size)))  # every process must take part
        if rank >= size:
            continue
        local = _shard(scores, SHARDS[size], rank)
        if rank == 1:  # the same rows, streamed from a factory of 7-row blocks
            local_rows = local
            local = RowBlocks(lambda rows=local_rows: (rows[i : i + 7] for i in range(0, 300, 7)))
        elif rank == 2:  # the same rows, from a .npy file (memmapped and streamed)
            path = os.path.join(workdir, f"rank2_of_{size}.npy")
            np.save(path, local)
            local = path
        # plain steps: these solves must repeat the single-process sweeps exactly
        # (accelerated ones agree at convergence: ``_converged``)
        plain = assign_labels(
            local, LAM, tol=1e-7, group=group, backend="numpy", return_codes=True,
            acceleration="none",
        )  # fmt: skip
        warm = assign_labels(
            _shard(scores, SHARDS[size], rank),
            LAM,
            tol=1e-7,
            group=group,
            backend="numpy",
            warm_start=plain.state,
            acceleration="none",
        )
        stops = []
        stopped = assign_labels(
            _shard(scores, SHARDS[size], rank),
            LAM,
            tol=1e-9,
            group=group,
            backend="numpy",
            acceleration="none",
            # only rank 0 asks to stop; every rank must stop at the same iteration
            callback=lambda i, e, seen=stops: seen.append(i) or (rank == 0 and i == 4),
        )
        multi = assign_labels(
            torch.from_numpy(np.ascontiguousarray(_shard(heads, SHARDS[size], rank))),
            LAM,
            tol=1e-7,
            group=group,
            marginals=Counts(sizes),
            acceleration="none",
        )
        codes = sinkhorn_codes(_shard(scores, SHARDS[size], rank), 0.5, 3, group=group)
        mine = _shard(scores, SHARDS[size], rank)
        balanced = assign_labels(
            _refilled_blocks(mine) if rank == 1 and len(mine) else mine,  # one reused buffer
            LAM,
            tol=1e-7,
            group=group,
            backend="numpy",
            rounding="balanced",
            marginals=Counts(sizes),
            acceleration="none",
        )
        # near-balanced targets: their common-shift step uses the global N
        near = [
            assign_labels(
                mine, LAM, tol=1e-7, group=group, backend="numpy", marginals=spec,
                acceleration="none",
            )
            for spec in NEAR_BALANCED
        ]
        results[size] = {
            "near": [(r.labels, r.state.g, r.n_iter) for r in near],
            "labels": plain.labels,
            "g": plain.state.g,
            "shape": plain.state.shape,
            "n_iter": plain.n_iter,
            "objective": plain.objective,
            "codes": plain.codes,
            "warm_n_iter": warm.n_iter,
            "stopped": (stopped.n_iter, stops),
            "multi_labels": multi.labels.numpy(),
            "multi_g": multi.state.g,
            "swav": codes,
            "balanced": balanced.labels,
            "balanced_objective": balanced.objective,
        }
        dist.destroy_process_group(group)
    return results


CONVERGED_TOL = 1e-6  # ten times float32 scores' error floor (2.5e-8 here)
CONVERGED_MARGINALS = (Uniform(), Counts(np.array([60, 40, 50, 30, 40, 37])), *NEAR_BALANCED)


def _converged(rank: int, world: int, workdir: str) -> dict:
    """Solves with the default acceleration on groups of 1, 2 and 3 ranks, rank 1's rows
    streamed from 7-row blocks (where it has any) and rank 2's from a .npy file:
    (labels, g, n_iter, converged) each."""
    scores = _scores()
    results = {}
    for size in (1, 2, 3):
        group = dist.new_group(list(range(size)))
        if rank >= size:
            continue
        local = _shard(scores, SHARDS[size], rank)
        if rank == 1 and len(local):
            rows = local
            local = RowBlocks(lambda rows=rows: (rows[i : i + 7] for i in range(0, len(rows), 7)))
        elif rank == 2:
            path = os.path.join(workdir, f"converged_rank2_of_{size}.npy")
            np.save(path, local)
            local = path
        solves = [
            assign_labels(
                local, LAM, tol=CONVERGED_TOL, group=group, backend="numpy", marginals=spec
            )
            for spec in CONVERGED_MARGINALS
        ]
        results[size] = [(r.labels, r.state.g, r.n_iter, r.converged) for r in solves]
        dist.destroy_process_group(group)
    return results


def _rejections(rank: int, world: int, workdir: str) -> dict:
    """Mismatched arguments and local failures: every rank must fail, none may hang."""
    scores = _shard(_scores(), SHARDS[3], rank)
    out = {}
    out["lam"] = _outcome(
        lambda: assign_labels(scores, LAM if rank != 1 else 2 * LAM, group="default")
    )
    wrong_k = _scores(n_labels=N_LABELS + (rank == 2))[: scores.shape[0]]
    out["k"] = _outcome(lambda: assign_labels(wrong_k, LAM, group="default", backend="numpy"))
    # float16 rows on one rank: its masks are judged at another depth (mask_depth)
    half = scores.astype(np.float16) if rank == 2 else scores
    out["dtype"] = _outcome(lambda: assign_labels(half, LAM, group="default", backend="numpy"))
    out["codes_eps"] = _outcome(
        lambda: sinkhorn_codes(scores, 0.05 if rank else 0.1, group="default")
    )
    nan = scores.copy()
    if rank == 2:
        nan[0, 0] = np.nan
    out["nan"] = _outcome(lambda: assign_labels(nan, LAM, group="default", backend="numpy"))

    def failing_on_rank_1(failing_pass: int, message: str) -> RowBlocks:
        """``scores`` as a stream whose read fails on rank 1 at pass ``failing_pass``."""
        passes = []

        def blocks():
            passes.append(1)
            if rank == 1 and len(passes) == failing_pass:
                raise OSError(message)
            yield scores

        return RowBlocks(blocks, scores.shape[0], N_LABELS)

    out["read"] = _outcome(  # the 4th pass: mid-solve
        lambda: assign_labels(failing_on_rank_1(4, "disk read failed"), LAM, group="default", tol=0)
    )

    def bad_callback(iteration, error):
        if rank == 0 and iteration == 3:
            raise KeyError("callback bug")

    out["callback"] = _outcome(
        lambda: assign_labels(scores, LAM, group="default", callback=bad_callback, tol=0)
    )
    out["exact"] = _outcome(lambda: assign_labels(scores, LAM, group="default", rounding="exact"))
    # one-hot probabilities: label 5 has 10 rows in all, short of N/K; with Counts of the
    # global label sizes every label is supported, though no rank's rows alone support them
    onehot_labels = np.where(np.arange(257) < 247, np.arange(257) % 5, 5)
    onehot = _shard(np.eye(N_LABELS)[onehot_labels], SHARDS[3], rank)
    out["support"] = _outcome(
        lambda: assign_labels(onehot, LAM, group="default", input="probs", backend="numpy")
    )
    out["support_ok"] = assign_labels(
        onehot, LAM, group="default", input="probs", rounding="balanced",
        marginals=Counts(np.bincount(onehot_labels)),
    ).labels.tolist()  # fmt: skip
    # a row (on rank 2) positive only on a label of size 0: refused on every rank
    closed = np.full((scores.shape[0], N_LABELS), 1.0 / N_LABELS)
    if rank == 2:
        closed[3] = np.eye(N_LABELS)[0]
    sizes = np.r_[0, np.full(N_LABELS - 1, 257 // (N_LABELS - 1))]
    sizes[1] += 257 - sizes.sum()
    out["stranded"] = _outcome(
        lambda: assign_labels(closed, LAM, group="default", input="probs", marginals=Counts(sizes))
    )
    # a cold start anneals lam, a zero warm start does not: a mismatch, named
    out["cold_warm"] = _outcome(
        lambda: assign_labels(
            scores, 300.0, group="default", warm_start=np.zeros(N_LABELS) if rank == 1 else None
        )
    )
    out["return_codes"] = _outcome(  # a bad flag on one rank: named there, no hang
        lambda: assign_labels(
            scores, LAM, group="default", return_codes="yes" if rank == 1 else False
        )
    )
    out["exact_one_rank"] = _outcome(
        lambda: assign_labels(
            scores, LAM, group="default", rounding="exact" if rank == 0 else "argmax"
        )
    )
    # rank 1 holds no rows: as an empty .npy file it solves like an empty array
    empty = os.path.join(workdir, f"empty_{rank}.npy")
    np.save(empty, scores[:0] if rank == 1 else scores)
    out["empty_npy"] = assign_labels(empty, LAM, group="default").labels.tolist()
    out["empty_codes"] = np.asarray(sinkhorn_codes(empty, 0.5, 3, group="default")).shape

    out["codes_read"] = _outcome(  # the 5th pass: the codes, after validation and 3 sweeps
        lambda: sinkhorn_codes(failing_on_rank_1(5, "codes read failed"), 0.5, 3, group="default")
    )
    # the group is still usable after all of that
    out["after"] = assign_labels(scores, LAM, group="default", backend="numpy").n_iter
    return out


def _death(rank: int, world: int, workdir: str) -> dict:
    """Rank 2 dies mid-solve; the others must fail with a clear error, quickly."""
    scores = _shard(_scores(), SHARDS[3], rank)
    passes = []

    def blocks():
        passes.append(1)
        if rank == 2 and len(passes) == 5:
            os._exit(3)
        yield scores

    start = time.monotonic()
    kind, message = _outcome(
        lambda: assign_labels(
            RowBlocks(blocks, scores.shape[0], N_LABELS), LAM, group="default", tol=0
        )
    )
    return {"kind": kind, "message": message, "seconds": time.monotonic() - start}


def _cuda(rank: int, world: int, workdir: str) -> dict:
    """CUDA scores on an NCCL group (one rank per GPU): labels and codes stay on the GPU."""
    scores = torch.from_numpy(_scores()).cuda()
    # plain steps: the same sweeps as the single-process solve, compared to 1e-9
    result = assign_labels(scores, LAM, tol=1e-7, group="default", acceleration="none")
    codes = sinkhorn_codes(scores, 0.5, 3, group="default")
    return {
        "device": str(result.labels.device),
        "labels": result.labels.cpu().numpy(),
        "g": result.state.g,
        "codes": codes.cpu().numpy(),
    }


TIED_SHARDS = [50, 0, 70]  # 120 rows
INTEGER_SHARDS = [400, 250, 350]  # 1,000 rows


def _trust_problems() -> dict[str, np.ndarray]:
    """Tied scores (constant; integers 0..9), -inf masks and peaked prototype scores."""
    rng = np.random.default_rng(31)
    masked = _scores()
    masked[:, 1:][rng.random((N_ROWS, N_LABELS - 1)) < 0.2] = -np.inf  # label 0: every row
    peaked = (rng.standard_normal((257, 12)) * 0.3).astype(np.float32)
    peaked[np.arange(257), np.arange(257) % 12] += 0.5
    return {
        "constant": np.zeros((120, 6), np.float32),
        "integer": rng.integers(0, 10, (1000, 10)).astype(np.float32),
        "masked": masked,
        "peaked": peaked,
    }


def _trust(rank: int, world: int, workdir: str) -> dict:
    """The default rounding on tied scores, -inf masks and SwAV's codes, across ranks."""
    problems = _trust_problems()
    out = {}
    for name, shards in (("constant", TIED_SHARDS), ("integer", INTEGER_SHARDS)):
        result = assign_labels(_shard(problems[name], shards, rank), 25.0, group="default")
        out[name] = (result.labels, result.rounding)
    masked = assign_labels(_shard(problems["masked"], SHARDS[3], rank), LAM, group="default")
    out["masked"] = (masked.labels, masked.state.g)
    out["codes"] = sinkhorn_codes(
        _shard(problems["peaked"], SHARDS[3], rank), 0.05, 3, group="default"
    )
    return out


def _factors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.standard_normal((N_ROWS, 4), dtype=np.float32), rng.standard_normal(
        (2, N_LABELS, 4), dtype=np.float32
    )


def _factored(rank: int, world: int, workdir: str) -> dict:
    """Each rank passes Factored scores of its own features (one rank has none) and the
    same prototypes; then one rank passes other prototypes, then dense scores."""
    features, prototypes = _factors()
    mine = _shard(features, SHARDS[3], rank)
    scores = Factored(mine, prototypes, metric="sqeuclidean", scale=0.5)
    out = {
        "argmax": assign_labels(scores, LAM, tol=1e-7, group="default").labels,
        "balanced": assign_labels(
            scores, LAM, tol=1e-7, group="default", rounding="balanced"
        ).labels,
        "codes": sinkhorn_codes(scores, 0.5, 3, group="default"),
    }
    other = Factored(mine, prototypes + (rank == 1), metric="sqeuclidean", scale=0.5)
    out["other"] = _outcome(lambda: assign_labels(other, LAM, group="default"))
    dense = scores.to_dense() if rank == 2 else scores
    out["dense"] = _outcome(lambda: sinkhorn_codes(dense, 0.5, 3, group="default"))
    return out


SCENARIOS = {
    "trust": _trust,
    "equivalence": _equivalence,
    "converged": _converged,
    "factored": _factored,
    "rejections": _rejections,
    "death": _death,
    "cuda": _cuda,
}


# --------------------------------------------------------------------------- tests
def test_sharded_solve_equals_single_process(tmp_path):
    results = _run_world(("equivalence",), 3, tmp_path)["equivalence"]
    scores = _scores()
    heads = np.stack([scores, _scores(seed=1)])
    plain = {"acceleration": "none"}
    reference = assign_labels(scores, LAM, tol=1e-7, backend="numpy", return_codes=True, **plain)
    sizes = np.array([60, 40, 50, 30, 40, 37])
    # the ranks pass torch tensors (Numba kernels on CPU where installed): the reference too
    multi_reference = assign_labels(
        torch.from_numpy(heads), LAM, tol=1e-7, marginals=Counts(sizes), **plain
    )
    swav_reference = sinkhorn_codes(scores, 0.5, 3, backend="numpy")
    balanced_reference = assign_labels(
        scores, LAM, tol=1e-7, backend="numpy", rounding="balanced", marginals=Counts(sizes),
        **plain,
    )  # fmt: skip
    for size in (1, 2, 3):
        parts = [results[rank][size] for rank in range(size)]
        for part in parts:  # the state is bit-identical on every rank
            np.testing.assert_array_equal(part["g"], parts[0]["g"])
            assert part["n_iter"] == parts[0]["n_iter"] == reference.n_iter
            assert part["shape"] == (N_ROWS, N_LABELS)
            assert part["objective"] == parts[0]["objective"]
            assert part["warm_n_iter"] == 1  # a converged warm start costs one sweep
            assert part["stopped"] == parts[0]["stopped"]
        np.testing.assert_allclose(parts[0]["g"], reference.state.g, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(
            np.concatenate([p["labels"] for p in parts]), reference.labels
        )
        np.testing.assert_allclose(
            np.concatenate([p["codes"] for p in parts]), reference.codes, atol=1e-6
        )
        assert parts[0]["objective"] == pytest.approx(reference.objective, rel=1e-12)
        assert parts[0]["stopped"][0] == 4 and parts[0]["stopped"][1] == [1, 2, 3, 4]
        np.testing.assert_array_equal(
            np.concatenate([p["multi_labels"] for p in parts], axis=1), multi_reference.labels
        )
        # float32 tensors on the CPU run the Numba kernels, whose float32 partial sums over
        # 64-row sub-blocks group rows by shard: duals agree to float32 round-off there
        np.testing.assert_allclose(parts[0]["multi_g"], multi_reference.state.g, atol=2e-6)
        np.testing.assert_allclose(
            np.concatenate([p["swav"] for p in parts]), swav_reference, atol=1e-6
        )
        # exact global counts across ranks, and the same (certified optimal) objective
        balanced = np.concatenate([p["balanced"] for p in parts])
        np.testing.assert_array_equal(np.bincount(balanced, minlength=N_LABELS), sizes)
        np.testing.assert_array_equal(balanced, balanced_reference.labels)
        for part in parts:
            assert part["balanced_objective"] == parts[0]["balanced_objective"]
        for position, spec in enumerate(NEAR_BALANCED):
            want = assign_labels(scores, LAM, tol=1e-7, backend="numpy", marginals=spec, **plain)
            labels = np.concatenate([p["near"][position][0] for p in parts])
            np.testing.assert_array_equal(labels, want.labels)
            for part in parts:
                assert part["near"][position][2] == want.n_iter
                np.testing.assert_array_equal(
                    part["near"][position][1], parts[0]["near"][position][1]
                )
            np.testing.assert_allclose(parts[0]["near"][position][1], want.state.g, atol=1e-9)
        assert parts[0]["balanced_objective"] == pytest.approx(
            balanced_reference.objective, rel=1e-12
        )


def test_converged_sharded_solves_agree_with_single_process(tmp_path):
    """The default (accelerated) step: a rank count or streaming changes the order of the
    column sums, so the iterates differ in rounding and the guarantee is at convergence
    (docs/design.md): every rank of a group holds the same dual and stops at the same
    sweep; labels equal the single-process solve's, duals within the dual tolerance."""
    results = _run_world(("converged",), 3, tmp_path)["converged"]
    scores = _scores()
    for position, spec in enumerate(CONVERGED_MARGINALS):
        single = assign_labels(scores, LAM, tol=CONVERGED_TOL, backend="numpy", marginals=spec)
        plain = assign_labels(
            scores, LAM, tol=1e-7, max_iter=100_000, backend="numpy", marginals=spec,
            acceleration="none",
        )  # fmt: skip
        bound = dual_tolerance(CONVERGED_TOL, plain_rate(plain.history))
        for size in (1, 2, 3):
            parts = [results[rank][size][position] for rank in range(size)]
            for _labels, g, n_iter, converged in parts:
                assert converged and n_iter == parts[0][2]
                np.testing.assert_array_equal(g, parts[0][1])  # bit-identical on every rank
            sharded = SimpleNamespace(
                labels=np.concatenate([part[0] for part in parts]),
                state=SimpleNamespace(g=parts[0][1]),
            )
            assert_same_solution(sharded, single, scores, LAM, bound)


def test_factored_scores_of_each_ranks_features_equal_the_single_process_solve(tmp_path):
    results = _run_world(("factored",), 3, tmp_path)["factored"]
    features, prototypes = _factors()
    scores = Factored(features, prototypes, metric="sqeuclidean", scale=0.5)
    argmax = assign_labels(scores, LAM, tol=1e-7)
    balanced = assign_labels(scores, LAM, tol=1e-7, rounding="balanced")
    for name, reference in (("argmax", argmax.labels), ("balanced", balanced.labels)):
        got = np.concatenate([results[rank][name] for rank in range(3)], axis=1)
        np.testing.assert_array_equal(got, reference)
    codes = np.concatenate([results[rank]["codes"] for rank in range(3)], axis=1)
    np.testing.assert_allclose(codes, sinkhorn_codes(scores, 0.5, 3), atol=1e-6)
    for out in results.values():  # other prototypes, or dense scores, on one rank
        for case in ("other", "dense"):
            kind, message = out[case]
            assert kind == "ValueError" and message.startswith("prototypes: the ranks"), message


def test_mismatches_failures_and_a_dead_rank_fail_every_rank(tmp_path):
    """One world: argument mismatches, local errors, then rank 2 dies (the last scenario)."""
    worlds = _run_world(("rejections", "death"), 3, tmp_path, dying={2: 3})
    results = worlds["rejections"]
    for rank, out in results.items():
        kind, message = out["lam"]
        assert kind == "ValueError" and message.startswith("lam:") and "rank 1: 16" in message
        kind, message = out["k"]
        assert kind == "ValueError" and message.startswith("n_labels:")
        kind, message = out["dtype"]
        assert kind == "ValueError" and message.startswith("dtype:"), message
        kind, message = out["codes_eps"]
        assert kind == "ValueError" and message.startswith("lam:")
        kind, message = out["nan"]
        if rank == 2:
            assert kind == "ValueError" and "NaN" in message
        else:
            assert kind == "DistributedSolveError" and "rank 2" in message
        kind, message = out["read"]
        if rank == 1:
            assert (kind, message) == ("OSError", "disk read failed")
        else:
            assert kind == "DistributedSolveError" and "rank 1" in message
        kind, message = out["callback"]
        if rank == 0:
            assert kind == "KeyError"
        else:
            assert kind == "DistributedSolveError" and "rank 0" in message
        kind, message = out["exact"]
        assert kind == "NotImplementedError" and message.startswith("rounding:")
        kind, message = out["support"]
        assert kind == "ValueError" and "label 5: 10 rows, needs 42" in message, message
        onehot_labels = np.where(np.arange(257) < 247, np.arange(257) % 5, 5)
        start = sum(SHARDS[3][:rank])
        assert out["support_ok"] == onehot_labels[start : start + SHARDS[3][rank]].tolist()
        kind, message = out["stranded"]
        assert kind == "ValueError" and "1 row(s) of the ranks have" in message, message
        kind, message = out["cold_warm"]
        assert kind == "ValueError" and message.startswith("warm_start:"), message
        kind, message = out["return_codes"]
        if rank == 1:
            assert kind == "TypeError" and message.startswith("return_codes:"), message
        else:
            assert kind == "DistributedSolveError" and "rank 1" in message, message
        kind, message = out["exact_one_rank"]
        assert kind == "ValueError" and message.startswith("rounding:"), message
        assert len(out["empty_npy"]) == SHARDS[3][rank]
        assert out["empty_codes"] == (SHARDS[3][rank], N_LABELS)
        kind, message = out["codes_read"]
        if rank == 1:
            assert (kind, message) == ("OSError", "codes read failed")
        else:
            assert kind == "DistributedSolveError" and "rank 1" in message, message
        assert out["after"] == results[0]["after"]
    assert sorted(worlds["death"]) == [0, 1]
    for out in worlds["death"].values():
        assert out["kind"] == "DistributedSolveError", out
        assert "failed on rank" in out["message"]
        assert out["seconds"] < GROUP_TIMEOUT_S


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and dist.is_nccl_available()), reason="needs CUDA and NCCL"
)
def test_nccl_group_of_one_gpu_matches_single_process(tmp_path):
    out = _run_world(("cuda",), 1, tmp_path, backend="nccl")["cuda"][0]
    scores = torch.from_numpy(_scores()).cuda()
    reference = assign_labels(scores, LAM, tol=1e-7, acceleration="none")
    assert out["device"].startswith("cuda")
    np.testing.assert_array_equal(out["labels"], reference.labels.cpu().numpy())
    np.testing.assert_allclose(out["g"], reference.state.g, atol=1e-9)
    expected = sinkhorn_codes(scores, 0.5, 3).cpu().numpy()
    np.testing.assert_allclose(out["codes"], expected, atol=1e-6)


def test_group_argument_is_checked_in_process():
    scores = _scores()
    with pytest.raises(ValueError, match=r"^group: 'default' needs torch.distributed"):
        assign_labels(scores, group="default")
    with pytest.raises(ValueError, match=r"^group: expected None"):
        sinkhorn_codes(scores, group="world")
    with pytest.raises(TypeError, match=r"^group: expected None"):
        assign_labels(scores, group=3)
    assert isinstance(equipart.assign_labels(scores, group=None), equipart.Assignment)


def test_tied_scores_masks_and_swav_codes_across_ranks(tmp_path):
    """Sharded over 3 ranks (one without rows): tied scores get their exact global sizes
    under the default rounding, the same labels as in one process; -inf masks solve as
    in one process; the codes are SwAV's loop with B the global batch."""
    from test_core import swav_sinkhorn

    results = _run_world(("trust",), 3, tmp_path)["trust"]
    problems = _trust_problems()
    parts = [results[rank] for rank in range(3)]
    for name, size in (("constant", 20), ("integer", 100)):
        labels = np.concatenate([p[name][0] for p in parts])
        assert all(p[name][1] == "balanced" for p in parts)
        assert np.bincount(labels).tolist() == [size] * problems[name].shape[1]
        np.testing.assert_array_equal(labels, assign_labels(problems[name], 25.0).labels)
    single = assign_labels(problems["masked"], LAM)
    np.testing.assert_array_equal(np.concatenate([p["masked"][0] for p in parts]), single.labels)
    np.testing.assert_allclose(parts[0]["masked"][1], single.state.g, atol=1e-6)
    codes = np.concatenate([p["codes"] for p in parts])
    np.testing.assert_allclose(codes, swav_sinkhorn(problems["peaked"], 0.05, 3), atol=2e-6)

"""The subprocess that runs one contender's jobs: ``python -m equipart.bench.worker``.

It reads a JSON list of jobs on stdin (all for the same contender, sorted so that jobs on
the same problem are adjacent), imports the libraries the contender needs and says so on
stdout (``{"ready": true}``: the runner's per-job timeout starts there, so a slow import
or JIT compilation on a busy machine does not time out the first job; on the CPU the
contender has run once on a small generated problem by then), then writes one JSON line
per job on stdout. For each job it loads the cached float32 scores (``.npy``, written by
the runner) into RAM (or onto the GPU), warms the contender up on a slice of them at each lam
(JIT compilation, lazy imports), then resets the peak-memory counters, runs the
contender, reads the peaks, runs a short job again (``_repeat``: its time is the median
run's) and judges the output with ``equipart.bench.checker``.

Peak memory: the kernel's high-water mark of this process's resident set (VmHWM in
/proc/self/status, reset through /proc/self/clear_refs before the solve), so it includes
the resident input; ``extra_mb`` subtracts the resident set just before the solve. On CUDA
the peak of torch's allocator is reported as well.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from .checker import judge_dual, judge_labels
from .contenders import Contender, Output, get_contender
from .problems import ProblemSpec, generate

MB = 2**20
WARMUP_ROWS = 256
PRECOMPILE_ROWS = 8192
# A job whose first timed run takes under REPEAT_BELOW_S seconds runs again, up to REPEATS
# runs in all within REPEAT_BUDGET_S seconds, and reports the median run (``_repeat``).
REPEAT_BELOW_S = 1.0
REPEATS = 5
REPEAT_BUDGET_S = 2.0


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def _peak_mb() -> float | None:
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def _load(path: str, device: str) -> Any:
    """The cached scores in RAM, or as a CUDA tensor filled block by block."""
    if device == "cpu":
        return np.load(path)
    import torch

    mapped = np.load(path, mmap_mode="r")
    scores = torch.empty(mapped.shape, dtype=torch.float32, device=device)
    step = max(1, (1 << 26) // mapped.shape[1])
    for start in range(0, mapped.shape[0], step):
        block = np.ascontiguousarray(mapped[start : start + step])
        scores[start : start + step].copy_(torch.from_numpy(block))
    return scores


def _prepare(scores: Any, contender: Contender) -> Any:
    """What the contender reads: the torch backend gets a (zero-copy) tensor on the CPU,
    the JAX backend a JAX array (a copy, made before the timed call)."""
    if contender.name == "equipart-torch" and isinstance(scores, np.ndarray):
        import torch

        return torch.from_numpy(scores)
    if contender.name == "equipart-jax" and isinstance(scores, np.ndarray):
        import jax.numpy as jnp

        return jnp.asarray(scores).block_until_ready()
    return scores


def _gpu(device: str) -> Any:
    if device == "cpu":
        return None
    import torch

    return torch


def _warm_up(
    contender: Contender, scores: Any, spec: ProblemSpec, lam: float, tol: float, max_iter: int
) -> None:
    """Run the contender on the first rows of the job's scores at the job's lam. equipart's
    solve runs to the job's tolerance there, so that the Numba kernels of every step it
    takes on this problem (some steps are only reached after many sweeps, or at a larger
    lam) are compiled before the timed run; the references run 3 iterations."""
    if contender.group == "kmeans":
        return
    rows = min(scores.shape[0], max(WARMUP_ROWS, 2 * scores.shape[1]))
    small = ProblemSpec(spec.family, rows, spec.k, spec.seed)
    contender.run(scores[:rows], small, lam, tol, max_iter if contender.group == "equipart" else 3)


def _precompile(contender: Contender) -> None:
    """Run the contender once on a small generated problem, so that JIT compilation (the
    Numba kernels of every step the solve may take) and lazy imports happen before the
    ready line, outside every job's time limit. The problem is skewed and large enough
    for equipart's sampled start (``equipart.solver.SAMPLE_MIN_ELEMENTS``), which the
    jobs' warm-ups on their first rows are not."""
    if contender.group == "kmeans":
        return
    spec = ProblemSpec("zipf", PRECOMPILE_ROWS, 16, 0)
    contender.run(_prepare(generate(spec, threads=1), contender), spec, 25.0, 1e-3, 3)


def _import_libraries(contender: Contender) -> None:
    """Import what the contender's first call would (its modules, equipart's backend)."""
    for module in contender.requires:
        importlib.import_module(module)
    if contender.group == "equipart":
        from equipart.backends import get_backend

        get_backend(contender.name.removeprefix("equipart-"), None)


def _judge(output: Output, scores: Any, lam: float, tol: float) -> dict[str, Any]:
    if output.labels is not None:
        return judge_labels(scores, output.labels, tol).to_dict()
    return judge_dual(scores, lam, output.g, tol, rows_ok=output.rows_ok).to_dict()


def _error_status(exc: BaseException) -> str:
    if isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__:
        return "oom"
    return "error"


def _repeat(
    contender: Contender,
    scores: Any,
    spec: ProblemSpec,
    settings: tuple[float, float, int],
    first: tuple[float, Output],
) -> list[tuple[float, Output]]:
    """(seconds, output) of every timed run of a job, fastest first: the first run, and
    for a job whose first run took under REPEAT_BELOW_S, more runs (REPEATS in all) while
    they add up to at most REPEAT_BUDGET_S. Every contender is held to the same rule; the
    job's time is the median run's (``runs[len(runs) // 2]``, the slower of the middle two
    where the count is even), so that one run slowed by the shared machine, or a first
    call's one-off costs, does not decide a short job's time."""
    runs, spent = [first], first[0]
    while first[0] < REPEAT_BELOW_S and len(runs) < REPEATS and spent + first[0] <= REPEAT_BUDGET_S:
        start = time.perf_counter()
        output = contender.run(scores, spec, *settings)
        seconds = time.perf_counter() - start
        runs.append((seconds, output))
        spent += seconds
    return sorted(runs, key=lambda run: run[0])


def run_job(job: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """Run one job (see the module docstring); ``state`` caches the loaded scores."""
    contender = get_contender(job["contender"])
    spec = ProblemSpec(job["family"], job["n"], job["k"], job["seed"])
    device = job["device"]
    lam, tol, max_iter = job["lam"], job["tol"], job["max_iter"]
    if state.get("path") != job["path"]:
        state.clear()
        state["scores"] = _prepare(_load(job["path"], device), contender)
        state["path"] = job["path"]
    scores = state["scores"]
    warmed = state.setdefault("warmed", set())  # the lams warmed up on these scores
    if lam not in warmed:
        _warm_up(contender, scores, spec, lam, tol, max_iter)
        warmed.add(lam)
    torch = _gpu(device)
    if torch is not None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _rss_mb()
    exact_peak = _reset_peak()
    start = time.perf_counter()
    output = contender.run(scores, spec, lam, tol, max_iter)
    total_s = time.perf_counter() - start
    peak = _peak_mb()
    runs = _repeat(contender, scores, spec, (lam, tol, max_iter), (total_s, output))
    total_s, output = runs[len(runs) // 2]
    record: dict[str, Any] = {
        "n_iter": output.n_iter,
        "start_sweeps": output.start_sweeps,
        "converged_claim": output.converged,
        "total_s": total_s,
        "runs_s": [seconds for seconds, _ in runs],
        "setup_s": output.setup_s,
        "loop_s": output.loop_s,
        "ms_per_iter": (
            1000 * (output.loop_s if output.loop_s is not None else total_s) / output.n_iter
            if output.n_iter
            else None
        ),
        "peak_rss_mb": peak,
        "extra_rss_mb": (peak - before) if (peak is not None and before is not None) else None,
        "peak_is_process_lifetime": not exact_peak,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / MB if torch is not None else None,
        "note": output.note,
    }
    record.update(_judge(output, scores, lam, tol))
    return record


def main() -> int:
    """Read jobs from stdin, print one JSON result line per job."""
    os.environ.setdefault("POT_BACKEND_DISABLE_JAX", "1")
    os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")
    os.environ.setdefault("POT_BACKEND_DISABLE_CUPY", "1")
    jobs = json.load(sys.stdin)
    if all(job["device"] == "cpu" for job in jobs) and not any(
        job["contender"] == "equipart-torch" for job in jobs
    ):
        os.environ.setdefault("POT_BACKEND_DISABLE_PYTORCH", "1")
    if jobs:
        try:
            _import_libraries(contender := get_contender(jobs[0]["contender"]))
            if jobs[0]["device"] == "cpu":
                _precompile(contender)
        except Exception:  # the first job meets the same failure and records it
            pass
    print(json.dumps({"ready": True}), flush=True)
    state: dict[str, Any] = {}
    for index, job in enumerate(jobs):
        try:
            record = run_job(job, state)
        except Exception as exc:  # recorded, not dropped: the runner reports it
            state.clear()
            record = {
                "status": _error_status(exc),
                "note": f"{type(exc).__name__}: {exc}"[:500],
                "traceback": traceback.format_exc()[-2000:],
            }
        record["job"] = index
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

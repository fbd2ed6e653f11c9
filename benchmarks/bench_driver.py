"""The driver's own cost per Sinkhorn iteration, with the sweep taken out.

On a GPU the sweep of a large problem takes a few milliseconds and the host round trip of
each iteration (column statistics down, the driver's K-dim update, g up) is paid on top of
it, so the driver's NumPy work on K-vectors matters there. This script runs
``assign_labels`` on the NumPy backend with its sweep replaced by one that returns
precomputed column statistics (so every iteration runs the full driver step: log masses,
error, column update, over-relaxation) and reports microseconds per iteration, from the
difference of a long and a short solve (their one-off passes cancel).

    python benchmarks/bench_driver.py [--labels 3000] [--iterations 3000]

Writes ``benchmarks/results/driver_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np

import equipart
from equipart.backends.base import ColumnStats
from equipart.backends.numpy import NumpyBackend

RESULT = Path(__file__).resolve().parent / "results" / "driver_overhead.json"


def measure(n_labels: int, iterations: int, rounds: int = 5) -> list[float]:
    """Seconds per iteration, ``rounds`` times: the difference of two solves that never
    converge (tol = 1e-12), ``iterations`` and ``iterations // 10`` sweeps long, divided
    by the difference of their sweep counts (the solves' one-off passes cancel)."""
    rng = np.random.default_rng(0)
    n_rows = n_labels
    scores = rng.standard_normal((n_rows, n_labels)).astype(np.float32)
    mean = n_rows / n_labels
    pool = [
        ColumnStats(mean * (1 + 1e-3 * rng.standard_normal(n_labels)), np.zeros(n_labels))
        for _ in range(16)
    ]
    calls = [0]

    def stub_sweep(self, block, kind, lam, g):
        calls[0] += 1
        return pool[calls[0] % len(pool)]

    def solve(max_iter: int) -> tuple[float, int]:
        calls[0] = 0
        start = time.perf_counter()
        equipart.assign_labels(scores, lam=25.0, backend="numpy", max_iter=max_iter, tol=1e-12)
        return time.perf_counter() - start, calls[0]

    per_iteration = []
    real_sweep = NumpyBackend.sweep
    NumpyBackend.sweep = stub_sweep  # this process only: the script measures nothing else
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", equipart.ConvergenceWarning)
            for _ in range(rounds):
                short_s, short_n = solve(max(1, iterations // 10))
                long_s, long_n = solve(iterations)
                per_iteration.append((long_s - short_s) / (long_n - short_n))
    finally:
        NumpyBackend.sweep = real_sweep
    return per_iteration


def code_version() -> str:
    """The checkout's commit, with "+changes" when the working tree differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{commit}+changes" if dirty else commit or "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=3000)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    times = measure(args.labels, args.iterations)
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "logical_cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "load_average_at_start": os.getloadavg(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "code": code_version(),
        "n_labels": args.labels,
        "iterations": args.iterations,
        "us_per_iteration_min": 1e6 * min(times),
        "us_per_iteration_all": [1e6 * t for t in times],
        "note": "difference of two solves (iterations and iterations // 10 sweeps): the "
        "solve's one-off passes (value check, labels, objective) cancel",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"driver: {result['us_per_iteration_min']:.1f} us per iteration at K = {args.labels:,}")


if __name__ == "__main__":
    main()

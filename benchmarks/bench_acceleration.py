"""Sweeps to convergence under each ``acceleration=`` mode, on the same problems.

Counts sweeps, not time (every mode costs the same per sweep: the extrapolation is K-dim
host work), so the figures do not depend on the machine's load. Problems: N(0, 1) logits
20,000 x 100 at lam 25, 100 and 1,000, and the bench families at 20,000 x 200, lam 25.
Numba backend, tol 1e-3, max_iter 5,000.

    python benchmarks/bench_acceleration.py

Writes ``benchmarks/results/acceleration.json`` and prints a markdown table.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np

from equipart import ConvergenceWarning, assign_labels
from equipart.bench.problems import ProblemSpec, generate

RESULT = Path(__file__).resolve().parent / "results" / "acceleration.json"
MODES = ("none", "overrelax", "anderson")
MAX_ITER = 5000


def problems() -> list[tuple[str, float, np.ndarray]]:
    gauss = np.random.default_rng(0).standard_normal((20_000, 100)).astype(np.float32)
    cases = [("gaussian 20,000x100", lam, gauss) for lam in (25.0, 100.0, 1000.0)]
    for family in ("sela-early", "sela-late", "zipf", "collapsed", "digits"):
        scores = np.asarray(generate(ProblemSpec(family, 20_000, 200, 0)), dtype=np.float32)
        cases.append((f"{family} 20,000x200", 25.0, scores))
    return cases


def main() -> None:
    rows = []
    for name, lam, scores in problems():
        entry = {"problem": name, "lam": lam}
        for mode in MODES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                result = assign_labels(
                    scores, lam=lam, backend="numba", max_iter=MAX_ITER, acceleration=mode
                )
            entry[mode] = {
                "n_iter": result.n_iter,
                "converged": result.converged,
                "error": result.error,
            }
        rows.append(entry)
        print(json.dumps(entry), flush=True)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "tol": 1e-3,
                "max_iter": MAX_ITER,
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print("| problem | lam | " + " | ".join(MODES) + " |")
    print("|---|---|" + "---|" * len(MODES))
    for row in rows:
        cells = [
            f"{row[m]['n_iter']:,}" + ("" if row[m]["converged"] else " (not converged)")
            for m in MODES
        ]
        print(f"| {row['problem']} | {row['lam']:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

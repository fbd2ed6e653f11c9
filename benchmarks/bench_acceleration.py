"""Sweeps to convergence under each ``acceleration=`` mode, on the same problems.

Counts sweeps, not time (every mode costs the same per sweep: the extrapolation is K-dim
host work), so the figures do not depend on the machine's load. Problems: N(0, 1) logits
20,000 x 100 at lam 25, 100 and 1,000, and the bench families at 20,000 x 200, lam 25,
under ``Uniform()``; and, under a 0.9-1.1 band (``Bounds.relative``) and a KL-relaxed
target (``Relaxed(Uniform(), 1)``, ``Relaxed(Uniform(), 10)``), the N(0, 1) logits and
logits with strong label biases (N(0, 0.3) noise plus a N(0, 2) bias per label, where
most labels sit at a bound), at lam 25, and the review's 3,000 x 20 case of such logits
under two bands and tau 10. Numba backend, tol 1e-3, max_iter 5,000.

    python benchmarks/bench_acceleration.py [--out FILE]

Writes ``benchmarks/results/acceleration.json`` (or FILE) and prints a markdown table.
The file records which package ran (its folder and that checkout's commit), so the same
problems can be run on an older commit for comparison: ``PYTHONPATH=<old checkout>``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np

import equipart
from equipart import Bounds, ConvergenceWarning, Marginal, Relaxed, Uniform, assign_labels
from equipart.bench.problems import ProblemSpec, generate

RESULT = Path(__file__).resolve().parent / "results" / "acceleration.json"
MODES = ("none", "overrelax", "anderson")
MAX_ITER = 5000


def problems() -> list[tuple[str, float, np.ndarray, Marginal]]:
    gauss = np.random.default_rng(0).standard_normal((20_000, 100)).astype(np.float32)
    cases = [("gaussian 20,000x100", lam, gauss, Uniform()) for lam in (25.0, 100.0, 1000.0)]
    for family in ("sela-early", "sela-late", "zipf", "collapsed", "digits"):
        scores = np.asarray(generate(ProblemSpec(family, 20_000, 200, 0)), dtype=np.float32)
        cases.append((f"{family} 20,000x200", 25.0, scores, Uniform()))
    rng = np.random.default_rng(1)
    biased = rng.normal(size=(20_000, 100)) * 0.3 + rng.normal(size=100) * 2
    others = (Bounds.relative(0.9, 1.1), Relaxed(Uniform(), 1.0), Relaxed(Uniform(), 10.0))
    for name, scores in (("gaussian", gauss), ("biased", biased.astype(np.float32))):
        cases += [(f"{name} 20,000x100", 25.0, scores, marginals) for marginals in others]
    # the review's case (before the common-shift step: 2,200 sweeps for the 0.9-1.1 band,
    # over 5,000 for 0.99-1.01)
    rng = np.random.default_rng(17)
    small = (rng.normal(size=(3000, 20)) * 0.3 + rng.normal(size=20) * 2).astype(np.float32)
    for marginals in (Bounds.relative(0.9, 1.1), Bounds.relative(0.99, 1.01), others[2]):
        cases.append(("biased 3,000x20", 25.0, small, marginals))
    return cases


def package_code() -> dict:
    """The equipart that runs here: its folder and its checkout's commit."""
    folder = Path(equipart.__file__).resolve().parent
    run = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True
    )
    return {"package": str(folder), "commit": run.stdout.strip() or "unknown"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULT, help="result file")
    out = parser.parse_args().out
    rows = []
    for name, lam, scores, marginals in problems():
        entry = {"problem": name, "marginals": repr(marginals), "lam": lam}
        for mode in MODES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                result = assign_labels(
                    scores,
                    lam=lam,
                    marginals=marginals,
                    backend="numba",
                    max_iter=MAX_ITER,
                    acceleration=mode,
                )
            entry[mode] = {
                "n_iter": result.n_iter,
                "converged": result.converged,
                "error": result.error,
            }
        rows.append(entry)
        print(json.dumps(entry), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "code": package_code(),
                "tol": 1e-3,
                "max_iter": MAX_ITER,
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print("| problem | marginals | lam | " + " | ".join(MODES) + " |")
    print("|---|---|---|" + "---|" * len(MODES))
    for row in rows:
        cells = [
            f"{row[m]['n_iter']:,}" + ("" if row[m]["converged"] else " (not converged)")
            for m in MODES
        ]
        head = f"| {row['problem']} | {row['marginals']} | {row['lam']:g} | "
        print(head + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

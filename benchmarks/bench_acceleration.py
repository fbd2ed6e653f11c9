"""Sweeps and time to tol under each ``acceleration=`` mode, on the same problems, in one run.

Sweep counts are the main evidence (a sampled start's work, ``Assignment.start_sweeps``,
counted in sweeps of the whole scores): they do not depend on the machine's load (every mode
costs the same per sweep: its step is K-dim host work beside the N x K sweep). Problems:
N(0, 1) logits 20,000 x 100 at lam 25, 100 and 1,000, and the bench families at
20,000 x 200, lam 25, under ``Uniform()``; under a 0.9-1.1 band (``Bounds.relative``) and
a KL-relaxed target (``Relaxed(Uniform(), 1)``, ``Relaxed(Uniform(), 10)``), the N(0, 1)
logits and logits with strong label biases (N(0, 0.3) noise plus a N(0, 2) bias per
label, where most labels sit at a bound), at lam 25, and the review's 3,000 x 20 case of
such logits under two bands and tau 10; and late-training logits 50,000 x 1,000 at lam 25.
Numba backend, float32 scores, tol 1e-3, max_iter 5,000.

On the timed problems (issue 19's families: planted ``sela-late``, ``zipf``,
``late-training``, digit ``prototypes``, Gaussian at lam 100, and late-training
50,000 x 1,000) each mode's whole ``assign_labels`` call (``rounding="argmax"``, so that
the rounding costs the same for every mode) is timed ``--rounds`` times, the modes
interleaved in a rotating order within each round; the file keeps every time, the median,
and the ratios of the baselines' medians to the default's (above 1: the default is
faster). The load average is recorded before and after.

    python benchmarks/bench_acceleration.py [--out FILE] [--rounds 3]

Writes ``benchmarks/results/acceleration.json`` (or FILE) and prints markdown tables.
The file records which package ran (its folder and that checkout's commit), so the same
problems can be run on an older commit for comparison: ``PYTHONPATH=<old checkout>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_numba import cpu_model

import equipart
from equipart import Bounds, Marginal, Relaxed, Uniform, assign_labels
from equipart.bench.problems import ProblemSpec, generate

RESULT = Path(__file__).resolve().parent / "results" / "acceleration.json"
DEFAULT = "auto"
BASELINES = ("none", "overrelax", "anderson")
MODES = (DEFAULT, *BASELINES)
MAX_ITER = 5000
TOL = 1e-3


@dataclass(frozen=True)
class Problem:
    name: str
    lam: float
    scores: np.ndarray
    marginals: Marginal
    timed: bool = False


def family(name: str, n: int, k: int) -> np.ndarray:
    return np.asarray(generate(ProblemSpec(name, n, k, 0)), dtype=np.float32)


def problems() -> list[Problem]:
    gauss = np.random.default_rng(0).standard_normal((20_000, 100)).astype(np.float32)
    cases = [
        Problem("gaussian 20,000x100", lam, gauss, Uniform(), timed=lam == 100.0)
        for lam in (25.0, 100.0, 1000.0)
    ]
    timed = ("sela-late", "zipf", "late-training", "prototypes")
    for name in ("sela-early", "sela-late", "zipf", "collapsed", "digits", *timed[2:]):
        scores = family(name, 20_000, 200)
        cases.append(Problem(f"{name} 20,000x200", 25.0, scores, Uniform(), name in timed))
    rng = np.random.default_rng(1)
    biased = rng.normal(size=(20_000, 100)) * 0.3 + rng.normal(size=100) * 2
    others = (Bounds.relative(0.9, 1.1), Relaxed(Uniform(), 1.0), Relaxed(Uniform(), 10.0))
    for name, scores in (("gaussian", gauss), ("biased", biased.astype(np.float32))):
        cases += [Problem(f"{name} 20,000x100", 25.0, scores, m) for m in others]
    # the review's case (before the common-shift step: 2,200 sweeps for the 0.9-1.1 band,
    # over 5,000 for 0.99-1.01)
    rng = np.random.default_rng(17)
    small = (rng.normal(size=(3000, 20)) * 0.3 + rng.normal(size=20) * 2).astype(np.float32)
    for marginals in (Bounds.relative(0.9, 1.1), Bounds.relative(0.99, 1.01), others[2]):
        cases.append(Problem("biased 3,000x20", 25.0, small, marginals))
    late = family("late-training", 50_000, 1000)
    cases.append(Problem("late-training 50,000x1,000", 25.0, late, Uniform(), timed=True))
    return cases


def package_code() -> dict:
    """The equipart that runs here: its folder and its checkout's commit."""
    folder = Path(equipart.__file__).resolve().parent
    run = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True
    )
    return {"package": str(folder), "commit": run.stdout.strip() or "unknown"}


def solve(problem: Problem, mode: str) -> tuple[dict, float]:
    """One whole call: its sweeps, convergence and error, and its wall time (s)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning, RoundingWarning: recorded
        start = time.perf_counter()
        result = assign_labels(
            problem.scores,
            lam=problem.lam,
            marginals=problem.marginals,
            backend="numba",
            tol=TOL,
            max_iter=MAX_ITER,
            acceleration=mode,
            rounding="argmax",
        )
        seconds = time.perf_counter() - start
    run = {"n_iter": result.n_iter, "converged": result.converged, "error": result.error}
    run["start_sweeps"] = result.start_sweeps
    run["sweeps"] = result.n_iter + result.start_sweeps
    return run, seconds


def measure(problem: Problem, rounds: int) -> dict:
    """Every mode on ``problem``: sweeps, and on timed problems the interleaved times."""
    entry: dict = {"problem": problem.name, "marginals": repr(problem.marginals)}
    entry["lam"] = problem.lam
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    sweeps: dict[str, list[int]] = {mode: [] for mode in MODES}
    for round_ in range(rounds if problem.timed else 1):
        shift = round_ % len(MODES)
        for mode in MODES[shift:] + MODES[:shift]:
            run, seconds = solve(problem, mode)
            entry.setdefault(mode, run)  # the first round's (every round's sweeps: below)
            times[mode].append(seconds)
            sweeps[mode].append(run["sweeps"])
    for mode in MODES:
        entry[mode]["sweeps_rounds"] = sweeps[mode]
    entry["sweep_ratio"] = {m: entry[m]["sweeps"] / entry[DEFAULT]["sweeps"] for m in BASELINES}
    if problem.timed:
        medians = {mode: float(np.median(t)) for mode, t in times.items()}
        entry["seconds"] = {mode: {"median": medians[mode], "all": times[mode]} for mode in MODES}
        entry["time_ratio"] = {m: medians[m] / medians[DEFAULT] for m in BASELINES}
    return entry


def geometric_mean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def summary(rows: list[dict]) -> dict:
    """Geometric means of the ratios, and whether the default ever took more sweeps."""
    out: dict = {"default": DEFAULT}
    for key, subset in (("all", rows), ("timed", [r for r in rows if "time_ratio" in r])):
        out[f"sweep_ratio_geomean_{key}"] = {
            m: geometric_mean([r["sweep_ratio"][m] for r in subset]) for m in BASELINES
        }
    timed = [r for r in rows if "time_ratio" in r]
    out["time_ratio_geomean_timed"] = {
        m: geometric_mean([r["time_ratio"][m] for r in timed]) for m in BASELINES
    }
    out["default_more_sweeps_than"] = {
        m: [r["problem"] + " " + r["marginals"] for r in rows if r["sweep_ratio"][m] < 1]
        for m in BASELINES
    }
    out["all_converged"] = {m: all(r[m]["converged"] for r in rows) for m in MODES}
    return out


def tables(rows: list[dict]) -> str:
    lines = ["| problem | marginals | lam | " + " | ".join(MODES) + " | none / auto |"]
    lines.append("|---|---|---|" + "---|" * (len(MODES) + 1))
    for row in rows:
        cells = [
            f"{row[m]['sweeps']:,.3g}" + ("" if row[m]["converged"] else " (not converged)")
            for m in MODES
        ]
        head = f"| {row['problem']} | {row['marginals']} | {row['lam']:g} | "
        lines.append(head + " | ".join(cells) + f" | {row['sweep_ratio']['none']:.1f}x |")
    lines += ["", "| problem | lam | auto (s) | " + " | ".join(f"{m} / auto" for m in BASELINES)]
    lines[-1] += " |"
    lines.append("|---|---|---|" + "---|" * len(BASELINES))
    for row in rows:
        if "time_ratio" in row:
            ratios = " | ".join(
                f"{row['time_ratio'][m]:.1f}x time, {row['sweep_ratio'][m]:.1f}x sweeps"
                for m in BASELINES
            )
            seconds = row["seconds"][DEFAULT]["median"]
            lines.append(f"| {row['problem']} | {row['lam']:g} | {seconds:.3f} | {ratios} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULT, help="result file")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per problem")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.perf_counter()
    solve(Problem("warm-up", 25.0, np.zeros((64, 8), np.float32), Uniform()), DEFAULT)
    rows = []
    for problem in problems():
        rows.append(measure(problem, args.rounds))
        print(json.dumps({k: rows[-1][k] for k in ("problem", "sweep_ratio")}), flush=True)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "code": package_code(),
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count()},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "wall_seconds": time.perf_counter() - started,
        "backend": "numba",
        "dtype": "float32",
        "tol": TOL,
        "max_iter": MAX_ITER,
        "rounds": args.rounds,
        "summary": summary(rows),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(tables(rows))
    print(json.dumps(record["summary"], indent=1))


if __name__ == "__main__":
    main()

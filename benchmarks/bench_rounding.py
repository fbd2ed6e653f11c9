"""Benchmark of the hard roundings: quality against ot.emd, and speed at million scale.

    python benchmarks/bench_rounding.py quality   # 20,000 x 200, three families, lam=25
    flock /tmp/equipart-heavy.lock python benchmarks/bench_rounding.py speed
    python benchmarks/bench_rounding.py exact-time   # the LP's time against its size
    python benchmarks/bench_rounding.py ties   # 5,000 x 50: tied scores against random ones

``quality`` solves each SeLa-shaped family once, rounds the same dual with ``argmax`` and
``balanced``, solves the hard LP with ``exact_assign`` (POT's ``ot.emd``), and records
every rounding's objective (mean log-probability of the assigned labels), its count range
and its time. ``speed`` times the Sinkhorn solve of a 1,000,000 x 1,000 float32 problem
and then the balanced rounding of its dual (the backend's ``top_labels`` pass and the host
solve separately), with the peak resident memory. ``exact-time`` times ``exact_assign``
(the dense LP through ``ot.emd``, after one small warm-up call) on the three families from
10^5 to 4 x 10^6 arcs (N x K with K = 200, arcs counted as the size guard counts them) and
fits seconds = s_4M (arcs / 4 x 10^6)^p by least squares on the logarithms of the slowest
family at each size: the constants of the size guard in ``equipart/exact.py``. ``ties``
rounds the Sinkhorn dual of four families of one shape (random, constant, integer-valued
and near-uniform scores, ``tie_family``) with ``balanced``, interleaved over repeats, and
reports each family's median time as a ratio to the random family's (the rounding alone,
and the whole ``assign_labels`` call), with the passes, phases and moves it made and its
objective against ``ot.emd``'s. Results go to
``benchmarks/results/rounding_<mode>.json`` together with the machine's description (the
CPU's model name and family from /proc/cpuinfo) and the commit of the checkout with the
package files that differ from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

import numpy as np

import equipart
from equipart.backends import get_backend
from equipart.balanced import FIRST_WIDTH, balanced_passes, solve_candidates
from equipart.exact import estimate_cost
from equipart.marginals import Uniform
from equipart.sources import InMemory

RESULTS = Path(__file__).parent / "results"


def family(name: str, n_rows: int, n_labels: int, seed: int) -> np.ndarray:
    """SeLa-shaped float32 logits, written block by block (no float64 N x K temporary).

    near-uniform: weak preferences, N(0, 0.5^2) logits (a network early in training).
    planted: a true label per point, uniform over labels, +3 on it over N(0, 1) noise.
    zipf: planted, but true labels drawn with probabilities ~ 1/rank and the logits
    biased by log(1/rank): the model prefers popular labels that the equipartition must
    push back.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n_rows, n_labels), dtype=np.float32)
    zipf = 1.0 / np.arange(1, n_labels + 1)
    zipf /= zipf.sum()
    step = max(1, (1 << 22) // n_labels)
    for start in range(0, n_rows, step):
        block = out[start : start + step]
        block[:] = rng.standard_normal(block.shape, dtype=np.float32)
        rows = np.arange(block.shape[0])
        if name == "near-uniform":
            block *= 0.5
        elif name == "planted":
            block[rows, rng.integers(n_labels, size=block.shape[0])] += 3.0
        elif name == "zipf":
            block[rows, rng.choice(n_labels, size=block.shape[0], p=zipf)] += 3.0
            block += np.log(zipf * n_labels).astype(np.float32)
        else:
            raise ValueError(f"family: unknown {name!r}")
    return out


def cpu_info() -> dict:
    """The CPU's model name and family as /proc/cpuinfo gives them (Linux), else platform's."""
    info = {"cpu": platform.processor() or platform.machine(), "arch": platform.machine()}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return info
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    if fields.get("model name"):
        info["cpu"] = fields["model name"]
    for key in ("vendor_id", "cpu family", "model"):
        if key in fields:
            info[f"cpu_{key.removeprefix('cpu ').replace(' ', '_')}"] = fields[key]
    return info


def code_version() -> dict:
    """The checkout's commit and the package files that differ from it (git diff)."""
    root = Path(__file__).resolve().parent.parent

    def git(*argv: str) -> str:
        run = subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True)
        return run.stdout.strip()

    try:
        changed = git("diff", "--name-only", "HEAD", "--", "equipart").splitlines()
        return {"commit": git("rev-parse", "--short", "HEAD") or "unknown", "changed": changed}
    except OSError:
        return {"commit": "unknown", "changed": []}


def machine() -> dict:
    return {
        **cpu_info(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "equipart": equipart.__version__,
    }


def counts_range(labels: np.ndarray, n_labels: int) -> list[int]:
    counts = np.bincount(labels, minlength=n_labels)
    return [int(counts.min()), int(counts.max())]


def quality(args: argparse.Namespace) -> dict:
    rows = []
    for name in ("near-uniform", "planted", "zipf"):
        x = family(name, args.n, args.k, seed=args.seed)
        start = time.perf_counter()
        soft = equipart.assign_labels(x, lam=args.lam, backend=args.backend, rounding="argmax")
        solve_s = time.perf_counter() - start
        entry = {"family": name, "sinkhorn_s": solve_s, "n_iter": soft.n_iter}
        for rounding in ("argmax", "balanced"):
            start = time.perf_counter()
            result = equipart.assign_labels(
                x, lam=args.lam, backend=args.backend, rounding=rounding, warm_start=soft.state
            )
            entry[rounding] = {
                "objective": result.objective,
                "counts": counts_range(result.labels, args.k),
                "seconds_with_warm_solve": time.perf_counter() - start,
            }
        start = time.perf_counter()
        exact = equipart.exact_assign(x)
        entry["exact"] = {
            "objective": exact.objective,
            "counts": counts_range(exact.labels, args.k),
            "seconds": time.perf_counter() - start,
        }
        for rounding in ("argmax", "balanced"):
            gap = (exact.objective - entry[rounding]["objective"]) / abs(exact.objective)
            entry[rounding]["relative_gap_to_exact"] = gap
        print(json.dumps(entry), flush=True)
        rows.append(entry)
    return {"mode": "quality", "n": args.n, "k": args.k, "lam": args.lam, "results": rows}


def speed(args: argparse.Namespace) -> dict:
    x = family(args.family, args.n, args.k, seed=args.seed)
    start = time.perf_counter()
    soft = equipart.assign_labels(x, lam=args.lam, backend=args.backend)
    solve_s = time.perf_counter() - start
    print(f"sinkhorn {solve_s:.1f} s, {soft.n_iter} iterations", flush=True)
    engine = get_backend(args.backend, x)
    bounds = Uniform().bind(args.n, args.k)
    lo, hi = bounds.count_bounds()
    g = np.asarray(soft.state.g)
    start = time.perf_counter()
    cand, value = engine.top_labels(x, "logits", args.lam, g, FIRST_WIDTH)
    cand, value = engine.to_numpy(cand), engine.to_numpy(value)
    top_s = time.perf_counter() - start
    start = time.perf_counter()
    solution = solve_candidates(cand, value, g, lo, hi, complete=False)
    host_s = time.perf_counter() - start
    print(f"top_labels {top_s:.1f} s, host solve {host_s:.1f} s", flush=True)
    balanced = np.bincount(solution.labels, minlength=args.k)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "mode": "speed",
        "family": args.family,
        "n": args.n,
        "k": args.k,
        "lam": args.lam,
        "backend": engine.name,
        "sinkhorn_s": solve_s,
        "n_iter": soft.n_iter,
        "sinkhorn_error": soft.error,
        "argmax_counts": counts_range(np.asarray(soft.labels), args.k),
        "top_labels_s": top_s,
        "host_solve_s": host_s,
        "balanced_total_s": top_s + host_s,
        "width": FIRST_WIDTH,
        "certified": solution.certified,
        "n_phases": solution.n_phases,
        "n_moves": solution.n_moves,
        "balanced_counts": [int(balanced.min()), int(balanced.max())],
        "input_gib": x.nbytes / 2**30,
        "peak_rss_gib": peak,
    }


EXACT_ROWS = (500, 1_000, 2_500, 5_000, 10_000, 20_000)  # x 200 labels: 10^5 to 4 x 10^6 arcs


def exact_time(args: argparse.Namespace) -> dict:
    equipart.exact_assign(family("planted", 100, 10, seed=args.seed))  # imports, first call
    rows = []
    for n_rows in EXACT_ROWS:
        lo, hi = Uniform().bind(n_rows, args.k).count_bounds()
        arcs = (n_rows + 1) * int(np.count_nonzero(lo > 0) + np.count_nonzero(hi > lo))
        _, estimate = estimate_cost(n_rows, lo, hi)
        for name in ("near-uniform", "planted", "zipf"):
            x = family(name, n_rows, args.k, seed=args.seed)
            start = time.perf_counter()
            equipart.exact_assign(x, max_seconds=None)
            seconds = time.perf_counter() - start
            row = {"family": name, "n": n_rows, "arcs": arcs, "seconds": seconds}
            rows.append({**row, "guard_estimate_s": estimate})
            print(json.dumps(rows[-1]), flush=True)
    slowest = {}
    for row in rows:
        slowest[row["arcs"]] = max(slowest.get(row["arcs"], 0.0), row["seconds"])
    arcs = np.array(sorted(slowest))
    seconds = np.array([slowest[a] for a in arcs])
    slope, intercept = np.polyfit(np.log(arcs / 4e6), np.log(seconds), 1)
    return {
        "mode": "exact-time",
        "k": args.k,
        "results": rows,
        "fit": {"seconds_at_4M_arcs": float(np.exp(intercept)), "exponent": float(slope)},
    }


TIE_FAMILIES = ("random", "constant", "integer", "near-uniform")


def tie_family(name: str, n_rows: int, n_labels: int, seed: int) -> np.ndarray:
    """Float32 logits whose rows tie exactly or nearly.

    random: N(0, 1), no ties (the baseline). constant: every score 0 (every label tied
    in every row). integer: uniform integers 0..9 (about K/10 labels tied at each row's
    top). near-uniform: 0.01 N(0, 1), a network early in training (distinct but close).
    """
    rng = np.random.default_rng(seed)
    shape = (n_rows, n_labels)
    if name == "random":
        return rng.standard_normal(shape, dtype=np.float32)
    if name == "constant":
        return np.zeros(shape, dtype=np.float32)
    if name == "integer":
        return rng.integers(0, 10, size=shape).astype(np.float32)
    if name == "near-uniform":
        return 0.01 * rng.standard_normal(shape, dtype=np.float32)
    raise ValueError(f"family: unknown {name!r}")


def _round_balanced(x: np.ndarray, g: np.ndarray, lam: float, backend: str) -> tuple:
    """The balanced rounder on one dual: (seconds, labels, its (width, solution) passes)."""
    engine = get_backend(backend, x)
    source = InMemory(engine, x, 1, x.shape[0], x.shape[1], False)
    constraint = Uniform().bind(*x.shape)
    start = time.perf_counter()
    passes, _ = balanced_passes(source, engine, 0, "logits", lam, g, constraint)
    return time.perf_counter() - start, passes[-1][1].labels, passes


def ties(args: argparse.Namespace) -> dict:
    load = {"start": list(os.getloadavg())}
    data = {name: tie_family(name, args.n, args.k, args.seed) for name in TIE_FAMILIES}
    duals, rounding, whole, argmax, passes, results = {}, {}, {}, {}, {}, {}
    for name, x in data.items():
        soft = equipart.assign_labels(x, lam=args.lam, backend=args.backend)
        duals[name] = np.asarray(soft.state.g)
        rounding[name], whole[name], argmax[name] = [], [], []
    for _ in range(args.repeats):  # interleaved: a load change hits every family alike
        for name, x in data.items():
            seconds, _, passes[name] = _round_balanced(x, duals[name], args.lam, args.backend)
            rounding[name].append(seconds)
            start = time.perf_counter()
            results[name] = equipart.assign_labels(
                x, lam=args.lam, backend=args.backend, rounding="balanced"
            )
            whole[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            equipart.assign_labels(x, lam=args.lam, backend=args.backend, rounding="argmax")
            argmax[name].append(time.perf_counter() - start)
    rows = []
    for name, x in data.items():
        exact = equipart.exact_assign(x, backend="numpy")
        objective = results[name].objective
        row = {
            "family": name,
            "rounding_s": float(np.median(rounding[name])),
            "rounding_ratio_to_random": float(
                np.median(rounding[name]) / np.median(rounding["random"])
            ),
            "assign_labels_s": float(np.median(whole[name])),
            "assign_labels_ratio_to_random": float(
                np.median(whole[name]) / np.median(whole["random"])
            ),
            "argmax_assign_labels_s": float(np.median(argmax[name])),
            "passes": [
                {
                    "width": width,
                    "feasible": sol.feasible,
                    "certified": sol.certified,
                    "n_phases": sol.n_phases,
                    "n_moves": sol.n_moves,
                }
                for width, sol in passes[name]
            ],
            "counts": counts_range(np.asarray(results[name].labels), args.k),
            "objective": objective,
            "exact_objective": exact.objective,
            "gap_to_exact": exact.objective - objective,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {
        "mode": "ties",
        "n": args.n,
        "k": args.k,
        "lam": args.lam,
        "backend": args.backend,
        "repeats": args.repeats,
        "loadavg": {**load, "end": list(os.getloadavg())},
        "results": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("quality", "speed", "exact-time", "ties"))
    parser.add_argument("--n", type=int)
    parser.add_argument("--k", type=int)
    parser.add_argument("--lam", type=float, default=25.0)
    parser.add_argument("--family", default="planted")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.mode == "quality":
        args.n, args.k = args.n or 20_000, args.k or 200
        record = quality(args)
    elif args.mode == "exact-time":
        args.k = args.k or 200
        record = exact_time(args)
    elif args.mode == "ties":
        args.n, args.k = args.n or 5_000, args.k or 50
        record = ties(args)
    else:
        args.n, args.k = args.n or 1_000_000, args.k or 1_000
        record = speed(args)
    record["machine"] = machine()
    record["code"] = code_version()
    out = args.out or RESULTS / f"rounding_{args.mode.replace('-', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

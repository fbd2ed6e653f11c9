"""Evidence for the default rounding, and the speed of ``sinkhorn_codes``.

``rounding``: label counts, objective and time of ``rounding="argmax"``, ``"auto"`` (the
default) and ``"balanced"`` on tied and untied scores, float32, lam 25, Uniform sizes,
Numba backend: constant scores (an untrained network), integers 0..9, near-uniform
N(0, 0.01^2) logits (early training), N(0, 1) logits and the bench's sela-late family.
For each: the counts' range, the largest miss |count - size| in units of the rounding
noise (``equipart.rounding.count_slack``: above 1 is a miss), the mean log-probability
of the labels, and the median time of the whole call over interleaved repeats, with the
ratio to argmax's.

``codes``: ``sinkhorn_codes`` (eps 0.05, 3 iterations) on 256 x 3,000 cosine scores, as
a SwAV batch gives, against the same loop written in plain NumPy (and in torch), float32,
interleaved repeats, medians and minima, and the ratio to the NumPy loop.

    python benchmarks/bench_trust.py rounding|codes [--out FILE]

Writes ``benchmarks/results/trust_rounding.json`` or ``trust_codes_cpu.json`` (or FILE),
with the machine, its load at start and end, and the package's commit.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_acceleration import package_code

import equipart
from equipart.bench.problems import ProblemSpec, generate
from equipart.bench.report import describe_machine
from equipart.rounding import count_slack

RESULTS = Path(__file__).resolve().parent / "results"
ROUNDINGS = ("argmax", "auto", "balanced")


def tied_families(n_rows: int, n_labels: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "constant": np.zeros((n_rows, n_labels), np.float32),
        "integer 0..9": rng.integers(0, 10, (n_rows, n_labels)).astype(np.float32),
        "near-uniform N(0, 0.01^2)": (0.01 * rng.standard_normal((n_rows, n_labels))).astype(
            np.float32
        ),
        "normal N(0, 1)": rng.standard_normal((n_rows, n_labels)).astype(np.float32),
        "sela-late": np.asarray(generate(ProblemSpec("sela-late", n_rows, n_labels, 0))),
    }


def medians(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Median and minimum seconds of each call, the calls interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": float(np.median(t)), "min_s": float(np.min(t))}
        for name, t in times.items()
    }


def run_rounding(repeats: int) -> dict:
    rows = []
    shapes = ((2_000, 20), (20_000, 200))
    for n_rows, n_labels in shapes:
        for family, scores in tied_families(n_rows, n_labels).items():
            if family == "constant" and n_rows > 2_000:
                continue  # balanced rounding of all-tied rows is superlinear (issue 19)
            entry = {"family": family, "n": n_rows, "k": n_labels}
            calls = {}
            for rounding in ROUNDINGS:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = equipart.assign_labels(scores, rounding=rounding, backend="numba")
                counts = np.bincount(result.labels, minlength=n_labels)
                target = np.full(n_labels, n_rows / n_labels)
                slack = count_slack(target, result.error, n_labels)
                entry[rounding] = {
                    "used": result.rounding,
                    "counts": [int(counts.min()), int(counts.max())],
                    "miss_in_noise_units": float(np.max(np.abs(counts - target) / slack)),
                    "objective": result.objective,
                    "n_iter": result.n_iter,
                }
                calls[rounding] = lambda r=rounding, s=scores: _quiet_solve(s, r)
            for rounding, timing in medians(calls, repeats).items():
                entry[rounding].update(timing)
            for rounding in ROUNDINGS:
                entry[rounding]["time_vs_argmax"] = (
                    entry[rounding]["median_s"] / entry["argmax"]["median_s"]
                )
            rows.append(entry)
            print(json.dumps(entry), flush=True)
    return {"lam": 25.0, "tol": 1e-3, "backend": "numba", "repeats": repeats, "rows": rows}


def _quiet_solve(scores: np.ndarray, rounding: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        equipart.assign_labels(scores, rounding=rounding, backend="numba")


def swav_numpy(scores: np.ndarray, eps: float = 0.05, n_iter: int = 3) -> np.ndarray:
    """SwAV's distributed_sinkhorn in one process, in plain NumPy (float32)."""
    q = np.exp(scores / np.float32(eps)).T
    q /= q.sum()
    n_prototypes, batch = q.shape
    for _ in range(n_iter):
        q /= q.sum(axis=1, keepdims=True)
        q /= n_prototypes
        q /= q.sum(axis=0, keepdims=True)
        q /= batch
    q *= batch
    return q.T


def swav_torch(scores, eps: float = 0.05, n_iter: int = 3):
    """The same loop in torch (as SwAV's code runs it, here on the CPU)."""
    q = (scores / eps).exp().t()
    q /= q.sum()
    n_prototypes, batch = q.shape
    for _ in range(n_iter):
        q /= q.sum(dim=1, keepdim=True)
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= batch
    q *= batch
    return q.t()


def run_codes(repeats: int) -> dict:
    import numba
    import torch

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((256, 128)).astype(np.float32)
    proto = rng.standard_normal((3_000, 128)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    proto /= np.linalg.norm(proto, axis=1, keepdims=True)
    scores = emb @ proto.T
    tensor = torch.from_numpy(scores)
    calls = {
        "numpy SwAV loop": lambda: swav_numpy(scores),
        "torch SwAV loop": lambda: swav_torch(tensor),
        "equipart numba": lambda: equipart.sinkhorn_codes(scores, backend="numba"),
        "equipart numpy": lambda: equipart.sinkhorn_codes(scores, backend="numpy"),
        "equipart torch (CPU tensor)": lambda: equipart.sinkhorn_codes(tensor),
    }
    for call in calls.values():  # compile, warm caches
        call()
    reference = swav_numpy(scores.astype(np.float64))
    error = float(np.abs(equipart.sinkhorn_codes(scores) - reference).max())
    by_threads = {}
    for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
        numba.set_num_threads(threads)
        torch.set_num_threads(threads)
        timing = medians(calls, repeats)
        base = timing["numpy SwAV loop"]["median_s"]
        for entry in timing.values():
            entry["vs_numpy_loop"] = entry["median_s"] / base
        by_threads[str(threads)] = timing
        print(threads, json.dumps(timing), flush=True)
    return {
        "shape": [256, 3_000],
        "eps": 0.05,
        "n_iter": 3,
        "max_abs_difference_to_float64_loop": error,
        "repeats": repeats,
        "threads": by_threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("rounding", "codes"))
    parser.add_argument("--out", type=Path, help="result file")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    load = {"start": list(os.getloadavg())}
    if args.part == "rounding":
        body = run_rounding(args.repeats or 5)
        out = args.out or RESULTS / "trust_rounding.json"
    else:
        body = run_codes(args.repeats or 200)
        out = args.out or RESULTS / "trust_codes_cpu.json"
    load["end"] = list(os.getloadavg())
    document = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "code": package_code(),
        "machine": {**describe_machine(False), "load_average": load},
        **body,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Benchmarks of balanced clustering and factored scores (issue 22), side by side in one run.

    python benchmarks/bench_cluster.py kmc        # BalancedKMeans against KMeansConstrained
    python benchmarks/bench_cluster.py scale      # BalancedKMeans at 1,000,000 x 64, K = 1,000
    python benchmarks/bench_cluster.py factored   # Factored scores: memory, labels, GFLOP/s

``kmc``: 20,000 points in 32 dimensions into 100 clusters of exactly 200, on three data
sets (an unequal Gaussian mixture whose natural clusters the sizes must cut, 100 equal
blobs, structureless Gaussian noise), ``--seeds`` seeds each; every seed runs equipart's
``BalancedKMeans`` and ``k_means_constrained.KMeansConstrained`` (a min-cost flow over all
N x K arcs per iteration; ``pip install k-means-constrained``) one after the other, both
with k-means++, ``n_init=1``, ``tol=1e-4`` and their own seeding from the same integer.
Reported per data set: the median time ratio and the ratio of mean inertias (targets: at
least 10x faster, inertia within 1%), with every run's time, inertia, iterations and
cluster sizes (checked exact).

``scale``: one ``BalancedKMeans(1000)`` fit of an unequal Gaussian mixture of 1,000,000
points in 64 dimensions (float32), with its phases timed (k-means++, each iteration's
Sinkhorn sweeps and balanced rounding).

``factored``: at N = 400,000, K = 1,000, d = 32 (float32; the N x K scores would be 1.5
GiB), each in a fresh subprocess: (1) a Factored solve's peak resident memory above the
process before the factors existed (``/proc/self/clear_refs`` resets the high-water mark
after a warm-up), and tracemalloc's peak in a second, traced run, against the N x K
float32 array's size (target: at most 25%); (2) the labels of the Factored solve and of
the same solve on ``to_dense()`` (``rounding="argmax"`` and ``"balanced"``), compared;
(3) the sweep's GFLOP/s (2 N K d flops of the GEMM per sweep) against the BLAS GEMM alone
on the same shapes: NumPy's ``matmul`` into a preallocated N x K array, and the same
GEMMs in the fused sweep's blocks with no sweep (target: at least 70%); interleaved
repeats, medians.

Each result file records the machine (CPU model, cores), the commit (and whether the
package's files differ from it), Numba's thread count and the load average before and
after: benchmarks/results/cluster_kmc_cpu.json, cluster_scale_cpu.json,
factored_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    """The machine, the commit (with the package files that differ from it) and threads."""
    import numba

    from equipart.bench.report import describe_machine

    info = describe_machine(with_gpu=False)
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "equipart"],
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    info["package_changes"] = [line.strip() for line in changed if line.strip()]
    info["numba_threads"] = numba.config.NUMBA_NUM_THREADS
    return info


def write(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {path}")
    return path


# --------------------------------------------------------------------------- data
def mixture(n_rows: int, n_features: int, n_components: int, seed: int) -> np.ndarray:
    """A Gaussian mixture with Dirichlet(1) weights (natural clusters of unequal sizes),
    centres uniform in [-10, 10]^d, unit... cluster_std 2, centred, float32."""
    from sklearn.datasets import make_blobs

    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_rows, rng.dirichlet(np.ones(n_components)))
    x, _ = make_blobs(
        n_samples=counts, n_features=n_features, cluster_std=2.0, random_state=seed
    )
    return (x - x.mean(axis=0)).astype(np.float32)


def dataset(name: str, seed: int) -> np.ndarray:
    """The 20,000 x 32 data sets of ``kmc``."""
    from sklearn.datasets import make_blobs

    if name == "unequal-mixture":
        return mixture(20_000, 32, 100, seed)
    if name == "equal-blobs":
        x, _ = make_blobs(
            n_samples=20_000, centers=100, n_features=32, cluster_std=2.0, random_state=seed
        )
        return x.astype(np.float32)
    return np.random.default_rng(seed).standard_normal((20_000, 32), dtype=np.float32)


# --------------------------------------------------------------------------- kmc
def fit_equipart(x: np.ndarray, n_clusters: int, seed: int) -> dict[str, Any]:
    from equipart.cluster import BalancedKMeans

    start = time.perf_counter()
    model = BalancedKMeans(n_clusters, random_state=seed).fit(x)
    seconds = time.perf_counter() - start
    return _record(seconds, model.inertia_, model.n_iter_, model.labels_, n_clusters)


def fit_kmc(x: np.ndarray, n_clusters: int, size: int, seed: int) -> dict[str, Any]:
    from k_means_constrained import KMeansConstrained

    start = time.perf_counter()
    model = KMeansConstrained(
        n_clusters, size_min=size, size_max=size, n_init=1, tol=1e-4, random_state=seed
    ).fit(x)
    seconds = time.perf_counter() - start
    labels = np.asarray(model.labels_, dtype=np.int64)
    inertia = _inertia(x, labels, n_clusters)
    return _record(seconds, inertia, int(model.n_iter_), labels, n_clusters)


def _inertia(x: np.ndarray, labels: np.ndarray, n_clusters: int) -> float:
    """sum_i |x_i - mean of its cluster|^2 in float64 (the same judge for both)."""
    x64 = x.astype(np.float64)
    centres = np.zeros((n_clusters, x.shape[1]))
    np.add.at(centres, labels, x64)
    centres /= np.maximum(np.bincount(labels, minlength=n_clusters), 1)[:, None]
    return float(((x64 - centres[labels]) ** 2).sum())


def _record(seconds: float, inertia: float, n_iter: int, labels: np.ndarray, k: int) -> dict:
    sizes = np.bincount(labels, minlength=k)
    return {
        "seconds": seconds,
        "inertia": float(inertia),
        "n_iter": int(n_iter),
        "seconds_per_iteration": seconds / max(1, n_iter),
        "size_min": int(sizes.min()),
        "size_max": int(sizes.max()),
    }


def run_kmc(seeds: int) -> None:
    n_clusters, size = 100, 200
    warm = dataset("gaussian", 99)[:2_000]
    fit_equipart(warm, 10, 0)  # compile the kernels (cached on disk after the first run)
    fit_kmc(warm, 10, 200, 0)
    load_before = os.getloadavg()
    rows, summary = [], {}
    for name in ("unequal-mixture", "equal-blobs", "gaussian"):
        for seed in range(seeds):
            x = dataset(name, seed)
            order = ("equipart", "kmc") if seed % 2 == 0 else ("kmc", "equipart")
            for who in order:  # alternate who goes first
                out = fit_equipart(x, n_clusters, seed) if who == "equipart" else fit_kmc(
                    x, n_clusters, size, seed
                )
                out.update(data=name, seed=seed, contender=who, load=os.getloadavg()[0])
                rows.append(out)
                print(json.dumps(out), flush=True)
        mine = [r for r in rows if r["data"] == name and r["contender"] == "equipart"]
        theirs = [r for r in rows if r["data"] == name and r["contender"] == "kmc"]
        ratios = [t["seconds"] / m["seconds"] for m, t in zip(mine, theirs, strict=True)]
        summary[name] = {
            "speedup_median": float(np.median(ratios)),
            "speedups": ratios,
            "inertia_ratio_of_means": float(
                np.mean([r["inertia"] for r in mine]) / np.mean([r["inertia"] for r in theirs])
            ),
            "seconds_median": {
                "equipart": float(np.median([r["seconds"] for r in mine])),
                "kmc": float(np.median([r["seconds"] for r in theirs])),
            },
            "exact_sizes": all(r["size_min"] == r["size_max"] == size for r in mine + theirs),
        }
        print(json.dumps({name: summary[name]}), flush=True)
    write(
        "cluster_kmc_cpu.json",
        {
            "benchmark": "BalancedKMeans vs KMeansConstrained, 20,000 x 32, 100 clusters of 200",
            "targets": {"speedup": 10.0, "inertia_within": 0.01},
            "machine": machine(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "summary": summary,
            "runs": rows,
        },
    )


# --------------------------------------------------------------------------- main
def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("kmc", "scale", "factored"))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", FutureWarning)
    if args.mode == "kmc":
        run_kmc(args.seeds)


if __name__ == "__main__":
    main(sys.argv[1:])

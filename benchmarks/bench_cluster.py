"""Benchmarks of balanced clustering and factored scores (issue 22), side by side in one run.

    python benchmarks/bench_cluster.py                  # all three parts, one result file
    python benchmarks/bench_cluster.py --scale-rows 200000 --seeds 1   # smaller

``kmc``: 20,000 points in 32 dimensions into 100 clusters of exactly 200, on three data
sets (an unequal Gaussian mixture whose natural clusters the sizes must cut, 100 equal
blobs, structureless Gaussian noise), ``--seeds`` seeds each; every seed runs equipart's
``BalancedKMeans`` and ``k_means_constrained.KMeansConstrained`` (a min-cost flow over all
N x K arcs per iteration; ``pip install k-means-constrained``, skipped with a message where
it is missing) one after the other, alternating which goes first, both at their
defaults except ``n_init=1`` (k-means-constrained's default is 10; equipart's is 1),
``tol=1e-4`` and ``random_state`` the same integer: both seed with greedy k-means++ from
the same random draws, so they start from the same centres. Reported per data
set: the median time ratio and the ratio of mean inertias (targets: at least 10x faster,
inertia within 1%), with every run's time, inertia, iterations and cluster sizes (checked
exact); and, to read the inertia ratio against, equipart's inertia on the seed-0 unequal
mixture over ``INIT_SEEDS`` k-means++ seeds (``init_spread``).

``scale``: ``BalancedKMeans(1000)`` fits of unequal Gaussian mixtures of each N of
``--scale-rows`` (default 1,000,000) points in 64 dimensions (float32), in turn, each in a
subprocess, all within ``--scale-budget`` seconds (default 900; a fit still running then
is stopped and recorded unfinished): seconds, iterations and the sizes.

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

``memory``: the factored part's memory measurement alone (its untraced Factored child,
``rounding="argmax"`` then ``"balanced"``), for a quicker check of the 25% target.

The result file, benchmarks/results/cluster_cpu.json, records for each part the machine
(CPU model, cores, commit, and whether the package's files differ from it), Numba's thread
count and the load average before and after. ``--parts`` runs some parts and keeps the
others from the existing file.
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


def write(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {path}")
    return path


# --------------------------------------------------------------------------- data
def mixture(n_rows: int, n_features: int, n_components: int, seed: int) -> np.ndarray:
    """A Gaussian mixture with Dirichlet(1) weights (natural clusters of unequal sizes),
    centres uniform in [-10, 10]^d, standard deviation 2, centred, float32."""
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


def run_kmc(seeds: int) -> dict[str, Any]:
    try:
        import k_means_constrained  # noqa: F401
    except ImportError:
        reason = "k-means-constrained is not installed (pip install k-means-constrained)"
        print(f"kmc: skipped: {reason}", flush=True)
        return {"skipped": reason}
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
    return {
        "benchmark": "BalancedKMeans vs KMeansConstrained, 20,000 x 32, 100 clusters of 200",
        "targets": {"speedup": 10.0, "inertia_within": 0.01},
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "summary": summary,
        "runs": rows,
        "init_spread": init_spread(n_clusters, INIT_SEEDS),
    }


INIT_SEEDS = 10  # k-means++ seeds of init_spread


def init_spread(n_clusters: int, n_seeds: int) -> dict[str, Any]:
    """equipart's inertia on the seed-0 unequal mixture over ``n_seeds`` k-means++ seeds
    (``n_init=1`` each): how far one initialisation's local optimum varies, to read the
    inertia ratio of two single runs against."""
    x = dataset("unequal-mixture", 0)
    inertias = [fit_equipart(x, n_clusters, seed)["inertia"] for seed in range(n_seeds)]
    print(json.dumps({"init_spread": inertias}), flush=True)
    return {
        "data": "unequal-mixture",
        "data_seed": 0,
        "random_states": list(range(n_seeds)),
        "inertias": inertias,
        "median": float(np.median(inertias)),
        "min": float(np.min(inertias)),
        "max": float(np.max(inertias)),
    }


# --------------------------------------------------------------------------- scale
SCALE_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import bench_cluster as bench
from equipart.cluster import BalancedKMeans

n_rows = int(sys.argv[2])
x = bench.mixture(n_rows, 64, 1_000, 0)
start = time.perf_counter()
model = BalancedKMeans(1_000, random_state=0).fit(x)
seconds = time.perf_counter() - start
out = bench._record(seconds, model.inertia_, model.n_iter_, model.labels_, 1_000)
out.update(n_rows=n_rows, lam=model.lam_, finished=True)
print(json.dumps(out))
"""


def run_scale(rows: list[int], budget: float) -> dict[str, Any]:
    """``BalancedKMeans(1000)`` fits of n x 64 float32 mixtures, for each n of ``rows`` in
    turn, each in a subprocess stopped when the part's ``budget`` (seconds) is spent: a
    fit stopped there is recorded as unfinished, with the seconds it was given (one not
    started for want of time, as not started)."""
    load_before = os.getloadavg()
    start, runs = time.perf_counter(), []
    for n_rows in rows:
        left = budget - (time.perf_counter() - start)
        if left < 1.0:
            runs.append({"n_rows": n_rows, "finished": False, "started": False})
            continue
        try:
            done = subprocess.run(
                [sys.executable, "-c", SCALE_CHILD, str(Path(__file__).parent), str(n_rows)],
                capture_output=True, text=True, check=True, timeout=max(left, 1.0),
            )  # fmt: skip
            out = json.loads(done.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            out = {"n_rows": n_rows, "finished": False, "stopped_after_seconds": left}
        out["load_after"] = os.getloadavg()
        runs.append(out)
        print(json.dumps(out), flush=True)
    return {
        "benchmark": "BalancedKMeans(1000) on n x 64 float32 unequal mixtures",
        "budget_seconds": budget,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "runs": runs,
    }


# --------------------------------------------------------------------------- factored
FACTORED_SHAPE = (400_000, 1_000, 32)
FACTORED_LAM = 1.0  # on cosine similarities / 0.1 (scale 10): SwAV's temperature

CHILD = r"""
import json, resource, sys, time, tracemalloc
import numpy as np
sys.path.insert(0, sys.argv[1])
import bench_cluster as bench
from equipart import Factored, assign_labels

form, traced, out = sys.argv[2], sys.argv[3] == "1", sys.argv[4]
small = bench.factored_problem(2_000)
for rounding in ("argmax", "balanced"):  # compile and warm up
    assign_labels(small if form == "factored" else small.to_dense(), bench.FACTORED_LAM,
                  rounding=rounding)
with open("/proc/self/clear_refs", "w") as marks:
    marks.write("5")  # the resident high-water mark back to the current size
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if traced:
    tracemalloc.start()
scores = bench.factored_problem(bench.FACTORED_SHAPE[0])
if form == "dense":
    scores = scores.to_dense()
report = {"form": form, "traced": traced}
for rounding in ("argmax", "balanced"):
    start = time.perf_counter()
    result = assign_labels(scores, bench.FACTORED_LAM, rounding=rounding)
    report[rounding] = {"seconds": time.perf_counter() - start, "n_iter": result.n_iter,
                        "objective": result.objective}
    np.save(f"{out}_{rounding}_labels.npy", result.labels)
    np.save(f"{out}_{rounding}_g.npy", result.state.g)
if traced:
    report["traced_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
report["rss_base_mib"] = base
report["rss_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
report["extra_mib"] = report["rss_peak_mib"] - base
print(json.dumps(report))
"""


def factored_problem(n_rows: int) -> Any:
    """Cosine scores / 0.1 of clustered float32 embeddings (N x 32) against 1,000
    prototypes drawn near the clusters: SwAV's prototype head, as Factored scores."""
    from equipart import Factored

    _, n_labels, n_features = FACTORED_SHAPE
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, n_features)).astype(np.float32)
    features = np.empty((n_rows, n_features), dtype=np.float32)
    step = 100_000
    for start in range(0, n_rows, step):
        part = features[start : start + step]
        part[:] = centres[rng.integers(0, 200, part.shape[0])]
        part += 0.7 * rng.standard_normal(part.shape, dtype=np.float32)
    prototypes = centres[rng.integers(0, 200, n_labels)]
    prototypes = prototypes + 0.5 * rng.standard_normal(prototypes.shape, dtype=np.float32)
    return Factored(features, prototypes, metric="cosine", scale=10.0)


def _child(form: str, traced: bool, out: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(Path(__file__).parent), form, "1" if traced else "0",
         out],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def _gemm_blocks_kernel():
    """A Numba kernel running only the fused sweep's GEMMs (same chunks, blocks and
    threads: ``equipart.backends.numba._run``)."""
    from numba import njit

    from equipart.backends.numba import _chunk_bounds, _claim, _finish

    @njit(nogil=True)
    def gemms(counters, x, protos_t, n_chunks, gemm_rows, sink):
        n_rows = x.shape[0]
        buffer = np.empty((gemm_rows, protos_t.shape[1]), dtype=x.dtype)
        last = False
        c = _claim(counters)
        while c < n_chunks:
            r0, r1 = _chunk_bounds(c, n_chunks, n_rows)
            for b0 in range(r0, r1, gemm_rows):
                b1 = min(b0 + gemm_rows, r1)
                np.dot(x[b0:b1], protos_t, buffer[: b1 - b0])
            sink[c] = buffer[0, 0]
            last = _finish(counters, n_chunks)
            c = _claim(counters)
        return last

    return gemms


def _sweep_speed(repeats: int) -> dict[str, Any]:
    """Seconds per pass, interleaved repeats: the fused sweep, NumPy's GEMM into an N x K
    array, the fused sweep's GEMMs alone, and the Numba backend's sweep of the N x K array."""
    from equipart._factored_numba import blas_single_thread
    from equipart.backends.numba import NumbaBackend, _n_chunks, _run

    scores = factored_problem(FACTORED_SHAPE[0])
    n_rows, n_labels, n_features = FACTORED_SHAPE
    engine, source = scores.open("numba")
    (block,) = source.blocks(0)
    fused = engine._fused
    # the GEMM alone reads the prepared (normalised, scaled) factors
    x, factors, protos_t, _ = scores.host_factors()
    x = np.ascontiguousarray(x * factors[:, None])
    dense = np.empty((n_rows, n_labels), dtype=np.float32)
    gemms = _gemm_blocks_kernel()
    n_chunks = _n_chunks(n_rows, n_labels)
    sink = np.empty(n_chunks, dtype=np.float32)
    g = np.zeros(n_labels)
    numba_backend = NumbaBackend()

    def blocks_only():
        with blas_single_thread():
            _run(gemms, n_chunks, x.shape[0] * n_labels, x, protos_t[0], n_chunks,
                 fused.gemm_rows, sink)  # fmt: skip

    passes = {
        "fused_sweep": lambda: engine.sweep(block, "logits", FACTORED_LAM, g),
        "numpy_gemm": lambda: np.matmul(x, protos_t[0], out=dense),
        "gemm_in_fused_blocks": blocks_only,
        "numba_sweep_of_dense": lambda: numba_backend.sweep(dense, "logits", FACTORED_LAM, g),
    }
    for run in passes.values():  # compile, fault pages in
        run()
    times: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(repeats):
        for name, run in passes.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    flops = 2.0 * n_rows * n_labels * n_features
    medians = {name: float(np.median(t)) for name, t in times.items()}
    return {
        "seconds": times,
        "median_seconds": medians,
        "gflops": {name: flops / t / 1e9 for name, t in medians.items()},
        "fused_vs_numpy_gemm": medians["numpy_gemm"] / medians["fused_sweep"],
        "fused_vs_gemm_in_blocks": medians["gemm_in_fused_blocks"] / medians["fused_sweep"],
        "flops_per_sweep": flops,
    }


def run_factored(repeats: int) -> dict[str, Any]:
    import tempfile

    n_rows, n_labels, _ = FACTORED_SHAPE
    dense_mib = n_rows * n_labels * 4 / 2**20
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "factored": _child("factored", False, f"{tmp}/factored"),
            "factored_traced": _child("factored", True, f"{tmp}/traced"),
            "dense": _child("dense", False, f"{tmp}/dense"),
        }
        labels = {}
        for rounding in ("argmax", "balanced"):
            mine = np.load(f"{tmp}/factored_{rounding}_labels.npy")
            theirs = np.load(f"{tmp}/dense_{rounding}_labels.npy")
            duals = [np.load(f"{tmp}/{form}_{rounding}_g.npy") for form in ("factored", "dense")]
            g_gap = np.abs(duals[0] - duals[1]).max()
            labels[rounding] = {
                "identical": bool(np.array_equal(mine, theirs)),
                "differing_labels": int((mine != theirs).sum()),
                "max_dual_difference": float(g_gap),
                "n_iter": [runs["factored"][rounding]["n_iter"], runs["dense"][rounding]["n_iter"]],
            }
    print(json.dumps(runs), json.dumps(labels), flush=True)
    speed = _sweep_speed(repeats)
    print(json.dumps(speed["median_seconds"]), flush=True)
    return {
        "benchmark": "Factored scores, 400,000 x 1,000, d = 32, float32 cosine / 0.1",
        "targets": {"extra_memory_of_dense": 0.25, "sweep_gflops_of_gemm": 0.70},
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "dense_mib": dense_mib,
        "memory": {
            "factored_extra_mib": runs["factored"]["extra_mib"],
            "factored_extra_of_dense": runs["factored"]["extra_mib"] / dense_mib,
            "factored_traced_peak_mib": runs["factored_traced"]["traced_peak_mib"],
            "factored_traced_of_dense": runs["factored_traced"]["traced_peak_mib"] / dense_mib,
            "dense_solve_extra_mib": runs["dense"]["extra_mib"],
        },
        "labels": labels,
        "solves": runs,
        "sweep_speed": speed,
    }


def run_memory() -> dict[str, Any]:
    """The Factored child of ``run_factored`` alone: its resident peak against the N x K
    float32 array."""
    import tempfile

    n_rows, n_labels, _ = FACTORED_SHAPE
    dense_mib = n_rows * n_labels * 4 / 2**20
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        run = _child("factored", False, f"{tmp}/factored")
    print(json.dumps(run), flush=True)
    return {
        "benchmark": "Factored solve's peak memory, 400,000 x 1,000, d = 32, float32 cosine / 0.1",
        "targets": {"extra_memory_of_dense": 0.25},
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "dense_mib": dense_mib,
        "factored_extra_mib": run["extra_mib"],
        "factored_extra_of_dense": run["extra_mib"] / dense_mib,
        "solve": run,
    }


# --------------------------------------------------------------------------- main
def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="kmc: seeds per data set")
    parser.add_argument(
        "--scale-rows", default="1000000", help="scale: comma-separated N, run in turn"
    )
    parser.add_argument(
        "--scale-budget", type=float, default=900.0, help="scale: seconds for all its fits"
    )
    parser.add_argument("--repeats", type=int, default=5, help="factored: timed sweeps")
    parser.add_argument("--out", type=Path, default=RESULTS / "cluster_cpu.json")
    parser.add_argument(
        "--parts",
        default="kmc,factored,scale",
        help="comma-separated parts to run; the others are kept from an existing --out",
    )
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", FutureWarning)
    runners = {
        "kmc": lambda: run_kmc(args.seeds),
        "factored": lambda: run_factored(args.repeats),
        "memory": run_memory,
        "scale": lambda: run_scale(
            [int(n) for n in args.scale_rows.split(",")], args.scale_budget
        ),
    }
    chosen = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(runners))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; choose among {sorted(runners)}")
    payload: dict[str, Any] = {}
    if args.out.exists() and set(chosen) != set(runners):
        payload = json.loads(args.out.read_text())
    for name in chosen:
        start = time.perf_counter()
        machine_then = machine()
        payload[name] = runners[name]()
        payload[name]["machine"] = machine_then
        payload[name]["part_seconds"] = time.perf_counter() - start
        write(args.out, payload)  # after every part: a long run keeps what it finished


if __name__ == "__main__":
    main(sys.argv[1:])

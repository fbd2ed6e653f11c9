"""Out-of-core benchmark: solve a .npy memmap several times larger than a memory budget.

Writes an N x K score file (float16 by default), then, in rounds, side by side:

* a plain sequential read of the whole file (``readinto`` a 64 MiB buffer): from the disk
  (file evicted from the page cache first, with ``posix_fadvise(POSIX_FADV_DONTNEED)``)
  and from the page cache (the file read once before, and kept there);
* ``assign_labels(path, ...)`` (backend "auto": Numba where installed), each in a fresh
  child process so that its peak resident memory (VmHWM) is its own, with the file
  evicted before every sweep ("cold": every sweep reads the disk) and without eviction
  ("cached": the page cache holds the file), reporting seconds per sweep, the bytes each
  sweep streams per second, their ratio to the plain read of the same round (disk for
  cold, page cache for cached), and VmHWM against the stated budget.

Run under the team's heavy lock, e.g.
    flock /tmp/equipart-heavy.lock python benchmarks/bench_out_of_core.py \
        --rows 1000000 --labels 1000 --budget-gib 0.5 --out benchmarks/results/ooc_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from bench_numba import cpu_model

CHUNK_ROWS = 1 << 16


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status.read(), re.MULTILINE).group(1)) * 1024


def _evict(path: Path) -> None:
    """Drop the file's clean pages from the page cache (no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_scores(path: Path, n_rows: int, n_labels: int, dtype: str, seed: int) -> float:
    """Write the score file chunk by chunk (bounded memory); returns seconds taken."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(CHUNK_ROWS, n_labels)).astype(np.float32)
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (n_rows, n_labels)}
    with open(path, "wb") as handle:  # plain writes: the writer's memory stays one chunk
        np.lib.format.write_array_header_1_0(handle, header)
        for first in range(0, n_rows, CHUNK_ROWS):
            rows = min(CHUNK_ROWS, n_rows - first)
            # a fresh row permutation and label shift per chunk: distinct rows, cheap to make
            chunk = base[rng.permutation(CHUNK_ROWS)[:rows]] + rng.normal(size=n_labels)
            chunk.astype(dtype).tofile(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return time.perf_counter() - start


def read_speed(path: Path, limit: int | None, cold: bool) -> dict:
    """Sequential read throughput of the first ``limit`` bytes (all when None)."""
    if cold:
        _evict(path)
    buffer = bytearray(64 << 20)
    total = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while limit is None or total < limit:
            got = handle.readinto(buffer)
            if not got:
                break
            total += got
    seconds = time.perf_counter() - start
    return {"bytes": total, "seconds": seconds, "gb_per_s": total / seconds / 1e9}


def child(args: argparse.Namespace) -> None:
    """One solve (in its own process); prints a JSON line with timings and peak RSS."""
    import equipart

    import_rss = _peak_rss_bytes()  # the interpreter and libraries, before any solve
    path = Path(args.path)
    if args.mode == "cold":
        _evict(path)
    stamps: list[float] = []

    def callback(iteration: int, error: float) -> None:
        stamps.append(time.perf_counter())
        if args.mode == "cold":
            _evict(path)

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", equipart.ConvergenceWarning)
        result = equipart.assign_labels(
            path,
            args.lam,
            tol=0.0,
            max_iter=args.sweeps,
            backend=args.backend,
            callback=callback,
        )
    total = time.perf_counter() - start
    sweeps = np.diff(stamps)  # callback to callback: exactly one sweep (+ an eviction)
    print(
        json.dumps(
            {
                "mode": args.mode,
                "seconds_total": total,
                "seconds_to_first_check": stamps[0] - start,
                "seconds_per_sweep": sweeps.tolist(),
                "peak_rss_bytes": _peak_rss_bytes(),
                "import_rss_bytes": import_rss,
                "n_iter": result.n_iter,
                "labels_min_count": int(np.bincount(result.labels).min()),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--lam", type=float, default=10.0)
    parser.add_argument("--sweeps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--budget-gib", type=float, default=0.5)
    parser.add_argument("--path", default="/tmp/equipart_ooc_scores.npy")
    parser.add_argument("--keep", action="store_true", help="keep the score file")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="cold", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    path = Path(args.path)
    file_bytes = args.rows * args.labels * np.dtype(args.dtype).itemsize
    budget = int(args.budget_gib * (1 << 30))
    write_s = write_scores(path, args.rows, args.labels, args.dtype, seed=0)
    runs: dict[str, list[dict]] = {"cold": [], "cached": []}
    for _ in range(args.rounds):
        for mode in ("cold", "cached"):
            if mode == "cached":
                read_speed(path, None, cold=False)  # the file into the page cache
            read = read_speed(path, None, cold=mode == "cold")
            command = [sys.executable, __file__, "--child", "--mode", mode, "--path", str(path)]
            command += ["--lam", str(args.lam), "--sweeps", str(args.sweeps)]
            command += ["--backend", args.backend]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            run = json.loads(done.stdout.strip().splitlines()[-1])
            per_sweep = float(np.median(run["seconds_per_sweep"]))
            run["load_average"] = os.getloadavg()
            run["plain_read"] = read
            run["median_seconds_per_sweep"] = per_sweep
            run["sweep_gb_per_s"] = file_bytes / per_sweep / 1e9
            run["sweep_over_read"] = run["sweep_gb_per_s"] / read["gb_per_s"]
            run["within_budget"] = run["peak_rss_bytes"] <= budget
            runs[mode].append(run)
            print(json.dumps(run), flush=True)
    if not args.keep:
        path.unlink()
    summary = {
        mode: {
            "median_sweep_gb_per_s": float(np.median([r["sweep_gb_per_s"] for r in rounds])),
            "median_plain_read_gb_per_s": float(
                np.median([r["plain_read"]["gb_per_s"] for r in rounds])
            ),
            "median_sweep_over_read": float(np.median([r["sweep_over_read"] for r in rounds])),
            "max_peak_rss_bytes": max(r["peak_rss_bytes"] for r in rounds),
            "within_budget": all(r["within_budget"] for r in rounds),
        }
        for mode, rounds in runs.items()
    }
    report = {
        "benchmark": "out_of_core",
        "machine": f"{cpu_model()}, {os.cpu_count()} logical CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
        "no GPU (shared by other jobs)",
        "commit": _commit(),
        "shape": [args.rows, args.labels],
        "dtype": args.dtype,
        "file_bytes": file_bytes,
        "budget_bytes": budget,
        "file_over_budget": file_bytes / budget,
        "backend": args.backend,
        "lam": args.lam,
        "sweeps_per_solve": args.sweeps,
        "write_seconds": write_s,
        "summary": summary,
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def _commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()  # fmt: skip
    except OSError:
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


if __name__ == "__main__":
    main()

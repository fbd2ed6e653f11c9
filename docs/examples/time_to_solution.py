"""Time to solution against problem size.

    python docs/examples/time_to_solution.py [--quick] [--out DIR]

Times ``equipart.assign_labels`` on Gaussian float32 logits of N points over K labels
(lam = 25, tol = 1e-3, argmax rounding) for growing N at two K (up to 64 million
scores), with the default
(``backend="auto"``: the Numba kernels where Numba is installed, ``acceleration="auto"``)
and with the pure NumPy backend, and draws the median of interleaved repeats against
N * K into ``time_to_solution.png``, each default point marked with its sweeps (at small
N / K a solve needs more of them: the sizes are harder to meet with few points per
label). The title names the CPU, the thread count and the load average, which on a shared
machine move every figure: compare the lines of one plot, not plots of two machines.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from _gallery import arguments, save

import equipart

MAX_ENTRIES = 64_000_000  # 256 MB of float32 scores


def contenders() -> dict[str, str]:
    """label -> backend name, for the backends installed here."""
    names = {"default (auto)": "auto", "numpy backend": "numpy"}
    installed = equipart.backends.available()
    return {label: b for label, b in names.items() if b == "auto" or b in installed}


def solve_seconds(scores: np.ndarray, backend: str) -> tuple[float, int]:
    """Wall time of one solve to tol 1e-3, labels included, and its sweeps."""
    start = time.perf_counter()
    result = equipart.assign_labels(
        scores, lam=25.0, tol=1e-3, backend=backend, rounding="argmax"
    )
    return time.perf_counter() - start, result.n_iter


def measure(sizes: list[int], ks: list[int], repeats: int) -> dict[tuple[str, int], list]:
    """(contender, K) -> [(N, median seconds, sweeps)], the contenders interleaved in each
    repeat."""
    rng = np.random.default_rng(0)
    out: dict[tuple[str, int], list] = {}
    for k in ks:
        for n in (n for n in sizes if n * k <= MAX_ENTRIES):
            scores = rng.standard_normal(size=(n, k), dtype=np.float32)
            for backend in contenders().values():
                solve_seconds(scores[: min(n, 1_000)], backend)  # compile and warm up
            times: dict[str, list[float]] = {label: [] for label in contenders()}
            sweeps: dict[str, int] = {}
            for _ in range(repeats):
                for label, backend in contenders().items():
                    seconds, sweeps[label] = solve_seconds(scores, backend)
                    times[label].append(seconds)
            for label, t in times.items():
                out.setdefault((label, k), []).append((n, float(np.median(t)), sweeps[label]))
                print(f"K {k:>5}  N {n:>9,}  {label:>15}: {np.median(t):.4f} s, "
                      f"{sweeps[label]} sweeps")
    return out


def machine() -> str:
    """CPU model, usable threads and the 1-minute load average."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{model}, {threads} threads, load average {load:.1f}"


def plot(results: dict[tuple[str, int], list], where: str, out: Path) -> None:
    """Median seconds against N * K, log-log, one line per contender and K; the default's
    points are marked with their sweeps (small N / K takes more)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for (label, k), points in results.items():
        n, seconds, sweeps = np.array(points).T
        default = "default" in label
        ax.loglog(n * k, seconds, "o-" if default else "s--", label=f"{label}, K = {k}")
        for x, y, count in zip(n * k, seconds, sweeps, strict=True) if default else ():
            ax.annotate(f"{count:.0f}", (x, y), textcoords="offset points", xytext=(0, -12),
                        ha="center", fontsize=7)
    ax.set_xlabel("N x K (score entries)")
    ax.set_ylabel("seconds to tol 1e-3 (median)")
    ax.set_title(f"Gaussian float32 logits, lam 25 (numbers: the default's sweeps)\n{where}",
                 fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    save(fig, out, "time_to_solution.png")


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__, argv)
    if args.quick:
        sizes, ks, repeats = [500, 2_000], [10], 1
    else:
        sizes, ks, repeats = [1_000, 4_000, 16_000, 64_000, 256_000], [100, 1_000], 3
    where = machine()
    results = measure(sizes, ks, repeats)
    plot(results, where, args.out)
    print(where)


if __name__ == "__main__":
    main()

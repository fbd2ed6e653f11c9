"""The CPU paths of issue 19, side by side in one process, as ratios.

Four measurements, each interleaving its contenders round by round (medians reported):

* ``float64``: time to tol (``assign_labels``, lam 25, tol 1e-3) of float32 logits and of
  the same values as float64, on the Numba and the NumPy backends (on Numba also with the
  coarse float32-arithmetic stage switched off: float64 sweeps only);
* ``small``: at small shapes, the ms per sweep of the backend's solve-time sweep
  (``NumbaBackend.for_solve().sweep``) and of a whole solve (``assign_labels`` with a
  fixed number of sweeps, driver included), against one plain single-threaded read of
  the same array; the fixed cost per sweep is the intercept 2 t(N) - t(2N) of the same
  shape with N and 2N rows;
* ``contention``: time to tol on one thread, on the default threads, and on the default
  threads while a busy-loop process pinned to one core holds it (and one thread beside
  it), on the same arrays;
* ``crossover``: a sweep on the calling thread alone against one with helper threads
  (``PARALLEL_MIN_ELEMENTS`` forced either way), by size: where helpers start to pay.

The machine is shared: load averages are recorded with every measurement, and every
figure is a ratio of contenders measured in the same rounds.

Run::

    python benchmarks/bench_cpu_paths.py            # writes benchmarks/results/cpu_paths.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
from bench_numba import cpu_model, git_commit, write_doc
from numba import njit

import equipart
from equipart import solver
from equipart.backends import numba as numba_backend

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "cpu_paths.json"
START, END = "<!-- bench_cpu_paths:start -->", "<!-- bench_cpu_paths:end -->"
LAM = 25.0
SMALL_SHAPES = ((200, 1000), (5000, 50), (256, 3000), (10_000, 100), (1000, 4096))
BUSY_LOOP = "import os\nos.sched_setaffinity(0, {%d})\nwhile True:\n    pass\n"


def make_logits(n_rows: int, n_labels: int, seed: int = 0) -> np.ndarray:
    """float32 logits 2 N(0, 1) (a spread that takes tens of sweeps at lam 25)."""
    rng = np.random.default_rng(seed)
    return (2 * rng.standard_normal((n_rows, n_labels), dtype=np.float32)).astype(np.float32)


@njit(cache=True)
def read_once(x: np.ndarray) -> float:
    """One plain read of every score, on one thread (a flat vectorised sum)."""
    flat = x.reshape(-1)
    total = np.float32(0.0)
    for i in range(flat.size):
        total += flat[i]
    return total


def median_ms(times: list[float]) -> float:
    return float(np.median(times) * 1e3)


def interleave(
    contenders: dict[str, Callable[[], object]], rounds: int, cpu: dict | None = None
) -> dict[str, list]:
    """Seconds of each contender, one call each per round, after one untimed call each;
    with ``cpu`` (a dict), also the process's CPU seconds of each call, by name, there."""
    for run in contenders.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - start)
            if cpu is not None:
                cpu.setdefault(name, []).append(time.process_time() - start_cpu)
    return times


def solve(x, **kwargs) -> equipart.Assignment:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", equipart.ConvergenceWarning)
        return equipart.assign_labels(x, LAM, **kwargs)


def bench_float64(shapes: list[tuple[int, int]], rounds: int) -> list[dict]:
    out = []
    for n_rows, n_labels in shapes:
        x32 = make_logits(n_rows, n_labels)
        x64 = x32.astype(np.float64)
        for backend in ("numba", "numpy"):
            sweeps: dict[str, int] = {}

            def run(name, x, backend=backend, sweeps=sweeps):
                sweeps[name] = solve(x, tol=1e-3, backend=backend).n_iter

            def full(x=x64, backend=backend, sweeps=sweeps):
                """float64 swept in float64 throughout (no coarse stage)."""
                floor, solver.COARSE_MIN_ELEMENTS = solver.COARSE_MIN_ELEMENTS, 1 << 62
                try:
                    run("float64 (float64 sweeps only)", x)
                finally:
                    solver.COARSE_MIN_ELEMENTS = floor

            contenders = {
                name: (lambda name=name, x=x: run(name, x))
                for name, x in (("float32", x32), ("float64", x64))
            }
            if backend == "numba":
                contenders["float64 (float64 sweeps only)"] = full
            cpu: dict[str, list[float]] = {}
            times = interleave(contenders, rounds, cpu)
            entry = {
                "shape": [n_rows, n_labels],
                "backend": backend,
                "load_average": os.getloadavg(),
                "ms": {name: median_ms(t) for name, t in times.items()},
                # CPU time of the process (all its threads): the work, whatever share of
                # the cores the other jobs on the machine left to the run
                "cpu_ms": {name: median_ms(t) for name, t in cpu.items()},
                "sweeps": sweeps,
            }
            entry["float64_over_float32"] = entry["ms"]["float64"] / entry["ms"]["float32"]
            if backend == "numba":
                entry["float64_sweeps_only_over_float32"] = (
                    entry["ms"]["float64 (float64 sweeps only)"] / entry["ms"]["float32"]
                )
            entry["float64_over_float32_cpu"] = (
                entry["cpu_ms"]["float64"] / entry["cpu_ms"]["float32"]
            )
            out.append(entry)
            print(json.dumps(entry), flush=True)
    return out


def counting_pauses(run: Callable[[], object], counts: dict, name: str) -> Callable[[], None]:
    """``run``, counting in ``counts[name]`` the calls during which the kernels' helpers
    were paused (``numba_backend._HelperPause``: a caller waited too long for a helper, and
    the next 0.25 s of kernel calls run on the calling thread alone)."""

    def counted() -> None:
        before = numba_backend._HelperPause.until
        run()
        counts[name] = counts.get(name, 0) + int(numba_backend._HelperPause.until != before)

    return counted


def bench_small(rounds: int, sweeps_per_solve: int) -> list[dict]:
    """Per sweep at small shapes: a plain read, the backend's warm sweep, and a solve's
    sweep with the driver's work (the difference of solves of 1 and 1 + sweeps_per_solve
    sweeps, per sweep); the solve's own work outside its sweeps (validation, rounding,
    objective: a one-sweep solve less one solve sweep); each at N and 2N rows, whose
    intercept 2 t(N) - t(2N) is the fixed cost."""
    out = []
    for n_rows, n_labels in SMALL_SHAPES:
        entry: dict = {"shape": [n_rows, n_labels], "load_average": os.getloadavg()}
        per_rows, pauses = {}, {}
        for rows in (n_rows, 2 * n_rows):
            x = make_logits(rows, n_labels)
            g = np.zeros(n_labels)
            backend = numba_backend.NumbaBackend().for_solve()
            counts: dict[str, int] = {}
            contenders = {
                "read": lambda x=x: read_once(x),
                "sweep": lambda x=x, b=backend, g=g: b.sweep(x, "logits", LAM, g),
                "one-sweep solve": lambda x=x: solve(x, tol=0.0, max_iter=1),
                "solve": lambda x=x: solve(x, tol=0.0, max_iter=1 + sweeps_per_solve),
            }
            times = interleave(
                {name: counting_pauses(run, counts, name) for name, run in contenders.items()},
                rounds,
            )
            ms = {name: median_ms(t) for name, t in times.items()}
            one_sweep = ms.pop("one-sweep solve")
            ms["solve"] = (ms["solve"] - one_sweep) / sweeps_per_solve  # per sweep
            ms["setup"] = one_sweep - ms["solve"]
            per_rows[rows] = ms
            pauses[rows] = {name: counts.get(name, 0) for name in ("sweep", "solve")}
        one, two = per_rows[n_rows], per_rows[2 * n_rows]
        entry["ms"] = one
        entry["ms_twice_the_rows"] = two
        # calls (of rounds + 1) that paused the helpers, at N and at 2N rows
        entry["helper_pauses"] = [pauses[n_rows], pauses[2 * n_rows]]
        entry["fixed_ms"] = {name: 2 * one[name] - two[name] for name in ("sweep", "solve")}
        entry["fixed_setup_ms"] = 2 * one["setup"] - two["setup"]
        entry["sweep_over_read"] = one["sweep"] / one["read"]
        entry["solve_sweep_over_read"] = one["solve"] / one["read"]
        out.append(entry)
        print(json.dumps(entry), flush=True)
    return out


def bench_contention(shapes: list[tuple[int, int]], rounds: int, busy_cpu: int) -> list[dict]:
    out = []
    threads = numba.get_num_threads()
    for n_rows, n_labels in shapes:
        x = make_logits(n_rows, n_labels)
        solve(x, tol=1e-3)
        times: dict[str, list[float]] = {}
        sweeps = set()
        configs = ("one thread", "default", "one thread + busy core", "default + busy core")
        for _ in range(rounds):
            for config in configs:
                busy = None
                if "busy" in config:
                    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP % busy_cpu])
                    time.sleep(0.3)  # the loop is running
                numba.set_num_threads(1 if config.startswith("one") else threads)
                try:
                    start = time.perf_counter()
                    sweeps.add(solve(x, tol=1e-3).n_iter)
                    times.setdefault(config, []).append(time.perf_counter() - start)
                finally:
                    numba.set_num_threads(threads)
                    if busy is not None:
                        busy.kill()
                        busy.wait()
        ms = {name: median_ms(t) for name, t in times.items()}
        entry = {
            "shape": [n_rows, n_labels],
            "load_average": os.getloadavg(),
            "sweeps": sorted(sweeps),
            "ms": ms,
            "busy_over_one_thread": ms["default + busy core"] / ms["one thread"],
            "default_over_one_thread": ms["default"] / ms["one thread"],
        }
        out.append(entry)
        print(json.dumps(entry), flush=True)
    return out


def bench_crossover(rounds: int) -> list[dict]:
    out = []
    saved = (numba_backend.PARALLEL_MIN_ELEMENTS, numba_backend.HELPER_WAIT_SHARE)
    numba_backend.HELPER_WAIT_SHARE = np.inf  # measure the helpers themselves: no pause
    try:
        for n_labels, row_counts in ((100, (1250, 2500, 5000, 10_000, 20_000, 40_000)),
                                     (1000, (125, 250, 500, 1000, 2000, 4000))):  # fmt: skip
            for n_rows in row_counts:
                x = make_logits(n_rows, n_labels)
                g = np.zeros(n_labels)
                backend = numba_backend.NumbaBackend().for_solve()

                def sweep(threshold, x=x, g=g, backend=backend):
                    numba_backend.PARALLEL_MIN_ELEMENTS = threshold
                    numba_backend._HelperPause.until = 0.0
                    backend.sweep(x, "logits", LAM, g)

                serial = x.size + 1
                times = interleave(
                    {"one thread": lambda s=sweep, n=serial: s(n), "helpers": lambda s=sweep: s(0)},
                    rounds,
                )
                ms = {name: median_ms(t) for name, t in times.items()}
                entry = {
                    "shape": [n_rows, n_labels],
                    "elements": n_rows * n_labels,
                    "load_average": os.getloadavg(),
                    "ms": ms,
                    "helpers_over_one_thread": ms["helpers"] / ms["one thread"],
                }
                out.append(entry)
                print(json.dumps(entry), flush=True)
    finally:
        numba_backend.PARALLEL_MIN_ELEMENTS, numba_backend.HELPER_WAIT_SHARE = saved
    return out


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "equipart_commit": git_commit(),
        "parallel_min_elements": numba_backend.PARALLEL_MIN_ELEMENTS,
        # the process's niceness (the busy loop inherits it): a negative one lets a run on
        # a shared machine take the cores from other users' jobs, as on a quiet machine
        "niceness": os.nice(0),
        "load_average_at_start": os.getloadavg(),
    }


def render(results: dict) -> str:
    """The markdown tables of a result file."""
    info = results["machine"]
    loads = [
        entry["load_average"][0]
        for part in ("float64", "small", "contention", "crossover")
        for entry in results.get(part, [])
    ]
    lines = [
        f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, Numba {info['numba']} "
        f"({info['numba_threads']} threads), NumPy {info['numpy']}; commit "
        f"{info['equipart_commit'][:10]}; lam {results['lam']}, float32 logits 2 N(0, 1); "
        f"medians of interleaved rounds. The machine was shared: 1-minute load averages "
        f"from {min(loads):.1f} to {max(loads):.1f} during the run, which ran at niceness "
        f"{info['niceness']} (the busy loop too).",
        "",
        "Time to tol 1e-3, float64 against float32 (same values):",
        "",
        "| N x K | backend | float32 ms | float64 ms | float64 / float32 | CPU time: "
        "float64 / float32 | float64 sweeps only / float32 | sweeps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in results["float64"]:
        shape = f"{e['shape'][0]:,} x {e['shape'][1]:,}"
        only = e.get("float64_sweeps_only_over_float32")
        lines.append(
            f"| {shape} | {e['backend']} | {e['ms']['float32']:,.1f} | {e['ms']['float64']:,.1f}"
            f" | {e['float64_over_float32']:.2f} | {e['float64_over_float32_cpu']:.2f} | "
            f"{'-' if only is None else f'{only:.2f}'} | "
            f"{e['sweeps']['float32']} / {e['sweeps']['float64']} |"
        )
    lines += [
        "",
        "Small shapes, ms per sweep (the backend's warm sweep; a solve's sweep with the "
        "driver's work: solves of 21 and 1 sweeps, their difference over 20), one plain read "
        "of the scores on one thread, the fixed cost per sweep (2 t(N) - t(2N)), the "
        "solve's work outside its sweeps (validation, rounding, objective; ms per solve) "
        "and its fixed part, and how many of the rounds' calls paused the helper threads "
        "(each pause runs the next 0.25 s of kernel calls on one thread):",
        "",
        "| N x K | read | sweep | solve / sweep | sweep / read | fixed: sweep | fixed: solve "
        "sweep | solve setup | fixed: setup | helper pauses: sweep, solve (N; 2N) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in results["small"]:
        shape = f"{e['shape'][0]:,} x {e['shape'][1]:,}"
        ms, fixed = e["ms"], e["fixed_ms"]
        pauses = "; ".join(f"{p['sweep']}, {p['solve']}" for p in e.get("helper_pauses", []))
        lines.append(
            f"| {shape} | {ms['read']:.3f} | {ms['sweep']:.3f} | {ms['solve']:.3f} | "
            f"{e['sweep_over_read']:.2f} | {fixed['sweep']:.3f} | {fixed['solve']:.3f} | "
            f"{ms['setup']:.3f} | {e['fixed_setup_ms']:.3f} | {pauses} |"
        )
    lines += [
        "",
        "Time to tol 1e-3 (ms) with a busy-loop process pinned to one core, against one "
        "thread:",
        "",
        "| N x K | sweeps | one thread | default | one thread + busy core | "
        "default + busy core | busy / one thread | busy: default / one thread |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in results["contention"]:
        shape = f"{e['shape'][0]:,} x {e['shape'][1]:,}"
        ms = e["ms"]
        lines.append(
            f"| {shape} | {', '.join(map(str, e['sweeps']))} | {ms['one thread']:,.1f} | "
            f"{ms['default']:,.1f} | {ms['one thread + busy core']:,.1f} | "
            f"{ms['default + busy core']:,.1f} | {e['busy_over_one_thread']:.2f} | "
            f"{ms['default + busy core'] / ms['one thread + busy core']:.2f} |"
        )
    lines += [
        "",
        "One sweep on the calling thread alone against one with helper threads (ms):",
        "",
        "| N x K | scores | one thread | helpers | helpers / one thread |",
        "|---|---|---|---|---|",
    ]
    for e in results["crossover"]:
        shape = f"{e['shape'][0]:,} x {e['shape'][1]:,}"
        lines.append(
            f"| {shape} | {e['elements']:,} | {e['ms']['one thread']:.3f} | "
            f"{e['ms']['helpers']:.3f} | {e['helpers_over_one_thread']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--busy-cpu", type=int, default=1, help="the core the busy loop holds")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/numba.md")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite docs/numba.md's tables from --out"
    )
    args = parser.parse_args(argv)
    if args.render:
        write_doc(render(json.loads(args.out.read_text())), START, END)
        return
    results = {"benchmark": "cpu_paths", "machine": machine(), "lam": LAM}
    results["float64"] = bench_float64([(50_000, 1000), (10_000, 100)], max(3, args.rounds // 2))
    results["small"] = bench_small(args.rounds * 20, sweeps_per_solve=20)
    contention_shapes = [*SMALL_SHAPES, (50_000, 1000)]
    results["contention"] = bench_contention(contention_shapes, args.rounds, args.busy_cpu)
    results["crossover"] = bench_crossover(args.rounds * 10)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    if not args.no_doc:
        write_doc(render(results), START, END)
    print(render(results))


if __name__ == "__main__":
    main()

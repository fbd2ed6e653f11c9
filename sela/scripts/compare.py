"""SeLa against its k-means ablation and the untrained network: every run of a preset, then
the comparison table and curves.

For each seed, runs ``--method sinkhorn``, ``kmeans`` and ``untrained`` with the preset's
settings (everything else equal), each in its own process (``--jobs`` at a time, each
with ``--threads`` torch threads on a CPU; one at a time on a GPU), and writes

    RESULTS/<method>-s<seed>/summary.json, metrics.jsonl, curves.png   each run
    RESULTS/comparison.png            kNN, linear probe and AMI against epoch
    RESULTS/comparison.md             the table: mean and spread over seeds, baselines
    RESULTS/comparison.json           the same numbers, the command, the wall time

where RESULTS is ``sela/results/<dataset>-<preset>-<device>`` (``--results`` to change it).
Training runs (checkpoints included) go to ``--runs``. A run whose summary is already in
RESULTS is not run again unless ``--force``.

    python sela/scripts/compare.py --preset cpu --seeds 0 1 --jobs 2 --threads 1
    python sela/scripts/compare.py --preset gpu --seeds 0 1           # one H100/H200

From the repository root, with the trainer installed (sela/README.md) or with
``PYTHONPATH=.:sela``. The GPU machine has no Debian package of Fashion-MNIST:
``python sela/scripts/prepare_data.py`` copies it to sela/.data/ beforehand and this
script reads it from there when /usr/share/datasets/fashion-mnist is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "sela")]

from selflabel.config import PRESETS  # noqa: E402
from selflabel.data import FASHION_DIR  # noqa: E402
from selflabel.plots import plot_comparison  # noqa: E402

METHODS = ("sinkhorn", "kmeans", "untrained")
COLUMNS = ("knn", "linear", "ami", "ari", "nmi")
COPIED = ("summary.json", "metrics.jsonl", "curves.png")


def device_tag(device: str) -> str:
    """'cpu', or the CUDA device's name with every non-alphanumeric run turned into '-'."""
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    name = torch.cuda.get_device_name(0)
    return "-".join("".join(c if c.isalnum() else " " for c in name).split())


def run_one(method: str, seed: int, args: argparse.Namespace, results: Path) -> dict:
    """Train (or evaluate) one run in a subprocess and copy its files into ``results``."""
    name = f"{method}-s{seed}"
    dest = results / name
    if (dest / "summary.json").is_file() and not args.force:
        return json.loads((dest / "summary.json").read_text())
    flags = ["--preset", args.preset, "--method", method, "--seed", str(seed), "--no-progress",
             "--out", str(args.runs / name)]  # fmt: skip
    if args.data_dir:
        flags += ["--data-dir", args.data_dir]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "sela")]))  # fmt: skip
    log = args.runs / f"{name}.log"
    args.runs.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, "-m", "selflabel", "train", *flags], stdout=f,
                               stderr=subprocess.STDOUT, env=env)  # fmt: skip
    if code:
        raise RuntimeError(f"{name}: sela-train exited with {code}; see {log}")
    dest.mkdir(parents=True, exist_ok=True)
    for file in COPIED:
        shutil.copy2(args.runs / name / file, dest / file)
    summary = json.loads((dest / "summary.json").read_text())
    print(f"{name}: " + ", ".join(f"{k} {summary[k]:.4f}" for k in COLUMNS)
          + f", {summary['wall_s']:.0f} s", flush=True)  # fmt: skip
    return summary


def aggregate(summaries: list[dict]) -> dict:
    """Per method: mean, standard deviation and the values over seeds of each column."""
    out: dict[str, dict] = {}
    for method in METHODS:
        runs = sorted((s for s in summaries if s["method"] == method), key=lambda s: s["seed"])
        if runs:
            out[method] = {
                key: {"mean": float(np.mean(v := [s[key] for s in runs])),
                      "std": float(np.std(v)), "values": v}
                for key in (*COLUMNS, "wall_s")
            } | {"seeds": [s["seed"] for s in runs]}  # fmt: skip
    pixels = [s["baselines"]["pixels"] for s in summaries if s.get("baselines")]
    if pixels:
        out["pixels"] = {k: {"mean": float(np.mean([p[k] for p in pixels]))}
                         for k in ("knn", "linear")}  # fmt: skip
    return out


def table(stats: dict) -> str:
    """A markdown table: one row per method, mean +- std over seeds."""
    lines = ["| method | seeds | " + " | ".join(COLUMNS) + " | wall (s) |",
             "|---|---|" + "---|" * (len(COLUMNS) + 1)]  # fmt: skip
    for method in METHODS:
        if method in stats:
            s = stats[method]
            cells = [f"{s[k]['mean']:.4f} ± {s[k]['std']:.4f}" for k in COLUMNS]
            lines.append(f"| {method} | {len(s['seeds'])} | " + " | ".join(cells)
                         + f" | {s['wall_s']['mean']:.0f} |")  # fmt: skip
    if "pixels" in stats:
        p = stats["pixels"]
        lines.append(f"| raw pixels | - | {p['knn']['mean']:.4f} | {p['linear']['mean']:.4f} |"
                     + " - |" * (len(COLUMNS) - 1))  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (CPU)")
    p.add_argument("--threads", type=int, default=torch_threads(), help="torch threads a run")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "compare")
    p.add_argument("--results", type=Path, default=None)
    p.add_argument("--data-dir", default=None, help="the data set's folder, if not standard")
    p.add_argument("--force", action="store_true", help="rerun runs that have a summary")
    args = p.parse_args()
    preset = PRESETS[args.preset]
    dataset = preset.get("dataset", "fashion-mnist")
    if dataset == "fashion-mnist" and args.data_dir is None and not FASHION_DIR.is_dir():
        args.data_dir = str(ROOT / "sela" / ".data" / "fashion-mnist")
    tag = f"{dataset}-{args.preset}-{device_tag(preset.get('device', 'cpu'))}"
    results = args.results or ROOT / "sela" / "results" / tag
    results.mkdir(parents=True, exist_ok=True)
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    # the long runs first, so that the short untrained ones fill the gaps
    jobs.sort(key=lambda job: job[0] == "untrained")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        summaries = list(pool.map(lambda job: run_one(*job, args, results), jobs))
    stats = aggregate(summaries)
    runs = [results / f"{m}-s{s}" for m, s in jobs]
    plot_comparison(runs, results / "comparison.png",
                    title=f"{dataset}, preset {args.preset}: mean over seeds {args.seeds}")
    md = table(stats)
    (results / "comparison.md").write_text(md)
    (results / "comparison.json").write_text(json.dumps({
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "preset": args.preset, "seeds": args.seeds, "stats": stats,
        "device": summaries[0]["device"], "commit": summaries[0]["commit"],
        "wall_s": time.perf_counter() - t0,
    }, indent=2) + "\n")  # fmt: skip
    print(md)
    print(f"results in {results}")
    return 0


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    raise SystemExit(main())

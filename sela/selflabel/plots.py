"""PNG figures from runs' JSON-lines metrics logs.

* :func:`plot_curves`: one run: loss per epoch, pseudo-label NMI and fraction of labels
  changed per optimisation, and the held-out kNN, linear-probe and AMI scores of each
  evaluation.
* :func:`plot_comparison`: several runs: kNN, linear probe and AMI against epoch, one colour
  per method (a thin line per seed, a thick one for the mean over seeds), with the
  untrained network's level (mean over seeds) as a dashed line.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["COMPARED", "plot_comparison", "plot_curves", "read_log"]

# What plot_comparison draws: (key of an eval record, axis label).
COMPARED = (("knn", "kNN accuracy (FC, PCA 128)"), ("linear", "linear probe accuracy (conv)"),
            ("ami", "AMI of the heads (test)"))  # fmt: skip
_COLOURS = {"sinkhorn": "tab:blue", "kmeans": "tab:orange", "untrained": "tab:gray"}


def read_log(path: str | Path) -> list[dict]:
    """The records of a metrics log, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("plots: matplotlib is not installed; no PNG written", stacklevel=3)
        return None
    return plt


def plot_curves(log: str | Path, png: str | Path, title: str | None = None) -> bool:
    """The training curves of one run (see the module docstring); False (with a warning)
    when matplotlib is not installed."""
    plt = _pyplot()
    if plt is None:
        return False
    records = read_log(log)
    epochs = [r for r in records if r["event"] == "epoch"]
    opts = [r for r in records if r["event"] == "opt"]
    evals = [r for r in records if r["event"] == "eval"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    axes[0].plot([r["epoch"] for r in epochs], [r["loss"] for r in epochs], marker=".")
    axes[0].set(xlabel="epoch", ylabel="cross-entropy (mean over heads)", title="training loss")
    axes[1].plot([r["epoch"] for r in opts], [r["nmi"] for r in opts], marker=".")
    axes[1].set(xlabel="epoch", ylabel="NMI(pseudo-labels, classes)", title="pseudo-label NMI")
    axes[2].plot([r["epoch"] for r in opts[1:]], [r["changed"] for r in opts[1:]], marker=".")
    axes[2].set(xlabel="epoch", ylabel="fraction changed", title="labels changed per update")
    for key, label in COMPARED:
        axes[3].plot([r["epoch"] for r in evals], [r[key] for r in evals], marker="o", label=label)
    axes[3].set(xlabel="epoch", title="held-out evaluation")
    axes[3].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True


def _curve(run: Path) -> tuple[str, dict[str, Any], list[dict]]:
    summary = json.loads((run / "summary.json").read_text())
    evals = [r for r in read_log(run / "metrics.jsonl") if r["event"] == "eval"]
    return summary["method"], summary, evals


def plot_comparison(runs: list[Path], png: str | Path, title: str | None = None) -> bool:
    """kNN, linear probe and AMI against epoch for the run folders ``runs`` (each holding
    ``summary.json`` and ``metrics.jsonl``); False (with a warning) without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    by_method: dict[str, list[tuple[dict[str, Any], list[dict]]]] = defaultdict(list)
    for run in runs:
        method, summary, evals = _curve(Path(run))
        by_method[method].append((summary, evals))
    fig, axes = plt.subplots(1, len(COMPARED), figsize=(5 * len(COMPARED), 3.8))
    for ax, (key, label) in zip(axes, COMPARED, strict=True):
        for method, seeds in sorted(by_method.items()):
            colour = _COLOURS.get(method)
            if method == "untrained":
                level = float(np.mean([s[key] for s, _ in seeds]))
                ax.axhline(level, color=colour, ls="--", label=f"untrained ({level:.3f})")
                continue
            for _, evals in seeds:
                ax.plot([r["epoch"] for r in evals], [r[key] for r in evals], color=colour,
                        alpha=0.35, lw=1)  # fmt: skip
            epochs = [r["epoch"] for r in seeds[0][1]]
            mean = np.mean([[r[key] for r in evals] for _, evals in seeds], axis=0)
            ax.plot(epochs, mean, color=colour, lw=2.2, marker="o", ms=3,
                    label=f"{method} (mean of {len(seeds)})")  # fmt: skip
        ax.set(xlabel="epoch", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True

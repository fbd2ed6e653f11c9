"""PNG training curves from a run's JSON-lines metrics log."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

__all__ = ["plot_curves", "read_log"]


def read_log(path: str | Path) -> list[dict]:
    """The records of a metrics log, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(log: str | Path, png: str | Path, title: str | None = None) -> bool:
    """Loss per epoch, pseudo-label NMI and fraction of labels changed per optimisation.

    Returns False (with a warning) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("plots: matplotlib is not installed; no PNG written", stacklevel=2)
        return False
    records = read_log(log)
    epochs = [r for r in records if r["event"] == "epoch"]
    opts = [r for r in records if r["event"] == "opt"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([r["epoch"] for r in epochs], [r["loss"] for r in epochs], marker="o")
    axes[0].set(xlabel="epoch", ylabel="cross-entropy (mean over heads)", title="training loss")
    axes[1].plot([r["epoch"] for r in opts], [r["nmi"] for r in opts], marker="o")
    axes[1].set(xlabel="epoch", ylabel="NMI(pseudo-labels, classes)", title="pseudo-label NMI")
    axes[2].plot([r["epoch"] for r in opts[1:]], [r["changed"] for r in opts[1:]], marker="o")
    axes[2].set(xlabel="epoch", ylabel="fraction changed", title="labels changed per optimisation")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True

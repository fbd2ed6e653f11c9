"""Sweeps to a tolerance under each acceleration mode.

    python docs/examples/acceleration_sweeps.py [--quick] [--out DIR]

Solves the same problems with every ``acceleration=`` mode of ``equipart.assign_labels``
(``"none"``: plain Sinkhorn; ``"overrelax"``: adaptive over-relaxation; ``"anderson"``:
safeguarded Anderson acceleration; ``"auto"``, the default: quasi-Newton steps on the
dual for equality targets, Anderson for bands) to tol = 1e-6, and draws each solve's
column error ``max_j |m_j / b_j - 1|`` against the sweep (``Assignment.history`` holds
one entry per sweep) into ``acceleration_sweeps.png``. The problems: Gaussian logits at
lam = 25 (a soft problem) and lam = 400 (a sharp one, solved through the continuation
stages 32, 64, ..., 400), and a band (every label within 10% of N / K) on label-biased
logits at lam = 25, whose error is the relative size of the dual's last step (a band has
no single target to miss) and for which ``"auto"`` is Anderson.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from _gallery import arguments, save

import equipart

MODES = ("none", "overrelax", "anderson", "auto")
STYLES = {"none": ":", "overrelax": "-.", "anderson": "-", "auto": "--"}


def problems(n: int, k: int, seed: int = 0) -> dict[str, tuple[np.ndarray, float, object]]:
    """name -> (float32 logits, lam, marginals) for each panel."""
    rng = np.random.default_rng(seed)
    gaussian = rng.normal(size=(n, k)).astype(np.float32)
    biased = (rng.normal(size=(n, k)) + np.linspace(0.0, 2.0, k)).astype(np.float32)
    band = equipart.Bounds.relative(0.9, 1.1)
    return {
        "Gaussian logits, lam 25": (gaussian, 25.0, None),
        "Gaussian logits, lam 400": (gaussian, 400.0, None),
        "band 0.9-1.1 N/K, biased logits, lam 25": (biased, 25.0, band),
    }


def histories(scores, lam, marginals, max_iter: int) -> dict[str, tuple[float, ...]]:
    """The column error after every sweep, for each acceleration mode."""
    out = {}
    for mode in MODES:
        result = equipart.assign_labels(
            scores, lam=lam, marginals=marginals, tol=1e-6, max_iter=max_iter,
            acceleration=mode, rounding="argmax",
        )  # fmt: skip
        out[mode] = result.history
    return out


def plot(runs: dict[str, dict[str, tuple[float, ...]]], shape: tuple[int, int], out: Path) -> None:
    """One panel per problem: error against sweep, one line per mode, log scale."""
    fig, axes = plt.subplots(1, len(runs), figsize=(13, 3.8))
    for ax, (name, by_mode) in zip(axes, runs.items(), strict=True):
        for mode, history in by_mode.items():
            sweeps = np.arange(1, len(history) + 1)
            ax.semilogy(sweeps, history, STYLES[mode], label=f"{mode} ({len(history)})")
        ax.axhline(1e-6, color="k", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_title(f"{name}\n{shape[0]:,} x {shape[1]}", fontsize=10)
        ax.set_xlabel("sweep")
        ax.set_ylabel("column error")
        ax.legend(title="acceleration (sweeps)", frameon=False, fontsize=8, title_fontsize=8)
    save(fig, out, "acceleration_sweeps.png")


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__, argv)
    n, k = (1_000, 20) if args.quick else (20_000, 100)
    max_iter = 300 if args.quick else 10_000
    runs = {}
    for name, (scores, lam, marginals) in problems(n, k).items():
        runs[name] = histories(scores, lam, marginals, max_iter)
        print(name, {mode: len(h) for mode, h in runs[name].items()})
    plot(runs, (n, k), args.out)


if __name__ == "__main__":
    main()

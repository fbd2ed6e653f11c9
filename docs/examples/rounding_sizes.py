"""Label sizes under argmax and balanced rounding.

    python docs/examples/rounding_sizes.py [--quick] [--out DIR]

Three problems of N points over K labels, each solved with ``equipart.assign_labels`` at
lam = 25 with an equipartition target (N / K points per label):

* *trained*: Gaussian logits, as from a network that already separates the points;
* *near ties*: every row the same logits plus noise of 1e-6, as from a network early in
  training, whose rows differ in their last digits;
* *tied*: every row the same logits, as from a network at initialisation whose output
  does not depend on its input.

For each it rounds the same transport plan twice, with ``rounding="argmax"`` (SeLa's
rounding) and ``rounding="balanced"`` (exact counts), and draws every label's size, largest
first, into ``rounding_sizes.png``. On the trained problem both stay close to N / K; the
closer the rows are to ties, the further argmax strays (on exact ties every row takes the
same label), while balanced rounding gives every label exactly its share.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from _gallery import arguments, save

import equipart


def problems(n: int, k: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The three (n, k) float32 logit matrices: trained, near ties and tied."""
    rng = np.random.default_rng(seed)
    row = rng.normal(size=(1, k))
    logits = {
        "trained": rng.normal(size=(n, k)),
        "near ties": row + 1e-6 * rng.normal(size=(n, k)),
        "tied": np.repeat(row, n, axis=0),
    }
    return {name: x.astype(np.float32) for name, x in logits.items()}


def label_sizes(scores: np.ndarray, lam: float = 25.0) -> dict[str, np.ndarray]:
    """Every label's size, largest first, under argmax and balanced rounding."""
    sizes = {}
    for rounding in ("argmax", "balanced"):
        with warnings.catch_warnings():
            # argmax warns when its counts miss their sizes: that miss is what we draw
            warnings.simplefilter("ignore", equipart.RoundingWarning)
            result = equipart.assign_labels(scores, lam=lam, rounding=rounding)
        counts = np.bincount(result.labels, minlength=scores.shape[1])
        sizes[rounding] = np.sort(counts)[::-1]
    return sizes


def plot(all_sizes: dict[str, dict[str, np.ndarray]], n: int, k: int, out: Path) -> None:
    """One panel per problem: label sizes under both roundings against N / K."""
    fig, axes = plt.subplots(1, len(all_sizes), figsize=(13, 3.6))
    rank = np.arange(1, k + 1)
    for ax, (name, sizes) in zip(axes, all_sizes.items(), strict=True):
        ax.step(rank, sizes["argmax"], where="mid", label='rounding="argmax"')
        ax.step(rank, sizes["balanced"], where="mid", label='rounding="balanced"')
        ax.axhline(n / k, color="k", lw=0.8, ls="--", label=f"N / K = {n / k:g}")
        ax.set_title(f"{name}: {n:,} x {k} logits, lam 25")
        ax.set_xlabel("label, largest first")
        ax.set_ylabel("points")
        ax.legend(frameon=False, fontsize=8)
    save(fig, out, "rounding_sizes.png")


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__, argv)
    n, k = (2_000, 20) if args.quick else (20_000, 100)
    all_sizes = {name: label_sizes(s) for name, s in problems(n, k).items()}
    for name, sizes in all_sizes.items():
        for rounding, s in sizes.items():
            print(f"{name:>9} {rounding:>8}: largest {s[0]}, smallest {s[-1]} (N/K {n / k:g})")
    plot(all_sizes, n, k, args.out)


if __name__ == "__main__":
    main()

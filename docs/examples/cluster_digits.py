"""Balanced clustering of scikit-learn's digits: cluster sizes against KMeans.

    python docs/examples/cluster_digits.py [--quick] [--out DIR]

Embeds the 1,797 8 x 8 digit images with PCA (16 components), clusters them into 10
clusters with scikit-learn's ``KMeans`` and with ``equipart.cluster.BalancedKMeans``
(sizes 179 or 180), prints each one's inertia, cluster sizes and adjusted Rand index
against the true digits, writes them to docs/examples/cluster_digits.json and draws the
sorted cluster sizes side by side from that file into docs/images/cluster_digits_sizes.png
(``--out DIR`` writes both into DIR instead; ``--quick`` fits each model once, for tests).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from equipart.cluster import BalancedKMeans

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "cluster_digits.json"
OUT = HERE.parent / "images" / "cluster_digits_sizes.png"


def run(n_init: int = 10) -> dict:
    """Both clusterings of the digits: inertia, sorted sizes, adjusted Rand index."""
    digits = load_digits()
    embeddings = PCA(n_components=16, random_state=0).fit_transform(digits.data)
    models = {
        "KMeans": KMeans(n_clusters=10, n_init=n_init, random_state=0),
        "BalancedKMeans": BalancedKMeans(n_clusters=10, n_init=n_init, random_state=0),
    }
    out = {"n_samples": len(embeddings), "true_sizes": _sorted_sizes(digits.target)}
    for name, model in models.items():
        labels = model.fit_predict(embeddings)
        out[name] = {
            "inertia": float(model.inertia_),
            "sizes": _sorted_sizes(labels),
            "adjusted_rand_index": float(adjusted_rand_score(digits.target, labels)),
        }
    return out


def _sorted_sizes(labels: np.ndarray) -> list[int]:
    return np.sort(np.bincount(labels, minlength=10))[::-1].tolist()


def plot(results: dict, out: Path = OUT) -> None:
    """The sorted cluster sizes of both models, from the results file."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    rank = np.arange(10)
    ax.bar(rank - 0.2, results["KMeans"]["sizes"], width=0.4, label="scikit-learn KMeans")
    ax.bar(
        rank + 0.2,
        results["BalancedKMeans"]["sizes"],
        width=0.4,
        label="equipart BalancedKMeans",
    )
    share = results["n_samples"] / 10
    ax.axhline(share, color="k", lw=0.8, ls="--", label=f"N / K = {share:.1f}")
    ax.set_xticks(rank, [str(r + 1) for r in rank])
    ax.set_xlabel("cluster, largest first")
    ax.set_ylabel("points")
    ax.set_title("scikit-learn digits (PCA 16), 10 clusters: cluster sizes")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one fit per model, for tests")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON and PNG")
    args = parser.parse_args(argv)
    results_path = RESULTS if args.out is None else args.out / RESULTS.name
    image_path = OUT if args.out is None else args.out / OUT.name
    results = run(n_init=1 if args.quick else 10)
    for name in ("KMeans", "BalancedKMeans"):
        r = results[name]
        print(
            f"{name:>14}: inertia {r['inertia']:,.0f}, sizes {r['sizes']}, "
            f"adjusted Rand index {r['adjusted_rand_index']:.3f}"
        )
    print(f"{'true digits':>14}: sizes {results['true_sizes']}")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {results_path}")
    plot(json.loads(results_path.read_text()), image_path)


if __name__ == "__main__":
    main()

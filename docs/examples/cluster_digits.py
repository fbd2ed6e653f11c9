"""Balanced clustering of scikit-learn's digits: cluster sizes against KMeans.

    python docs/examples/cluster_digits.py

Embeds the 1,797 8 x 8 digit images with PCA (16 components), clusters them into 10
clusters with scikit-learn's ``KMeans`` and with ``equipart.cluster.BalancedKMeans``
(sizes 179 or 180), prints each one's inertia, cluster sizes and adjusted Rand index
against the true digits, writes them to docs/examples/cluster_digits.json and draws the
sorted cluster sizes side by side from that file into docs/images/cluster_digits_sizes.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from equipart.cluster import BalancedKMeans  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "cluster_digits.json"
OUT = HERE.parent / "images" / "cluster_digits_sizes.png"


def run() -> dict:
    """Both clusterings of the digits: inertia, sorted sizes, adjusted Rand index."""
    digits = load_digits()
    embeddings = PCA(n_components=16, random_state=0).fit_transform(digits.data)
    models = {
        "KMeans": KMeans(n_clusters=10, n_init=10, random_state=0),
        "BalancedKMeans": BalancedKMeans(n_clusters=10, n_init=10, random_state=0),
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


def plot(results: dict) -> None:
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
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=120)
    print(f"wrote {OUT}")


def main() -> None:
    results = run()
    for name in ("KMeans", "BalancedKMeans"):
        r = results[name]
        print(
            f"{name:>14}: inertia {r['inertia']:,.0f}, sizes {r['sizes']}, "
            f"adjusted Rand index {r['adjusted_rand_index']:.3f}"
        )
    print(f"{'true digits':>14}: sizes {results['true_sizes']}")
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    plot(json.loads(RESULTS.read_text()))


if __name__ == "__main__":
    main()

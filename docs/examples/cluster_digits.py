"""Balanced clustering of scikit-learn's digits: cluster sizes against KMeans.

    python docs/examples/cluster_digits.py

Embeds the 1,797 8 x 8 digit images with PCA (16 components), clusters them into 10
clusters with scikit-learn's ``KMeans`` and with ``equipart.cluster.BalancedKMeans``
(sizes 179 or 180), prints each one's inertia, cluster sizes and adjusted Rand index
against the true digits, and draws the sorted cluster sizes side by side into
docs/images/cluster_digits_sizes.png.
"""

from __future__ import annotations

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

OUT = Path(__file__).resolve().parent.parent / "images" / "cluster_digits_sizes.png"


def main() -> None:
    digits = load_digits()
    embeddings = PCA(n_components=16, random_state=0).fit_transform(digits.data)
    models = {
        "KMeans": KMeans(n_clusters=10, n_init=10, random_state=0),
        "BalancedKMeans": BalancedKMeans(n_clusters=10, n_init=10, random_state=0),
    }
    sizes = {}
    for name, model in models.items():
        labels = model.fit_predict(embeddings)
        sizes[name] = np.sort(np.bincount(labels, minlength=10))[::-1]
        ari = adjusted_rand_score(digits.target, labels)
        print(
            f"{name:>14}: inertia {model.inertia_:,.0f}, sizes {sizes[name].tolist()}, "
            f"adjusted Rand index {ari:.3f}"
        )
    truth = np.sort(np.bincount(digits.target))[::-1]
    print(f"{'true digits':>14}: sizes {truth.tolist()}")

    fig, ax = plt.subplots(figsize=(7, 3.6))
    rank = np.arange(10)
    ax.bar(rank - 0.2, sizes["KMeans"], width=0.4, label="scikit-learn KMeans")
    ax.bar(rank + 0.2, sizes["BalancedKMeans"], width=0.4, label="equipart BalancedKMeans")
    ax.axhline(len(embeddings) / 10, color="k", lw=0.8, ls="--", label="N / K = 179.7")
    ax.set_xticks(rank, [str(r + 1) for r in rank])
    ax.set_xlabel("cluster, largest first")
    ax.set_ylabel("points")
    ax.set_title("scikit-learn digits (PCA 16), 10 clusters: cluster sizes")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=120)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

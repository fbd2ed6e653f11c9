"""What the gallery scripts share: their command line and where their figures go.

Each script takes ``--quick`` (a small version that runs in seconds, for the tests) and
``--out DIR`` (default: docs/images, where the committed figures live).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

IMAGES = Path(__file__).resolve().parents[1] / "images"


def arguments(doc: str, argv: list[str] | None = None) -> argparse.Namespace:
    """``quick`` and ``out`` from the command line; ``doc``'s first line is the help."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small version, for tests")
    parser.add_argument("--out", type=Path, default=IMAGES, help="folder for the PNG")
    return parser.parse_args(argv)


def save(fig: plt.Figure, out: Path, name: str) -> Path:
    """Write ``fig`` to out/name (creating out) and close it; returns the path."""
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path

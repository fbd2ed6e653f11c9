"""The trainer's configuration: one dataclass, presets, and JSON round-trips."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PRESETS",
    "Config",
    "ConfigError",
    "check_config",
    "check_device",
    "choices",
    "solver_backends",
]

# Datasets that have no default location: their files must be in --data-dir.
NEEDS_DATA_DIR = {
    "cifar10": "the folder holding cifar-10-batches-py (https://www.cs.toronto.edu/~kriz/cifar.html)",
    "cifar100": "the folder holding cifar-100-python (https://www.cs.toronto.edu/~kriz/cifar.html)",
    "svhn": "the folder holding train_32x32.mat and test_32x32.mat "
    "(http://ufldl.stanford.edu/housenumbers/)",
}

# Settings that hold a tuple (JSON gives lists back).
TUPLES = ("crop_scale", "lr_drops")

# Why batches (and the training set) must hold two images or more.
BATCHNORM_NEEDS_TWO = "BatchNorm in training mode needs 2+ images per batch"


class ConfigError(ValueError):
    """A setting the user must change; the message starts with its flag (``--lam: ...``)."""


@dataclass
class Config:
    """Every setting of a SeLa run (CLI flags map one-to-one onto these fields).

    Units: ``epochs`` are passes over the (possibly imbalanced/subsampled) training set;
    ``lr_drops`` are fractions of all training steps at each of which the learning rate is
    multiplied by ``lr_gamma``; ``batch_size`` and ``eval_batch_size`` are at least 2
    (train-mode BatchNorm); ``n_opts`` is the number of label optimisations over the whole
    run (None: one per epoch), the first at step 0 (on the untrained network), then spaced
    linearly in time (t_k = T k / n_opts) or quadratically (T (k / n_opts)^2, denser early);
    ``head_update`` says whether each optimisation relabels every head or one head in turn
    (round-robin); ``curve_points`` evaluations are made at evenly spaced epochs for the
    learning curves (the last one at the end of training), besides the final one.
    ``method`` is ``sinkhorn`` (SeLa), ``kmeans`` (the paper's ablation) or ``untrained``
    (no training: the network at its initialisation, a baseline). ``holdout`` picks the
    split every metric is measured on: the data set's ``test`` split, or ``val``, images of
    the training split that the run does not train on (``test_size`` of them), for choosing
    settings without looking at the test split.
    """

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    holdout: str = "test"
    imbalance: str = "none"
    arch: str = "alexnet"
    width: float = 1.0
    fc: int = 4096
    heads: int = 10
    clusters: int = 128
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_drops: tuple[float, ...] = (0.7, 0.9)
    lr_gamma: float = 0.1
    method: str = "sinkhorn"
    lam: float = 25.0
    solver_tol: float = 1e-2
    solver_max_iter: int = 1000
    solver_backend: str = "auto"
    n_opts: int | None = None
    opt_schedule: str = "linear"
    head_update: str = "all"
    label_augment: bool = True
    label_bn_train: bool = True
    kmeans_pca: int = 256
    kmeans_iter: int = 20
    kmeans_init: int = 3
    augment: str = "auto"
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip: bool | None = None
    eval_batch_size: int = 1024
    knn_k: int = 50
    knn_sigma: float = 0.1
    knn_pca: int = 128
    probe_epochs: int = 30
    curve_points: int = 0
    evaluate: bool = True
    amp: bool = True
    device: str = "cpu"
    seed: int = 0
    ckpt_every_steps: int = 0
    progress: bool = True

    @property
    def label_updates(self) -> int:
        """Label optimisations over the run (0 for the untrained baseline)."""
        if self.method == "untrained":
            return 0
        return self.n_opts if self.n_opts is not None else self.epochs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"config: unknown settings {unknown}; known: {sorted(names)}")
        values = dict(data)
        for name in TUPLES:
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


def flag(name: str) -> str:
    """The command-line flag of the setting ``name``."""
    return "--" + name.replace("_", "-")


def solver_backends() -> list[str]:
    """``--solver-backend`` values that work here: ``auto`` and every equipart backend that
    runs in this process and reads what the trainer hands it (torch tensors or NumPy arrays;
    CuPy's backend reads only CuPy arrays)."""
    from equipart.backends import available

    return ["auto", *(name for name in available() if name != "cupy")]


def check_device(name: str) -> None:
    """Refuse a device torch cannot use here (:class:`ConfigError` naming ``--device``)."""
    import torch

    if not isinstance(name, str) or not (
        name in ("cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())
    ):
        raise ConfigError(f"--device: expected cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device: {name} was asked for but torch {torch.__version__} sees no CUDA "
                "device here (CPU-only build, no GPU, or no driver); use --device cpu"
            )
        index, count = int(name[5:] or 0), torch.cuda.device_count()
        if index >= count:
            raise ConfigError(
                f"--device: {name} was asked for but torch sees {count} CUDA device(s) "
                f"(cuda:0..cuda:{count - 1})"
            )


def choices() -> dict[str, tuple[str, ...]]:
    """The settings with a fixed set of values, and those values."""
    from .data import DATASETS
    from .models import ARCHS

    return {
        "dataset": DATASETS,
        "arch": ARCHS,
        "method": ("sinkhorn", "kmeans", "untrained"),
        "holdout": ("test", "val"),
        "imbalance": ("none", "light", "heavy"),
        "opt_schedule": ("linear", "quadratic"),
        "head_update": ("all", "round-robin"),
        "augment": ("auto", "colour", "gray", "none"),
    }


def check_config(cfg: Config) -> None:
    """Refuse every setting that cannot work, before any work is done.

    Raises :class:`ConfigError` whose message names the flag, what is valid and what was
    given. Checks what can be known without loading data: value ranges, choices, the
    solver backend (against ``equipart.backends.available()``), the device, and that
    ``--data-dir`` exists (and is given for the datasets that have no default place).
    """
    for name, valid in choices().items():
        if getattr(cfg, name) not in valid:
            raise _bad(cfg, name, "one of " + ", ".join(valid))
    _check_counts(cfg)
    _check_reals(cfg)
    _check_place(cfg)


def _bad(cfg: Config, name: str, expected: str) -> ConfigError:
    return ConfigError(f"{flag(name)}: expected {expected}, got {getattr(cfg, name)!r}")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_counts(cfg: Config) -> None:
    """Integer settings: each at least its lowest valid value."""
    at_least = {
        "heads": 1, "clusters": 2, "epochs": 1, "batch_size": 2, "fc": 1,
        "solver_max_iter": 1, "kmeans_pca": 1, "kmeans_iter": 1, "kmeans_init": 1,
        "eval_batch_size": 2, "knn_k": 1, "knn_pca": 1, "probe_epochs": 0, "curve_points": 0,
        "ckpt_every_steps": 0, "seed": 0,
    }  # fmt: skip
    for name, low in at_least.items():
        if not _integer(getattr(cfg, name)) or getattr(cfg, name) < low:
            why = f" ({BATCHNORM_NEEDS_TWO})" if name in ("batch_size", "eval_batch_size") else ""
            raise _bad(cfg, name, f"an integer >= {low}{why}")
    if cfg.seed >= 2**63:
        raise _bad(cfg, "seed", "an integer below 2**63")
    if cfg.n_opts is not None and (not _integer(cfg.n_opts) or cfg.n_opts < 1):
        raise _bad(cfg, "n_opts", "an integer >= 1, or no flag for one per epoch")
    if cfg.flip is not None and not isinstance(cfg.flip, bool):
        raise _bad(cfg, "flip", "a boolean, or no flag for the data set's default")
    for name, low in (("train_size", 2), ("test_size", 1)):
        value = getattr(cfg, name)
        if value is not None and (not _integer(value) or value < low):
            why = f" ({BATCHNORM_NEEDS_TWO})" if low == 2 else ""
            raise _bad(cfg, name, f"a number of images >= {low}{why}, or no flag for all of them")


def _number(cfg: Config, name: str) -> float:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(cfg, name, "a finite number")
    return float(value)


def _check_reals(cfg: Config) -> None:
    """Real-valued settings and the two fraction lists: finite and within range."""
    for name in ("width", "lr", "lr_gamma", "lam", "solver_tol", "knn_sigma"):
        if _number(cfg, name) <= 0:
            raise _bad(cfg, name, "a positive number")
    if _number(cfg, "weight_decay") < 0:
        raise _bad(cfg, "weight_decay", "a number >= 0")
    if not 0 <= _number(cfg, "momentum") < 1:
        raise _bad(cfg, "momentum", "a number in [0, 1)")
    drops = cfg.lr_drops
    fractions = all(isinstance(v, (int, float)) and 0 < v < 1 for v in drops)
    if not fractions or list(drops) != sorted(drops):
        raise _bad(cfg, "lr_drops", "increasing fractions of training in (0, 1), e.g. 0.7 0.9")
    scale = cfg.crop_scale
    if (
        len(scale) != 2
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in scale)
        or not 0 < scale[0] <= scale[1] <= 1
    ):
        raise _bad(cfg, "crop_scale", "MIN MAX with 0 < MIN <= MAX <= 1 (fractions of the area)")


def _check_place(cfg: Config) -> None:
    """Where it runs and reads: the solver backend, the device and the data folder."""
    backends = solver_backends()
    if cfg.solver_backend not in backends:
        raise _bad(
            cfg,
            "solver_backend",
            "one of " + ", ".join(backends) + " (auto and the equipart backends that run here)",
        )
    check_device(cfg.device)
    if cfg.data_dir is not None:
        if not Path(cfg.data_dir).is_dir():
            raise ConfigError(f"--data-dir: {cfg.data_dir} is not a folder")
    elif cfg.dataset in NEEDS_DATA_DIR:
        raise ConfigError(
            f"--data-dir: --dataset {cfg.dataset} has no default place; give "
            f"{NEEDS_DATA_DIR[cfg.dataset]}"
        )


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's protocol for 32 x 32 inputs (SeLa's CIFAR-10 setting) on one GPU: AlexNet-BN,
    # 10 heads x 128 clusters, lam 25, one label update per epoch spread linearly (the
    # authors' CIFAR code), SGD with momentum at lr 0.05 and two drops late in training.
    "paper": dict(
        arch="alexnet", width=1.0, fc=4096, heads=10, clusters=128, lam=25.0, epochs=400,
        batch_size=256, lr=0.05, momentum=0.9, lr_drops=(0.7, 0.9), opt_schedule="linear",
        head_update="all", eval_batch_size=2048, probe_epochs=50, curve_points=8,
        device="cuda", progress=False,
    ),
    # One H100/H200, both methods within minutes (scripts/compare.py): full Fashion-MNIST,
    # half-width AlexNet-BN, the paper's heads, 50 epochs and 50 label updates, batch 256.
    "gpu": dict(
        dataset="fashion-mnist", arch="alexnet", width=0.5, fc=2048, heads=10, clusters=128,
        epochs=50, batch_size=256, eval_batch_size=4096, probe_epochs=50, curve_points=5,
        device="cuda", progress=False,
    ),
    # The committed CPU comparison (scripts/compare.py on the 2-core machine): 5,000
    # Fashion-MNIST training images, the full test split, a quarter-width AlexNet-BN, the
    # paper's heads, 16 epochs and 32 label updates (two an epoch).
    "cpu": dict(
        dataset="fashion-mnist", train_size=5000, arch="alexnet", width=0.25, fc=128,
        heads=10, clusters=128, epochs=16, n_opts=32, batch_size=128, probe_epochs=50,
        curve_points=4, device="cpu",
    ),
    # CI's quick test: the same protocol on 1,000 images, in seconds.
    "quick": dict(
        dataset="fashion-mnist", train_size=1000, test_size=500, arch="alexnet", width=0.125,
        fc=64, heads=3, clusters=20, epochs=4, batch_size=100, probe_epochs=20,
        curve_points=2, device="cpu",
    ),
}  # fmt: skip

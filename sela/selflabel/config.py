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

# Why batches (and the training set) must hold two images or more.
BATCHNORM_NEEDS_TWO = "BatchNorm in training mode needs 2+ images per batch"


class ConfigError(ValueError):
    """A setting the user must change; the message starts with its flag (``--lam: ...``)."""


@dataclass
class Config:
    """Every setting of a SeLa run (CLI flags map one-to-one onto these fields).

    Units: ``epochs`` are passes over the (possibly imbalanced/subsampled) training set;
    ``lr_drop_every`` is in epochs (the learning rate is multiplied by ``lr_gamma`` every
    that many epochs, SeLa's step schedule; 0 means once, from the first step at or after
    3/4 of training, mid-epoch if need be); ``batch_size`` and ``eval_batch_size`` are at
    least 2 (train-mode BatchNorm); ``n_opts`` is the number of label optimisations over
    the whole run, the first at step 0 (on the untrained network), then spaced
    quadratically in time (t_k = T (k / n_opts)^2, denser early, as in SeLa's reference
    code) or linearly.
    """

    dataset: str = "mnist"
    data_dir: str | None = None
    train_size: int | None = None
    test_size: int | None = None
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
    lr_drop_every: int = 0
    lr_gamma: float = 0.1
    assign: str = "sinkhorn"
    lam: float = 25.0
    solver_tol: float = 1e-2
    solver_max_iter: int = 1000
    solver_backend: str = "auto"
    n_opts: int = 10
    opt_schedule: str = "quadratic"
    label_augment: bool = True
    label_bn_train: bool = True
    kmeans_pca: int = 256
    kmeans_iter: int = 20
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = False
    jitter: float = 0.4
    eval_batch_size: int = 1024
    knn_k: int = 50
    knn_sigma: float = 0.1
    probe_epochs: int = 30
    evaluate: bool = True
    amp: bool = True
    device: str = "cpu"
    seed: int = 0
    ckpt_every_steps: int = 0
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"config: unknown settings {unknown}; known: {sorted(names)}")
        values = dict(data)
        if "crop_scale" in values:
            values["crop_scale"] = tuple(values["crop_scale"])
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
        "assign": ("sinkhorn", "kmeans"),
        "imbalance": ("none", "light", "heavy"),
        "opt_schedule": ("quadratic", "linear"),
    }


def check_config(cfg: Config) -> None:
    """Refuse every setting that cannot work, before any work is done.

    Raises :class:`ConfigError` whose message names the flag, what is valid and what was
    given. Checks what can be known without loading data: value ranges, choices, the
    solver backend (against ``equipart.backends.available()``), the device, and that
    ``--data-dir`` exists (and is given for the datasets that have no default place).
    """

    def bad(name: str, expected: str) -> ConfigError:
        return ConfigError(f"{flag(name)}: expected {expected}, got {getattr(cfg, name)!r}")

    for name, valid in choices().items():
        if getattr(cfg, name) not in valid:
            raise bad(name, "one of " + ", ".join(valid))
    at_least = {
        "heads": 1, "clusters": 2, "epochs": 1, "batch_size": 2, "fc": 1, "n_opts": 1,
        "solver_max_iter": 1, "kmeans_pca": 1, "kmeans_iter": 1, "eval_batch_size": 2,
        "knn_k": 1, "probe_epochs": 0, "lr_drop_every": 0, "ckpt_every_steps": 0, "seed": 0,
    }  # fmt: skip

    def integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    for name, low in at_least.items():
        if not integer(getattr(cfg, name)) or getattr(cfg, name) < low:
            why = f" ({BATCHNORM_NEEDS_TWO})" if name in ("batch_size", "eval_batch_size") else ""
            raise bad(name, f"an integer >= {low}{why}")
    if cfg.seed >= 2**63:
        raise bad("seed", "an integer below 2**63")
    for name, low in (("train_size", 2), ("test_size", 1)):
        value = getattr(cfg, name)
        if value is not None and (not integer(value) or value < low):
            why = f" ({BATCHNORM_NEEDS_TWO})" if low == 2 else ""
            raise bad(name, f"a number of images >= {low}{why}, or no flag for all of them")

    def number(name: str) -> float:
        value = getattr(cfg, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise bad(name, "a finite number")
        return float(value)

    for name in ("width", "lr", "lr_gamma", "lam", "solver_tol", "knn_sigma"):
        if number(name) <= 0:
            raise bad(name, "a positive number")
    for name in ("weight_decay", "jitter"):
        if number(name) < 0:
            raise bad(name, "a number >= 0")
    if not 0 <= number("momentum") < 1:
        raise bad("momentum", "a number in [0, 1)")
    if number("jitter") > 1:
        raise bad("jitter", "a number in [0, 1] (brightness etc. scale by 1 +- jitter)")
    scale = cfg.crop_scale
    if (
        len(scale) != 2
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in scale)
        or not 0 < scale[0] <= scale[1] <= 1
    ):
        raise bad("crop_scale", "MIN MAX with 0 < MIN <= MAX <= 1 (fractions of the area)")
    backends = solver_backends()
    if cfg.solver_backend not in backends:
        raise bad(
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
    # The CPU test configuration: 2000 MNIST images, a quarter-width AlexNet-BN.
    "quick": dict(
        dataset="mnist", train_size=2000, test_size=500, arch="alexnet", width=0.25,
        fc=128, heads=2, clusters=20, epochs=5, batch_size=100, lr=0.05,
        n_opts=5, probe_epochs=100, device="cpu",
    ),
    # One GPU, full MNIST (60000 train / 10000 test), half-width AlexNet-BN: about a minute
    # per run on an H100 (scripts/gpu_run.py runs it with sinkhorn and with kmeans).
    "gpu-mnist": dict(
        dataset="mnist", arch="alexnet", width=0.5, fc=2048, heads=3, clusters=30,
        epochs=10, batch_size=256, lr=0.05, n_opts=8, solver_max_iter=100,
        eval_batch_size=2048, probe_epochs=20, device="cuda", progress=False,
    ),
}  # fmt: skip

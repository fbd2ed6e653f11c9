"""The trainer's configuration: one dataclass, presets, and JSON round-trips."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["PRESETS", "Config"]


@dataclass
class Config:
    """Every setting of a SeLa run (CLI flags map one-to-one onto these fields).

    Units: ``epochs`` are passes over the (possibly imbalanced/subsampled) training set;
    ``lr_drop_every`` is in epochs (the learning rate is multiplied by ``lr_gamma`` every
    that many epochs, SeLa's step schedule; 0 means once, at 3/4 of training);
    ``n_opts`` is the number of label optimisations over the whole run, the first at
    step 0 (on the untrained network), then spaced quadratically in time
    (t_k = T (k / n_opts)^2, denser early, as in SeLa's reference code) or linearly.
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

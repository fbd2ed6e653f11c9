"""SeLa's training loop: alternate label optimisation and cross-entropy training.

One run, on one device:

1. labels start balanced-random (every head a shuffled equipartition);
2. ``label_updates`` times over training, spread linearly by default (the first at step 0,
   at least one per epoch unless ``n_opts`` says otherwise), the heads' float32 scores
   over the whole training set are recomputed without autocast, with augmentation and
   train-mode BatchNorm by default (``label_augment``, ``label_bn_train``), and new labels
   are assigned to every head, or to one head in turn (``head_update="round-robin"``): by
   ``equipart.assign_labels`` warm-started from each head's previous dual
   (``method="sinkhorn"``), or by k-means on the features the heads read
   (``method="kmeans"``, the paper's ablation);
3. between optimisations, SGD with momentum minimises the cross-entropy of every head
   against its labels, averaged over heads, on augmented batches; the learning rate drops
   by ``lr_gamma`` at each fraction of training in ``lr_drops``;
4. the trained network is evaluated as the paper does (``selflabel.evaluate``), next to two
   baselines measured the same way: the untrained network (same architecture and seed)
   and raw pixels. ``curve_points`` evaluations during training give learning curves.
   ``method="untrained"`` skips training: the run is the untrained baseline itself.

A checkpoint (model, optimiser, labels, duals, RNG states, schedule position, the epoch's
batch order, and the metrics log's length) is written atomically (temporary file, fsync,
rename) at every epoch end and every ``ckpt_every_steps`` steps, so a run killed at any
moment resumes from the last checkpoint as if it had not stopped; the metrics log is cut
back to the checkpoint's length on resume so no record appears twice (a log that is
missing or shorter than that is refused: its records cannot be restored).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import normalized_mutual_info_score

from .config import BATCHNORM_NEEDS_TWO, Config, ConfigError, check_config, check_device
from .data import Dataset, imbalance, load_dataset, split_off
from .evaluate import evaluate_model, evaluate_pixels, label_scores
from .features import extract, make_augment
from .labels import balanced_random_labels, cluster_balance, kmeans_labels, sinkhorn_labels
from .models import build_model

__all__ = [
    "Trainer",
    "check_resume",
    "heads_at",
    "init_model",
    "machine_name",
    "opt_schedule",
    "prepare_data",
    "save_atomic",
]

CHECKPOINT = "checkpoint.pt"
METRICS_LOG = "metrics.jsonl"
SUMMARY = "summary.json"
# The keys every summary.json starts with, in this order.
SUMMARY_KEYS = (
    "dataset", "method", "seed", "epochs", "label_updates", "heads", "clusters", "lam",
    "knn", "linear", "ami", "ari", "nmi", "device", "wall_s", "commit",
)  # fmt: skip


def opt_schedule(total_steps: int, n_opts: int, kind: str = "linear") -> list[int]:
    """Steps at which labels are optimised: T k / n (linear) or T (k / n)^2 (quadratic),
    k = 0 .. n - 1, with T the number of training steps."""
    if n_opts < 1:
        raise ValueError(f"n_opts: expected at least 1 label optimisation, got {n_opts}")
    if kind == "linear":
        return [int(total_steps * k / n_opts) for k in range(n_opts)]
    if kind == "quadratic":
        return [int(total_steps * (k / n_opts) ** 2) for k in range(n_opts)]
    raise ValueError(f"opt_schedule: expected 'linear' or 'quadratic', got {kind!r}")


def heads_at(index: int, n_heads: int, mode: str) -> list[int]:
    """The heads relabelled by label optimisation ``index``: all of them, or head
    ``index mod H`` (round-robin)."""
    if mode == "all":
        return list(range(n_heads))
    if mode == "round-robin":
        return [index % n_heads]
    raise ValueError(f"head_update: expected 'all' or 'round-robin', got {mode!r}")


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``; :class:`ConfigError` naming ``--device`` if unusable here."""
    check_device(name)
    return torch.device(name)


def _resume_diff(saved: dict[str, Any], cfg: Config, out: Path) -> None:
    """Refuse to resume a checkpoint made with other settings (device and progress aside)."""
    try:
        old = Config.from_dict(saved)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--resume: the checkpoint in {out} cannot be resumed: {exc}") from exc
    old.device, old.progress = cfg.device, cfg.progress
    if old != cfg:
        diff = sorted(k for k, v in old.to_dict().items() if cfg.to_dict()[k] != v)
        raise ConfigError(
            f"--resume: the checkpoint in {out} was made with other settings ({diff}); "
            "use another --out or the same settings"
        )


def _check_log(out: Path, log_bytes: int) -> None:
    """Refuse to resume when ``out``'s metrics log is missing or shorter than the
    ``log_bytes`` it held at the checkpoint: its records cannot be restored."""
    log = out / METRICS_LOG
    size = log.stat().st_size if log.is_file() else None
    if size is None or size < log_bytes:
        found = "is missing" if size is None else f"holds {size} bytes"
        raise ConfigError(
            f"--resume: {log} {found}, but held {log_bytes} bytes at the checkpoint, so the "
            "run's records cannot be restored; put the log back or start afresh in another --out"
        )


def check_resume(cfg: Config, out: str | os.PathLike) -> bool:
    """Whether ``out`` holds a checkpoint to resume; :class:`ConfigError` if it was made
    with other settings or its metrics log is gone or cut short. Reads only the
    checkpoint's settings and log length (memory-mapped)."""
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        return False
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        settings = blob["config"]
    except Exception as exc:  # corrupt, truncated, or not a checkpoint of this trainer
        raise ConfigError(
            f"--resume: {path} is not a readable sela-train checkpoint "
            f"({type(exc).__name__}: {exc}); remove it or pick another --out"
        ) from exc
    _resume_diff(settings, cfg, Path(out))
    _check_log(Path(out), blob.get("log_bytes", 0))
    return True


def prepare_data(cfg: Config) -> Dataset:
    """The dataset of ``cfg`` with its subsets and training-set imbalance applied; with
    ``holdout="val"`` its ``test`` split is ``test_size`` training images (all the others
    when None) that the run does not train on."""
    data = load_dataset(cfg.dataset, cfg.data_dir)
    if cfg.holdout == "val":
        rest = len(data.train) if cfg.test_size is None else cfg.test_size
        train, test = split_off(data.train, cfg.train_size, rest, cfg.seed)
        if len(test) == 0:
            raise ConfigError(
                "--holdout: val holds out training images the run does not train on, but "
                "--train-size leaves none; lower --train-size or use --holdout test"
            )
    else:
        train = split_off(data.train, cfg.train_size, 0, cfg.seed)[0]
        test = split_off(data.test, cfg.test_size, 0, cfg.seed)[0]
    train = imbalance(train, cfg.imbalance, data.n_classes, cfg.seed)
    return Dataset(data.name, train, test, data.n_classes, data.mean, data.std)


def init_model(cfg: Config, data: Dataset) -> torch.nn.Module:
    """The network of ``cfg`` at its initialisation, a function of ``cfg.seed`` alone (the
    untrained baseline of a run is this network)."""
    torch.manual_seed(cfg.seed)
    return build_model(
        cfg.arch, data.channels, data.image_size, cfg.heads, cfg.clusters, cfg.width, cfg.fc
    )


def _autocast(cfg: Config, device: torch.device):
    """bfloat16 autocast for the training steps on CUDA (``amp``); nothing else uses it."""
    enabled = cfg.amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def source_commit() -> str | None:
    """The git commit of the trainer's source tree (``-dirty`` when it has uncommitted
    changes), or None outside a git checkout."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(here), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


class Trainer:
    """One SeLa run writing into ``out``; :meth:`run` trains (resuming if asked)."""

    def __init__(self, cfg: Config, out: str | os.PathLike) -> None:
        self.cfg, self.out = cfg, Path(out)
        check_config(cfg)  # ConfigError naming the flag; nothing is written before this
        self.device = resolve_device(cfg.device)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out: {self.out} exists and is not a folder")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        random.seed(cfg.seed)
        self.data = prepare_data(cfg)  # DataError if the files are missing or unreadable
        self.n = len(self.data.train)
        if self.n < 2:
            raise ConfigError(
                f"--train-size: the training set holds {self.n} image(s) after --train-size "
                f"and --imbalance; {BATCHNORM_NEEDS_TWO}"
            )
        if cfg.method == "kmeans" and self.n < cfg.clusters:
            raise ConfigError(
                f"--clusters: k-means needs at least K={cfg.clusters} training images, the "
                f"training set has {self.n}; lower --clusters or raise --train-size"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        self.images = self.data.train.images.to(self.device)
        self.augment = make_augment(cfg, self.data)
        self.model = init_model(cfg, self.data).to(self.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.batch = min(cfg.batch_size, self.n)
        self.steps_per_epoch = self.n // self.batch
        epochs = 0 if cfg.method == "untrained" else cfg.epochs
        self.total_steps = epochs * self.steps_per_epoch
        self.drop_steps = [math.ceil(f * self.total_steps) for f in cfg.lr_drops]
        self.opt_steps = (
            opt_schedule(self.total_steps, cfg.label_updates, cfg.opt_schedule) if epochs else []
        )
        self.curve_epochs = sorted(
            {round(epochs * k / cfg.curve_points) for k in range(1, cfg.curve_points)} - {0}
        ) if cfg.curve_points else []  # fmt: skip
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.labels = balanced_random_labels(cfg.heads, self.n, cfg.clusters, self.gen).to(
            self.device
        )
        self.g: np.ndarray | None = None  # (H, K) duals of the heads' last solves
        self.step = self.epoch = self.pos = self.next_opt = 0
        self.perm: torch.Tensor | None = None
        self.loss_sum = torch.zeros((), device=self.device)
        self.loss_count = 0
        self.elapsed = 0.0

    # ---------------------------------------------------------------- bookkeeping
    @property
    def log_path(self) -> Path:
        return self.out / METRICS_LOG

    def log(self, record: dict[str, Any]) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step``: ``lr`` times ``lr_gamma`` once for each
        drop step (the first step at or after each fraction of ``lr_drops``) passed."""
        drops = sum(step >= at for at in self.drop_steps)
        return self.cfg.lr * self.cfg.lr_gamma**drops

    def _seconds(self) -> float:
        return self.elapsed + time.perf_counter() - self._t0

    def checkpoint(self, done: bool = False) -> None:
        rng = {
            "torch": torch.get_rng_state(),
            "gen": self.gen.get_state(),
            "python": random.getstate(),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        blob = {
            "version": 2,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "labels": self.labels.cpu(),
            "g": None if self.g is None else self.g.tolist(),
            "rng": rng,
            "step": self.step,
            "epoch": self.epoch,
            "pos": self.pos,
            "next_opt": self.next_opt,
            "perm": None if self.perm is None else self.perm.cpu(),
            "loss_sum": float(self.loss_sum),
            "loss_count": self.loss_count,
            "elapsed": self._seconds(),
            "log_bytes": self.log_path.stat().st_size if self.log_path.exists() else 0,
            "done": done,
        }
        save_atomic(blob, self.out / CHECKPOINT)

    def resume(self) -> bool:
        """Load ``out/checkpoint.pt`` if present; True if the run continues from it."""
        path = self.out / CHECKPOINT
        if not path.exists():
            return False
        blob = torch.load(path, map_location="cpu", weights_only=False)
        _resume_diff(blob["config"], self.cfg, self.out)
        _check_log(self.out, blob["log_bytes"])
        self.model.load_state_dict(blob["model"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.labels = blob["labels"].to(self.device)
        self.g = None if blob["g"] is None else np.array(blob["g"], dtype=np.float64)
        rng = blob["rng"]
        torch.set_rng_state(rng["torch"])
        self.gen.set_state(rng["gen"])
        random.setstate(rng["python"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step, self.epoch, self.pos = blob["step"], blob["epoch"], blob["pos"]
        self.next_opt = blob["next_opt"]
        self.perm = None if blob["perm"] is None else blob["perm"].to(self.device)
        self.loss_sum = torch.tensor(blob["loss_sum"], device=self.device)
        self.loss_count, self.elapsed = blob["loss_count"], blob["elapsed"]
        with open(self.log_path, "r+b") as f:  # no longer than it is (_check_log)
            f.truncate(blob["log_bytes"])
        return True

    # ---------------------------------------------------------------- the algorithm
    def optimize_labels(self) -> None:
        """One label optimisation over the whole training set (logged as an 'opt' record),
        in float32 with autocast disabled, whatever the caller's context."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            self._optimize_labels()

    def _optimize_labels(self) -> None:
        cfg, t0 = self.cfg, time.perf_counter()
        heads = heads_at(self.next_opt, cfg.heads, cfg.head_update)
        out = extract(
            self.model,
            self.images,
            self.augment,
            cfg.eval_batch_size,
            train_mode=cfg.label_bn_train,
            augmented=cfg.label_augment,
        )
        previous = self.labels[heads]
        info: dict[str, float] = {}
        if cfg.method == "sinkhorn":
            g0 = None if self.g is None else self.g[heads]
            new, g, info = sinkhorn_labels(
                out.scores[heads], cfg.lam, g0, cfg.solver_tol, cfg.solver_max_iter,
                cfg.solver_backend,
            )  # fmt: skip
            if self.g is None:
                self.g = np.zeros((cfg.heads, cfg.clusters))
            self.g[heads] = g
        else:
            new = kmeans_labels(
                out.fc, previous, cfg.clusters, self.gen, cfg.kmeans_pca, cfg.kmeans_iter,
                cfg.kmeans_init,
            )  # fmt: skip
        self.labels[heads] = new
        truth = self.data.train.labels.numpy()
        nmi = [normalized_mutual_info_score(truth, row.cpu().numpy()) for row in self.labels]
        self.log(
            {
                "event": "opt",
                "index": self.next_opt,
                "step": self.step,
                "epoch": self.step / self.steps_per_epoch,
                "heads": heads,
                "scores_dtype": str(out.scores.dtype).removeprefix("torch."),
                "nmi": float(np.mean(nmi)),
                "nmi_heads": nmi,
                "changed": float((new != previous).float().mean()),
                "size_cv": cluster_balance(self.labels, cfg.clusters),
                "time_s": time.perf_counter() - t0,
                **info,
            }
        )

    def train_step(self, idx: torch.Tensor) -> None:
        self.model.train()
        x = self.augment(self.images[idx])
        with _autocast(self.cfg, self.device):
            logits = self.model(x)
        target = self.labels[:, idx]
        loss = F.cross_entropy(logits.float().permute(0, 2, 1), target.T)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach()
        self.loss_count += 1

    def evaluate(self, epoch: int) -> dict[str, Any]:
        """:func:`evaluate_model` of the current network, with the pseudo-labels' scores
        (``pseudo``) unless the run is the untrained baseline; logged as an 'eval' record."""
        t0 = time.perf_counter()
        result: dict[str, Any] = evaluate_model(self.model, self.data, self.cfg)
        if self.cfg.method != "untrained":
            result["pseudo"] = label_scores(self.labels, self.data.train.labels, self.cfg.clusters)
        result["eval_s"] = time.perf_counter() - t0
        self.log({"event": "eval", "epoch": epoch, **result})
        return result

    def _end_epoch(self) -> None:
        self.log(
            {
                "event": "epoch",
                "epoch": self.epoch + 1,
                "step": self.step,
                "loss": float(self.loss_sum) / max(1, self.loss_count),
                "lr": self.lr_at(self.step - 1),
                "time_s": self._seconds(),
            }
        )
        self.epoch, self.pos, self.perm = self.epoch + 1, 0, None
        self.loss_sum.zero_()
        self.loss_count = 0
        if self.epoch in self.curve_epochs:
            self.evaluate(self.epoch)
        self.checkpoint()

    def _train(self) -> None:
        bar = _progress(self.cfg.progress, self.total_steps, self.step)
        while self.step < self.total_steps:
            while (
                self.next_opt < len(self.opt_steps) and self.step >= self.opt_steps[self.next_opt]
            ):
                self.optimize_labels()
                self.next_opt += 1
            if self.perm is None:
                self.perm = torch.randperm(self.n, device=self.device)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(self.step)
            idx = self.perm[self.pos * self.batch : (self.pos + 1) * self.batch]
            self.train_step(idx)
            self.step, self.pos = self.step + 1, self.pos + 1
            if bar is not None:
                bar.update(1)
            if self.pos == self.steps_per_epoch:
                self._end_epoch()
            elif self.cfg.ckpt_every_steps and self.step % self.cfg.ckpt_every_steps == 0:
                self.checkpoint()
        if bar is not None:
            bar.close()

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train to the end (from the checkpoint if ``resume``), evaluate with the baselines,
        write ``summary.json`` and the curves; returns the summary."""
        self._t0 = time.perf_counter()
        if not (resume and self.resume()):
            if self.log_path.exists():
                self.log_path.unlink()
            self.log(
                {
                    "event": "start",
                    "config": self.cfg.to_dict(),
                    "n_train": self.n,
                    "n_test": len(self.data.test),
                    "opt_steps": self.opt_steps,
                    "steps_per_epoch": self.steps_per_epoch,
                }
            )
        self._train()
        train_s = self._seconds()
        self.checkpoint(done=True)
        summary = self._summary(train_s)
        (self.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        from .plots import plot_curves

        plot_curves(self.log_path, self.out / "curves.png")
        return summary

    def _summary(self, train_s: float) -> dict[str, Any]:
        cfg = self.cfg
        epochs = 0 if cfg.method == "untrained" else cfg.epochs
        head = dict(
            dataset=cfg.dataset, method=cfg.method, seed=cfg.seed, epochs=epochs,
            label_updates=len(self.opt_steps), heads=cfg.heads, clusters=cfg.clusters,
            lam=cfg.lam,
        )  # fmt: skip
        summary: dict[str, Any] = dict.fromkeys(SUMMARY_KEYS)
        summary.update(head)
        if cfg.evaluate:
            result = self.evaluate(epochs)
            summary.update({key: result[key] for key in ("knn", "linear", "ami", "ari", "nmi")})
            summary["eval"] = result
            summary["baselines"] = self._baselines(result)
        summary.update(
            device=machine_name(self.device),
            wall_s=self._seconds(),
            commit=source_commit(),
            train_s=train_s,
            holdout=cfg.holdout,
            n_train=self.n,
            n_test=len(self.data.test),
            config=cfg.to_dict(),
        )
        return summary

    def _baselines(self, result: dict[str, Any]) -> dict[str, Any]:
        """The untrained network's scores (this run's, if it is that baseline) and the raw
        pixels', measured on the same splits."""
        if self.cfg.method == "untrained":
            untrained = result
        else:
            untrained = evaluate_model(init_model(self.cfg, self.data).to(self.device),
                                       self.data, self.cfg)  # fmt: skip
        return {"untrained": untrained, "pixels": evaluate_pixels(self.data, self.cfg)}


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

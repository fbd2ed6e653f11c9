"""SeLa's training loop: alternate label optimisation and cross-entropy training.

One run, on one device:

1. labels start balanced-random (every head a shuffled equipartition);
2. ``n_opts`` times over training (SeLa's quadratic schedule by default, first at step 0)
   the H heads' scores over the whole training set are recomputed, with augmentation and
   train-mode BatchNorm by default (the reference code's choice; ``label_augment`` and
   ``label_bn_train`` turn them off), and new labels are assigned: by
   ``equipart.assign_labels`` warm-started from each head's previous dual
   (``assign="sinkhorn"``), or by k-means on the trunk features (``assign="kmeans"``);
3. between optimisations, SGD with momentum minimises the cross-entropy of every head
   against its labels, averaged over heads, on augmented batches; the learning rate
   follows SeLa's step schedule.

A checkpoint (model, optimiser, labels, solver state, RNG states, schedule position, the
epoch's batch order, and the metrics log's length) is written atomically (temporary file,
fsync, rename) at every epoch end and every ``ckpt_every_steps`` steps, so a run killed at
any moment resumes from the last checkpoint as if it had not stopped; the metrics log is
cut back to the checkpoint's length on resume so no record appears twice (a log that is
missing or shorter than that is refused: its records cannot be restored).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from equipart import SolverState
from sklearn.metrics import normalized_mutual_info_score

from .augment import Augment
from .config import BATCHNORM_NEEDS_TWO, Config, ConfigError, check_config, check_device
from .data import Dataset, imbalance, load_dataset, subsample
from .evaluate import cluster_scores, knn_accuracy, linear_probe
from .labels import balanced_random_labels, cluster_balance, kmeans_labels, sinkhorn_labels
from .models import build_model

__all__ = [
    "Trainer",
    "check_resume",
    "chunk_sizes",
    "evaluate_model",
    "extract",
    "opt_schedule",
    "prepare_data",
    "save_atomic",
]

CHECKPOINT = "checkpoint.pt"
METRICS_LOG = "metrics.jsonl"
SUMMARY = "metrics.json"


def opt_schedule(total_steps: int, n_opts: int, kind: str = "quadratic") -> list[int]:
    """Steps at which labels are optimised: T (k / n)^2 (quadratic) or T k / n, k < n."""
    if n_opts < 1:
        raise ValueError(f"n_opts: expected at least 1 label optimisation, got {n_opts}")
    if kind == "quadratic":
        return [int(total_steps * (k / n_opts) ** 2) for k in range(n_opts)]
    if kind == "linear":
        return [int(total_steps * k / n_opts) for k in range(n_opts)]
    raise ValueError(f"opt_schedule: expected 'quadratic' or 'linear', got {kind!r}")


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
    """The dataset of ``cfg`` with its subsets and training-set imbalance applied."""
    data = load_dataset(cfg.dataset, cfg.data_dir)
    train = imbalance(
        subsample(data.train, cfg.train_size, cfg.seed), cfg.imbalance, data.n_classes, cfg.seed
    )
    test = subsample(data.test, cfg.test_size, cfg.seed)
    return Dataset(data.name, train, test, data.n_classes, data.mean, data.std)


def make_augment(cfg: Config, data: Dataset) -> Augment:
    return Augment(
        mean=data.mean, std=data.std, scale=cfg.crop_scale, flip=cfg.flip, jitter=cfg.jitter
    )


def _autocast(cfg: Config, device: torch.device):
    enabled = cfg.amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def chunk_sizes(n: int, most: int) -> list[int]:
    """Sizes of the fewest near-equal chunks of ``n`` images with at most ``most`` each, but
    never fewer than 2 each when ``n >= 2`` (``most = 2`` and odd ``n`` give one chunk of 3):
    train-mode BatchNorm fails on one image and is noisy on a small tail."""
    count = max(1, min(math.ceil(n / most), n // 2))
    return [n // count + (i < n % count) for i in range(count)]


@torch.no_grad()
def extract(
    model: torch.nn.Module,
    images: torch.Tensor,
    augment: Augment,
    cfg: Config,
    train_mode: bool = False,
    augmented: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-softmax scores (H, N, K) float32, features (N, D) float32) for ``images``,
    computed in the near-equal chunks of :func:`chunk_sizes` (at most ``eval_batch_size``)."""
    device = next(model.parameters()).device
    model.train(train_mode)
    scores, feats = [], []
    for chunk in torch.split(images, chunk_sizes(images.shape[0], cfg.eval_batch_size)):
        x = augment(chunk.to(device), train=augmented)
        with _autocast(cfg, device):
            logits, f = model(x, with_features=True)
        scores.append(F.log_softmax(logits.float(), dim=-1).transpose(0, 1))
        feats.append(f.float())
    return torch.cat(scores, dim=1).contiguous(), torch.cat(feats)


def evaluate_model(
    model: torch.nn.Module, data: Dataset, cfg: Config, pseudo: torch.Tensor | None
) -> dict[str, Any]:
    """Every metric of the paper on the held-out split (and of the pseudo-labels)."""
    t0 = time.perf_counter()
    augment = make_augment(cfg, data)
    device = next(model.parameters()).device
    tr_scores, tr_feats = extract(model, data.train.images, augment, cfg)
    te_scores, te_feats = extract(model, data.test.images, augment, cfg)
    truth = data.test.labels.numpy()
    heads = [
        cluster_scores(te_scores[h].argmax(dim=1).cpu().numpy(), truth)
        for h in range(te_scores.shape[0])
    ]
    out: dict[str, Any] = {"test_heads": heads, "test": _mean_scores(heads)}
    if pseudo is not None:
        ptruth = data.train.labels.numpy()
        pheads = [cluster_scores(row.cpu().numpy(), ptruth) for row in pseudo]
        out["pseudo_heads"], out["pseudo"] = pheads, _mean_scores(pheads)
    out["knn_acc"] = knn_accuracy(
        tr_feats,
        data.train.labels.to(device),
        te_feats,
        data.test.labels,
        k=cfg.knn_k,
        sigma=cfg.knn_sigma,
    )
    out["linear_acc"] = linear_probe(
        tr_feats,
        data.train.labels,
        te_feats,
        data.test.labels,
        epochs=cfg.probe_epochs,
        seed=cfg.seed,
    )
    out["eval_time_s"] = time.perf_counter() - t0
    return out


def _mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


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
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.data = prepare_data(cfg)  # DataError if the files are missing or unreadable
        self.n = len(self.data.train)
        if self.n < 2:
            raise ConfigError(
                f"--train-size: the training set holds {self.n} image(s) after --train-size "
                f"and --imbalance; {BATCHNORM_NEEDS_TWO}"
            )
        if cfg.assign == "kmeans" and self.n < cfg.clusters:
            raise ConfigError(
                f"--clusters: k-means needs at least K={cfg.clusters} training images, the "
                f"training set has {self.n}; lower --clusters or raise --train-size"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        self.images = self.data.train.images.to(self.device)
        self.augment = make_augment(cfg, self.data)
        self.model = build_model(
            cfg.arch,
            self.data.channels,
            self.data.image_size,
            cfg.heads,
            cfg.clusters,
            cfg.width,
            cfg.fc,
        ).to(self.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.batch = min(cfg.batch_size, self.n)
        self.steps_per_epoch = self.n // self.batch
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.drop_step = math.ceil(0.75 * self.total_steps)
        self.opt_steps = opt_schedule(self.total_steps, cfg.n_opts, cfg.opt_schedule)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.labels = balanced_random_labels(cfg.heads, self.n, cfg.clusters, self.gen).to(
            self.device
        )
        self.state: SolverState | None = None
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
        """The learning rate of step ``step``: ``lr`` times ``lr_gamma`` once every
        ``lr_drop_every`` epochs or, if that is 0, once from :attr:`drop_step` (the first
        step at or after 3/4 of training, mid-epoch if need be) on."""
        cfg = self.cfg
        if cfg.lr_drop_every:
            drops = step // self.steps_per_epoch // cfg.lr_drop_every
        else:
            drops = int(step >= self.drop_step)
        return cfg.lr * cfg.lr_gamma**drops

    def checkpoint(self, done: bool = False) -> None:
        rng = {
            "torch": torch.get_rng_state(),
            "gen": self.gen.get_state(),
            "python": random.getstate(),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        blob = {
            "version": 1,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "labels": self.labels.cpu(),
            "solver_state": None if self.state is None else self.state.to_dict(),
            "rng": rng,
            "step": self.step,
            "epoch": self.epoch,
            "pos": self.pos,
            "next_opt": self.next_opt,
            "perm": None if self.perm is None else self.perm.cpu(),
            "loss_sum": float(self.loss_sum),
            "loss_count": self.loss_count,
            "elapsed": self.elapsed + time.perf_counter() - self._t0,
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
        state = blob["solver_state"]
        self.state = None if state is None else SolverState.from_dict(state)
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
        """One label optimisation over the whole training set (logged as an 'opt' record)."""
        cfg, t0 = self.cfg, time.perf_counter()
        scores, feats = extract(
            self.model,
            self.images,
            self.augment,
            cfg,
            train_mode=cfg.label_bn_train,
            augmented=cfg.label_augment,
        )
        previous = self.labels
        info: dict[str, float] = {}
        if cfg.assign == "sinkhorn":
            self.labels, self.state, info = sinkhorn_labels(
                scores,
                cfg.lam,
                self.state,
                cfg.solver_tol,
                cfg.solver_max_iter,
                cfg.solver_backend,
            )
        else:
            self.labels = kmeans_labels(
                feats, cfg.heads, cfg.clusters, previous, self.gen, cfg.kmeans_pca, cfg.kmeans_iter
            )
        truth = self.data.train.labels.numpy()
        nmi = [normalized_mutual_info_score(truth, row.cpu().numpy()) for row in self.labels]
        self.log(
            {
                "event": "opt",
                "index": self.next_opt,
                "step": self.step,
                "epoch": self.step / self.steps_per_epoch,
                "nmi": float(np.mean(nmi)),
                "nmi_heads": nmi,
                "changed": float((self.labels != previous).float().mean()),
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

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train to the end (from the checkpoint if ``resume``), evaluate, write the summary."""
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
                }
            )
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
                self.log(
                    {
                        "event": "epoch",
                        "epoch": self.epoch + 1,
                        "step": self.step,
                        "loss": float(self.loss_sum) / max(1, self.loss_count),
                        "lr": self.lr_at(self.step - 1),
                        "time_s": self.elapsed + time.perf_counter() - self._t0,
                    }
                )
                self.epoch, self.pos, self.perm = self.epoch + 1, 0, None
                self.loss_sum.zero_()
                self.loss_count = 0
                self.checkpoint()
            elif self.cfg.ckpt_every_steps and self.step % self.cfg.ckpt_every_steps == 0:
                self.checkpoint()
        if bar is not None:
            bar.close()
        train_time = self.elapsed + time.perf_counter() - self._t0
        self.checkpoint(done=True)
        summary: dict[str, Any] = {
            "config": self.cfg.to_dict(),
            "device": _device_name(self.device),
            "n_train": self.n,
            "n_test": len(self.data.test),
            "train_time_s": train_time,
        }
        if self.cfg.evaluate:
            summary["eval"] = evaluate_model(self.model, self.data, self.cfg, self.labels)
            self.log({"event": "eval", **summary["eval"]})
        (self.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        from .plots import plot_curves

        plot_curves(self.log_path, self.out / "curves.png")
        return summary


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

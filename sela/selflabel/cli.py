"""Command line: ``sela-train`` and ``sela-eval`` (also ``python -m selflabel train|eval``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import torch

from .config import PRESETS, TUPLES, Config, ConfigError, check_config, choices
from .data import DataError

__all__ = ["eval_main", "main", "train_main"]

_HELP = {
    "dataset": "training data (read offline from disk)",
    "data_dir": "folder holding the dataset's files (default: the dataset's standard place)",
    "train_size": "use a random subset of this many training images",
    "test_size": "use a random subset of this many held-out images",
    "imbalance": "SeLa Table A.1 training sets: light = half of the last class removed, "
    "heavy = class c keeps (c+1)/C of its images",
    "width": "channel multiplier of the network",
    "fc": "units of AlexNet's two fully connected layers",
    "heads": "number of clustering heads H",
    "clusters": "clusters per head K",
    "holdout": "split every metric is measured on: the test split, or val (training images "
    "the run does not train on; for choosing settings)",
    "lr_drops": "fractions of training at which the learning rate is multiplied by --lr-gamma",
    "method": "label step: sinkhorn (SeLa, equipart's optimal transport), kmeans (the paper's "
    "ablation) or untrained (no training: the baseline)",
    "lam": "inverse temperature of the transport problem (paper: 25)",
    "solver_backend": "equipart backend of the label step: auto (torch on the scores' device "
    "if available, else a host copy), torch, numpy or numba",
    "n_opts": "label optimisations over the run, the first at step 0 (default: one per epoch)",
    "opt_schedule": "spacing of the optimisations: linear (default) or quadratic (denser early)",
    "head_update": "relabel every head at each optimisation (all) or one head in turn "
    "(round-robin)",
    "kmeans_init": "k-means++ initialisations of the ablation, the best by inertia (paper: 3)",
    "augment": "training transform: colour (SeLa's), gray (its one-channel stand-in: crop, "
    "affine, erasing, noise), none, or auto (by the number of channels)",
    "crop_scale": "area fractions of the random resized crop",
    "flip": "random horizontal flips (default: on for Fashion-MNIST and CIFAR, off for digits)",
    "label_augment": "augment images in the label pass (reference code: on)",
    "label_bn_train": "train-mode BatchNorm in the label pass (reference code: on)",
    "knn_k": "neighbours of the weighted kNN (paper: 50)",
    "knn_sigma": "temperature of the kNN votes exp(sim / sigma) (paper: 0.1)",
    "knn_pca": "PCA dimensions of the FC features before the kNN (paper: 128)",
    "curve_points": "evaluations at evenly spaced epochs for the learning curves (0: final only)",
    "amp": "bfloat16 autocast in the training steps on CUDA (never in the label pass)",
    "ckpt_every_steps": "also checkpoint every this many steps (0: at epoch ends only)",
    "device": "cpu, cuda or cuda:N",
}

# The errors that are the user's to fix: reported in one line, exit status 2.
USER_ERRORS = (ConfigError, DataError)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (``PROG: error: ...``) and
    exit status 2, without the long usage text (``-h`` shows it)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _base_type(tp: Any) -> Any:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def _train_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sela-train",
        description="Train a network by self-labelling (SeLa) with equipart's optimal transport.",
    )
    p.add_argument("--out", required=True, help="run folder (checkpoint, metrics, plots)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named configuration")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    hints, fixed = typing.get_type_hints(Config), choices()
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        tp = _base_type(hints[f.name])
        kw: dict[str, Any] = {"default": None, "help": _HELP.get(f.name, f.name.replace("_", " "))}
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name == "crop_scale":
            p.add_argument(flag, type=float, nargs=2, metavar=("MIN", "MAX"), **kw)
        elif f.name == "lr_drops":
            p.add_argument(flag, type=float, nargs="*", metavar="FRACTION", **kw)
        else:
            p.add_argument(flag, type=tp, choices=fixed.get(f.name), **kw)
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then the preset, then every flag given on the command line."""
    values: dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {}
    for f in dataclasses.fields(Config):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = tuple(given) if f.name in TUPLES else given
    return Config.from_dict(values)


def train_main(argv: list[str] | None = None) -> int:
    """Entry point of ``sela-train``.

    Every setting is checked before any work (nothing is written to ``--out`` before the
    data has loaded); a bad flag, missing or unreadable data files, an unusable device or
    a ``--resume`` against a checkpoint made with other settings exits with status 2 and
    one line ``sela-train: error: --FLAG: ...`` on stderr.
    """
    parser = _train_parser()
    args = parser.parse_args(argv)
    from .train import Trainer, check_resume

    try:
        cfg = config_from_args(args)
        check_config(cfg)
        if args.resume:
            check_resume(cfg, args.out)
        trainer = Trainer(cfg, args.out)
        summary = trainer.run(resume=args.resume)
    except USER_ERRORS as exc:
        parser.error(str(exc))
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    """Entry point of ``sela-eval CHECKPOINT``: every metric of a saved model."""
    p = _Parser(prog="sela-eval", description="Evaluate a SeLa checkpoint.")
    p.add_argument("checkpoint", type=Path, help="a checkpoint.pt written by sela-train")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the run's device)")
    p.add_argument("--data-dir", default=None, help="where the dataset lives, if moved")
    p.add_argument("--output", type=Path, default=None, help="also write the metrics here")
    args = p.parse_args(argv)
    if not args.checkpoint.is_file():
        p.error(f"checkpoint: {args.checkpoint} is not a file")
    from .evaluate import evaluate_model, label_scores
    from .models import build_model
    from .train import prepare_data, resolve_device

    try:
        blob = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        cfg = Config.from_dict(blob["config"])
    except Exception as exc:  # corrupt, truncated, or not a checkpoint of this trainer
        p.error(
            f"checkpoint: {args.checkpoint} is not a readable sela-train checkpoint "
            f"({type(exc).__name__}: {exc})"
        )
    if args.device:
        cfg.device = args.device
    if args.data_dir:
        cfg.data_dir = args.data_dir
    try:
        if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
            raise ConfigError(f"--data-dir: {cfg.data_dir} is not a folder")
        device = resolve_device(cfg.device)
        data = prepare_data(cfg)
    except USER_ERRORS as exc:
        p.error(str(exc))
    missing = [key for key in ("model", "labels", "step") if key not in blob]
    if missing:
        p.error(f"checkpoint: {args.checkpoint} has no {', '.join(missing)} (not from sela-train)")
    model = build_model(
        cfg.arch, data.channels, data.image_size, cfg.heads, cfg.clusters, cfg.width, cfg.fc
    )
    model.load_state_dict(blob["model"])
    result: dict[str, Any] = evaluate_model(model.to(device), data, cfg)
    if cfg.method != "untrained":
        result["pseudo"] = label_scores(blob["labels"], data.train.labels, cfg.clusters)
    result["step"] = blob["step"]
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m selflabel train ...`` or ``python -m selflabel eval ...``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("train", "eval"):
        print(
            "usage: python -m selflabel {train,eval} ... (see sela-train -h, sela-eval -h)",
            file=sys.stderr,
        )
        return 2
    return train_main(argv[1:]) if argv[0] == "train" else eval_main(argv[1:])

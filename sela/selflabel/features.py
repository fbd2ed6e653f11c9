"""A network's outputs over a whole split, and the augmentation each data set trains with.

* :func:`make_augment`: the run's training transform. ``colour`` is SeLa's (random
  resized crop, flip, colour jitter, grayscale); ``gray`` stands in for it on one-channel
  images, where saturation, hue and grayscale do nothing (random resized crop, a small
  random affine map, brightness/contrast jitter, Gaussian noise, random erasing); ``auto``
  picks by the number of channels. Horizontal flips are on by default for natural images
  (Fashion-MNIST, CIFAR) and off for digits (MNIST, scikit-learn's digits, SVHN), where a
  mirrored digit is another symbol or none.
* :func:`extract`: log-softmax scores of every head, the FC features the heads read and the
  last conv block's output, for a whole split, always in float32 (never under autocast),
  in the near-equal chunks of :func:`chunk_sizes`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .augment import Augment
from .config import Config
from .data import Dataset

__all__ = ["FLIPPED", "Outputs", "chunk_sizes", "extract", "make_augment"]

# Data sets whose images stay what they are when mirrored left to right.
FLIPPED = ("fashion-mnist", "cifar10", "cifar100")


def make_augment(cfg: Config, data: Dataset) -> Augment:
    """The training transform of ``cfg.augment`` for ``data`` (see the module docstring)."""
    recipe = cfg.augment
    if recipe == "auto":
        recipe = "colour" if data.channels == 3 else "gray"
    flip = cfg.flip if cfg.flip is not None else data.name in FLIPPED
    common = dict(mean=data.mean, std=data.std, scale=cfg.crop_scale, flip=flip)
    if recipe == "colour":
        return Augment(**common, jitter=0.4, jitter_p=0.8, gray_p=0.2)
    if recipe == "gray":
        return Augment(
            **common, rotate=10.0, shear=10.0, translate=0.1, jitter=0.4, jitter_p=0.8,
            gray_p=0.0, noise=0.03, erase_p=0.5,
        )  # fmt: skip
    return Augment(mean=data.mean, std=data.std, crop=False, flip=False, jitter=0.0, gray_p=0.0)


def chunk_sizes(n: int, most: int) -> list[int]:
    """Sizes of the fewest near-equal chunks of ``n`` images with at most ``most`` each, but
    never fewer than 2 each when ``n >= 2`` (``most = 2`` and odd ``n`` give one chunk of 3):
    train-mode BatchNorm fails on one image and is noisy on a small tail."""
    count = max(1, min(math.ceil(n / most), n // 2))
    return [n // count + (i < n % count) for i in range(count)]


class Outputs(NamedTuple):
    """A network's float32 outputs over N images."""

    scores: torch.Tensor  # (H, N, K) log-softmax of every head
    fc: torch.Tensor  # (N, D) the features the heads read
    conv: torch.Tensor | None  # (N, C) the last conv block, flattened (when asked for)


@torch.no_grad()
def extract(
    model: torch.nn.Module,
    images: torch.Tensor,
    augment: Augment,
    batch: int,
    train_mode: bool = False,
    augmented: bool = False,
    conv: bool = False,
) -> Outputs:
    """The :class:`Outputs` of ``model`` on ``images`` (uint8, N x C x H x W), in chunks of
    at most ``batch`` images, augmented or only normalised, with BatchNorm in training or
    evaluation mode; float32 throughout, autocast disabled."""
    device = next(model.parameters()).device
    model.train(train_mode)
    scores, fcs, convs = [], [], []
    with torch.autocast(device_type=device.type, enabled=False):
        for chunk in torch.split(images, chunk_sizes(images.shape[0], batch)):
            logits, fc, block = model(augment(chunk.to(device), train=augmented), True)
            scores.append(F.log_softmax(logits, dim=-1).transpose(0, 1))
            fcs.append(fc)
            if conv:
                convs.append(block)
    return Outputs(
        torch.cat(scores, dim=1).contiguous(), torch.cat(fcs), torch.cat(convs) if conv else None
    )

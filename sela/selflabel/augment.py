"""Batched image augmentations written with torch ops (no torchvision), on any device.

SeLa's training transform is RandomResizedCrop, ColorJitter(0.4, 0.4, 0.4), RandomGrayscale
(p=0.2) and RandomHorizontalFlip. Here every image of a batch gets its own random
parameters, drawn in one call, so a whole batch is transformed by a handful of kernels:

* crop + flip: one affine sampling grid per image (``affine_grid`` + bilinear
  ``grid_sample``): a crop covering a fraction s ~ U[scale] of the area with aspect ratio
  r, log-uniform in ``ratio``, centred uniformly where it fits, mirrored with p = 0.5;
* colour jitter, applied with probability ``jitter_p`` per image: brightness (multiply by
  b), contrast (blend with the image's mean grey level by c), saturation (blend with the
  grey image by s; colour images only), each factor ~ U[1 - 0.4, 1 + 0.4]; hue is not
  jittered;
* grayscale with probability ``gray_p`` (colour images only; ITU-R 601 luma weights);
* normalisation by the dataset's channel mean and standard deviation.

Inputs are uint8 (N, C, H, W); outputs float32 (or the requested dtype) on the same device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Augment"]

_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Augment:
    """The training transform; ``Augment(...)(images)`` -> normalised float batch."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: bool = True
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    jitter: float = 0.4
    jitter_p: float = 0.8
    gray_p: float = 0.2

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float32, (x / 255 - mean) / std per channel."""
        x = images.float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def __call__(self, images: torch.Tensor, train: bool = True) -> torch.Tensor:
        """Augment (``train=True``) or only normalise a uint8 batch."""
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(
                f"images: expected a uint8 (N, C, H, W) tensor, got {images.dtype} "
                f"with shape {tuple(images.shape)}"
            )
        if not train:
            return self.normalise(images)
        x = images.float().div_(255.0)
        if self.crop or self.flip:
            x = self._crop_flip(x)
        if self.jitter > 0 and self.jitter_p > 0:
            x = self._jitter(x)
        if x.shape[1] == 3 and self.gray_p > 0:
            gray = _gray(x).expand_as(x)
            pick = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.gray_p
            x = torch.where(pick, gray, x)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.clamp_(0.0, 1.0) - mean) / std

    def _crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        n, device = x.shape[0], x.device
        if self.crop:
            area = torch.empty(n, device=device).uniform_(*self.scale)
            log_r = torch.empty(n, device=device).uniform_(
                math.log(self.ratio[0]), math.log(self.ratio[1])
            )
            r = torch.exp(log_r)
            # Width and height as fractions of the image, clipped to fit inside it.
            w = torch.sqrt(area * r).clamp_(max=1.0)
            h = torch.sqrt(area / r).clamp_(max=1.0)
            # Centre in normalised coordinates [-1, 1] such that the crop stays inside.
            cx = (torch.rand(n, device=device) * 2 - 1) * (1 - w)
            cy = (torch.rand(n, device=device) * 2 - 1) * (1 - h)
        else:
            w = h = torch.ones(n, device=device)
            cx = cy = torch.zeros(n, device=device)
        if self.flip:
            w = torch.where(torch.rand(n, device=device) < 0.5, -w, w)
        theta = torch.zeros(n, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 2] = w, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        n, device = x.shape[0], x.device
        lo, hi = 1.0 - self.jitter, 1.0 + self.jitter
        apply = (torch.rand(n, 1, 1, 1, device=device) < self.jitter_p).to(x.dtype)

        def factor() -> torch.Tensor:
            f = torch.empty(n, 1, 1, 1, device=device).uniform_(lo, hi)
            return apply * f + (1 - apply)

        x = (x * factor()).clamp_(0.0, 1.0)
        grey_mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        c = factor()
        x = (c * x + (1 - c) * grey_mean).clamp_(0.0, 1.0)
        if x.shape[1] == 3:
            s = factor()
            x = (s * x + (1 - s) * _gray(x)).clamp_(0.0, 1.0)
        return x


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of an RGB batch, or the batch itself if it has one channel."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)

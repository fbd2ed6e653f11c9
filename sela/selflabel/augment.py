"""Batched image augmentations written with torch ops (no torchvision), on any device.

SeLa trains with RandomResizedCrop, ColorJitter(0.4, 0.4, 0.4), RandomGrayscale (p=0.2)
and RandomHorizontalFlip, and calls heavy augmentation crucial. Colour jitter beyond
brightness and contrast, and grayscale, do nothing to a one-channel image, so for those
this module stands in with geometric and occlusion noise instead: a small random affine
map (rotation, shear, translation), random erasing and Gaussian pixel noise. Every image
of a batch gets its own random parameters, drawn in one call, so a whole batch is
transformed by a handful of kernels:

* geometry, one affine sampling grid per image (``affine_grid`` + bilinear
  ``grid_sample``, zeros outside the image): output coordinates u in [-1, 1]^2 (the
  image's normalised frame) map to input coordinates ``C R Sh F u + t``, where F mirrors
  the horizontal axis with p = 0.5 (``flip``), Sh shears by an angle ~ U[-shear, shear],
  R rotates by ~ U[-rotate, rotate] degrees, C = diag(w, h) is a crop covering a fraction
  s ~ U[scale] of the area with aspect ratio r, log-uniform in ``ratio``
  (w = sqrt(s r), h = sqrt(s / r), each at most 1), and t places the crop uniformly where
  it fits plus a shift ~ U[-translate, translate] of the image size;
* colour jitter, applied with probability ``jitter_p`` per image: brightness (multiply by
  b), contrast (blend with the image's mean grey level by c), saturation (blend with the
  grey image by s; colour images only), each factor ~ U[1 - jitter, 1 + jitter]; hue is not
  jittered;
* grayscale with probability ``gray_p`` (colour images only; ITU-R 601 luma weights);
* Gaussian noise of standard deviation ``noise`` (in units of the [0, 1] intensity range),
  then clipping to [0, 1];
* normalisation by the dataset's channel mean and standard deviation;
* random erasing with probability ``erase_p``: a rectangle of area fraction
  ~ U[erase_scale] and aspect ratio log-uniform in [0.3, 3.3], placed uniformly inside the
  image, set to 0 after normalisation (the dataset's mean intensity).

Inputs are uint8 (N, C, H, W); outputs float32 on the same device. The input is never
modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Augment"]

_LUMA = (0.299, 0.587, 0.114)
_ERASE_RATIO = (0.3, 3.3)


@dataclass(frozen=True)
class Augment:
    """The training transform; ``Augment(...)(images)`` -> normalised float batch.

    Angles are in degrees, ``translate`` and ``scale`` in fractions of the image's side
    and area, ``noise`` in units of the [0, 1] intensity range.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: bool = True
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    rotate: float = 0.0
    shear: float = 0.0
    translate: float = 0.0
    jitter: float = 0.4
    jitter_p: float = 0.8
    gray_p: float = 0.2
    noise: float = 0.0
    erase_p: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.2)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Float (N, C, H, W) intensities in [0, 1] -> (x - mean) / std per channel."""
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
        x = images.float().div_(255.0)
        if not train:
            return self.normalise(x)
        if self._moves():
            x = self._geometry(x)
        if self.jitter > 0 and self.jitter_p > 0:
            x = self._jitter(x)
        if x.shape[1] == 3 and self.gray_p > 0:
            gray = _gray(x).expand_as(x)
            pick = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.gray_p
            x = torch.where(pick, gray, x)
        if self.noise > 0:
            x = x + self.noise * torch.randn_like(x)
        x = self.normalise(x.clamp_(0.0, 1.0))
        if self.erase_p > 0:
            x = x * ~self._erase_mask(x)
        return x

    def _moves(self) -> bool:
        return self.crop or self.flip or self.rotate > 0 or self.shear > 0 or self.translate > 0

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        n, device = x.shape[0], x.device

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.empty(n, device=device).uniform_(lo, hi)

        ones = torch.ones(n, device=device)
        if self.crop:
            area = uniform(*self.scale)
            r = torch.exp(uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            w = torch.sqrt(area * r).clamp_(max=1.0)
            h = torch.sqrt(area / r).clamp_(max=1.0)
            # a centre in [-1, 1] at which the crop stays inside the image
            cx, cy = uniform(-1, 1) * (1 - w), uniform(-1, 1) * (1 - h)
        else:
            w, h, cx, cy = ones, ones, 0 * ones, 0 * ones
        if self.translate > 0:
            cx = cx + uniform(-2 * self.translate, 2 * self.translate)
            cy = cy + uniform(-2 * self.translate, 2 * self.translate)
        # the linear part M = R Sh F, applied to output coordinates before the crop scaling
        angle = uniform(-self.rotate, self.rotate) * (math.pi / 180)
        shear = torch.tan(uniform(-self.shear, self.shear) * (math.pi / 180))
        mirror = torch.where(torch.rand(n, device=device) < 0.5, -ones, ones) if self.flip else ones
        cos, sin = torch.cos(angle), torch.sin(angle)
        m00, m01 = cos * mirror, cos * shear - sin
        m10, m11 = sin * mirror, sin * shear + cos
        theta = torch.stack(
            [torch.stack([w * m00, w * m01, cx], 1), torch.stack([h * m10, h * m11, cy], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

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

    def _erase_mask(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) boolean mask of each picked image's erased rectangle."""
        n, _, rows, cols = x.shape
        device = x.device
        area = torch.empty(n, device=device).uniform_(*self.erase_scale) * rows * cols
        log_r = torch.empty(n, device=device).uniform_(*(math.log(v) for v in _ERASE_RATIO))
        eh = torch.sqrt(area * torch.exp(log_r)).round().clamp_(1, rows)
        ew = torch.sqrt(area / torch.exp(log_r)).round().clamp_(1, cols)
        top = (torch.rand(n, device=device) * (rows - eh + 1)).floor()
        left = (torch.rand(n, device=device) * (cols - ew + 1)).floor()
        ys = torch.arange(rows, device=device).view(1, rows, 1)
        xs = torch.arange(cols, device=device).view(1, 1, cols)

        def inside(lo: torch.Tensor, size: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
            lo, size = lo.view(-1, 1, 1), size.view(-1, 1, 1)
            return (at >= lo) & (at < lo + size)

        picked = (torch.rand(n, device=device) < self.erase_p).view(-1, 1, 1)
        mask = inside(top, eh, ys) & inside(left, ew, xs) & picked
        return mask.unsqueeze(1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of an RGB batch, or the batch itself if it has one channel."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)

"""Networks with H classification heads of K clusters each (SeLa's multi-head output).

* :class:`AlexNetBN`: SeLa's AlexNet with BatchNorm, sized for small images: five conv
  layers (96, 256, 384, 384, 256 channels times ``width``) with BatchNorm and ReLU, 2x2
  max-pooling after conv1, conv2 and conv5 (so an S x S image leaves S/8 x S/8), then two
  fully connected layers of ``fc`` units (BatchNorm, ReLU; 4096 in SeLa) and the heads.
* :class:`ResNet18`: the CIFAR-style ResNet-18 (3x3 stem, no stem pooling, stages of
  64, 128, 256, 512 channels times ``width``, global average pooling).

Every network is ``conv`` (the convolutional trunk, flattened) then ``fc`` (AlexNet's two
fully connected layers; nothing for the ResNet) then the heads. ``forward(x)`` returns head
logits of shape (B, H, K); ``forward(x, with_features=True)`` returns ``(logits, fc,
conv)``: the penultimate features the heads read (the k-means ablation clusters them and
the kNN evaluation reads them, as in SeLa) and the last convolutional block's output (the
linear probe reads it: conv5 for AlexNet, the pooled last stage for the ResNet).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ARCHS", "AlexNetBN", "MultiHead", "ResNet18", "build_model"]

ARCHS = ("alexnet", "resnet18")


class MultiHead(nn.Module):
    """H linear heads of K outputs each, computed as one (D -> H*K) matrix product."""

    def __init__(self, in_features: int, n_heads: int, n_clusters: int) -> None:
        super().__init__()
        if n_heads < 1 or n_clusters < 2:
            raise ValueError(
                f"heads/clusters: expected >= 1 head of >= 2 clusters, got {n_heads} x {n_clusters}"
            )
        self.n_heads, self.n_clusters = n_heads, n_clusters
        self.linear = nn.Linear(in_features, n_heads * n_clusters)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features).view(-1, self.n_heads, self.n_clusters)


class _Backbone(nn.Module):
    conv: nn.Module
    fc: nn.Module
    heads: MultiHead
    feature_dim: int

    def forward(
        self, x: torch.Tensor, with_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        conv = self.conv(x)
        features = self.fc(conv)
        logits = self.heads(features)
        return (logits, features, conv) if with_features else logits


def _conv_bn(c_in: int, c_out: int, k: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class AlexNetBN(_Backbone):
    """SeLa's AlexNet-BN for S x S images (S a multiple of 8)."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        n_heads: int,
        n_clusters: int,
        width: float = 1.0,
        fc: int = 4096,
    ) -> None:
        super().__init__()
        if image_size % 8:
            raise ValueError(f"image_size: expected a multiple of 8, got {image_size}")
        c = [max(8, round(ch * width)) for ch in (96, 256, 384, 384, 256)]
        spatial = image_size // 8
        self.conv = nn.Sequential(
            *_conv_bn(in_channels, c[0], 5), nn.MaxPool2d(2),
            *_conv_bn(c[0], c[1], 5), nn.MaxPool2d(2),
            *_conv_bn(c[1], c[2], 3),
            *_conv_bn(c[2], c[3], 3),
            *_conv_bn(c[3], c[4], 3), nn.MaxPool2d(2),
            nn.Flatten(),
        )  # fmt: skip
        self.fc = nn.Sequential(
            nn.Linear(c[4] * spatial * spatial, fc, bias=False), nn.BatchNorm1d(fc),
            nn.ReLU(inplace=True),
            nn.Linear(fc, fc, bias=False), nn.BatchNorm1d(fc), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.feature_dim = fc
        self.heads = MultiHead(fc, n_heads, n_clusters)


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNet18(_Backbone):
    """CIFAR-style ResNet-18 (He et al. 2016 with a 3x3 stem and no stem pooling)."""

    def __init__(self, in_channels: int, n_heads: int, n_clusters: int, width: float = 1.0):
        super().__init__()
        c = [max(8, round(ch * width)) for ch in (64, 128, 256, 512)]
        layers: list[nn.Module] = [*_conv_bn(in_channels, c[0], 3)]
        c_in = c[0]
        for i, ch in enumerate(c):
            layers += [_Block(c_in, ch, 1 if i == 0 else 2), _Block(ch, ch, 1)]
            c_in = ch
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Identity()
        self.feature_dim = c[-1]
        self.heads = MultiHead(c[-1], n_heads, n_clusters)


def build_model(
    arch: str,
    in_channels: int,
    image_size: int,
    n_heads: int,
    n_clusters: int,
    width: float = 1.0,
    fc: int = 4096,
) -> nn.Module:
    """The network called ``arch`` (one of :data:`ARCHS`)."""
    if width <= 0:
        raise ValueError(f"width: expected a positive channel multiplier, got {width}")
    if arch == "alexnet":
        return AlexNetBN(in_channels, image_size, n_heads, n_clusters, width, fc)
    if arch == "resnet18":
        return ResNet18(in_channels, n_heads, n_clusters, width)
    raise ValueError(f"arch: unknown architecture {arch!r}; choose one of {ARCHS}")

"""Networks give (B, H, K) logits and the FC and conv features the evaluation reads."""

from __future__ import annotations

import pytest
import torch

from selflabel.models import build_model


@pytest.mark.parametrize(("arch", "channels", "size"), [("alexnet", 1, 32), ("alexnet", 3, 8),
                                                        ("resnet18", 3, 16)])  # fmt: skip
def test_shapes(arch, channels, size):
    model = build_model(arch, channels, size, n_heads=3, n_clusters=7, width=0.125, fc=24)
    x = torch.randn(4, channels, size, size)
    logits, feats, conv = model(x, with_features=True)
    assert logits.shape == (4, 3, 7)
    assert feats.shape == (4, model.feature_dim)
    torch.testing.assert_close(model.conv(x), conv)
    torch.testing.assert_close(model.fc(conv), feats)
    torch.testing.assert_close(model(x), logits)  # eval-independent here: train mode both


def test_heads_are_one_matrix_product():
    model = build_model("alexnet", 1, 8, n_heads=2, n_clusters=5, width=0.125, fc=16).eval()
    x = torch.randn(3, 1, 8, 8)
    logits, feats, _ = model(x, with_features=True)
    w, b = model.heads.linear.weight.view(2, 5, -1), model.heads.linear.bias.view(2, 5)
    torch.testing.assert_close(logits[:, 1], feats @ w[1].T + b[1])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="image_size"):
        build_model("alexnet", 1, 12, 1, 5)
    with pytest.raises(ValueError, match="arch"):
        build_model("vgg", 1, 32, 1, 5)
    with pytest.raises(ValueError, match="heads/clusters"):
        build_model("resnet18", 3, 32, 0, 5)

"""Batched torch augmentations: identities where the maths says so, and the right shapes."""

from __future__ import annotations

import pytest
import torch

from selflabel.augment import Augment


def _batch(n=6, c=3, s=16, seed=0):
    return torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip


def test_no_augmentation_is_normalisation():
    x = _batch()
    aug = Augment(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    out = aug(x, train=False)
    expected = (x.float() / 255 - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2, 0.25, 0.3]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected)


def test_full_crop_without_flip_or_colour_is_identity():
    x = _batch()
    aug = Augment(mean=(0,) * 3, std=(1,) * 3, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False,
                  jitter=0.0, gray_p=0.0)  # fmt: skip
    torch.testing.assert_close(aug(x), x.float() / 255, atol=1e-5, rtol=0)


def test_flip_only_mirrors_each_image_or_leaves_it():
    torch.manual_seed(0)
    x = _batch(n=32)
    aug = Augment(mean=(0,) * 3, std=(1,) * 3, crop=False, flip=True, jitter=0.0, gray_p=0.0)
    out, ref = aug(x), x.float() / 255
    same = (out - ref).abs().amax(dim=(1, 2, 3)) < 1e-5
    mirrored = (out - ref.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 32


def test_grayscale_makes_channels_equal_and_input_is_untouched():
    x = _batch()
    before = x.clone()
    aug = Augment(mean=(0,) * 3, std=(1,) * 3, crop=False, flip=False, jitter=0.0, gray_p=1.0)
    out = aug(x)
    torch.testing.assert_close(out[:, 0], out[:, 1])
    torch.testing.assert_close(out[:, 1], out[:, 2])
    assert torch.equal(x, before)


def test_random_augmentation_shapes_and_range():
    torch.manual_seed(1)
    x = _batch(n=8, c=1, s=32)
    aug = Augment(mean=(0.0,), std=(1.0,))
    out = aug(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.allclose(out, x.float() / 255)


def test_rejects_float_input():
    with pytest.raises(TypeError, match="images: expected a uint8"):
        Augment(mean=(0.0,), std=(1.0,))(torch.zeros(2, 1, 8, 8))

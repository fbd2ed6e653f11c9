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


def _blob(n=16, s=32, radius=5.0):
    """A batch of one bright disc at the centre of a dark s x s image (uint8, 1 channel)."""
    yy, xx = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
    disc = ((yy - s / 2) ** 2 + (xx - s / 2) ** 2 <= radius**2).to(torch.uint8) * 255
    return disc.expand(n, 1, s, s).clone()


def _plain(**kw):
    return Augment(mean=(0.0,), std=(1.0,), crop=False, flip=False, jitter=0.0, gray_p=0.0, **kw)


def test_rotation_and_shear_keep_a_centred_disc_in_place():
    torch.manual_seed(2)
    x = _blob()
    for aug in (_plain(rotate=45.0), _plain(shear=10.0)):
        out = aug(x)
        ref = x.float() / 255
        # the mass stays (bilinear resampling blurs the rim) and stays centred
        torch.testing.assert_close(out.sum(dim=(1, 2, 3)), ref.sum(dim=(1, 2, 3)), rtol=0.08,
                                   atol=0)  # fmt: skip
        centre = (out * torch.arange(32).view(1, 1, 1, 32)).sum(dim=(1, 2, 3)) / out.sum(
            dim=(1, 2, 3)
        )
        torch.testing.assert_close(centre, torch.full((16,), 15.5), atol=0.3, rtol=0)


def test_translation_moves_the_disc_by_at_most_its_range():
    torch.manual_seed(3)
    out = _plain(translate=0.1)(_blob())
    cols = (out * torch.arange(32).view(1, 1, 1, 32)).sum(dim=(1, 2, 3)) / out.sum(dim=(1, 2, 3))
    shift = (cols - 15.5).abs()
    assert float(shift.max()) <= 0.1 * 32 + 0.3 and float(shift.max()) > 0.5


def test_crop_area_zooms_by_up_to_the_inverse_square_root_of_the_scale():
    """A crop of area fraction s magnifies by 1/sqrt(s): the disc's area grows by 1/s, at
    most 5x for scale (0.2, 0.2)."""
    torch.manual_seed(4)
    x = _blob(radius=3.0)
    aug = Augment(mean=(0.0,), std=(1.0,), scale=(0.2, 0.2), ratio=(1.0, 1.0), flip=False,
                  jitter=0.0, gray_p=0.0)  # fmt: skip
    area = aug(x).sum(dim=(1, 2, 3))
    ref = (x.float() / 255).sum(dim=(1, 2, 3))
    assert float((area / ref).max()) <= 5.0 * 1.1  # the disc may leave the crop in part


def test_erasing_sets_one_rectangle_to_the_mean_per_picked_image():
    torch.manual_seed(5)
    x = torch.full((64, 1, 32, 32), 200, dtype=torch.uint8)
    aug = Augment(mean=(0.5,), std=(0.25,), crop=False, flip=False, jitter=0.0, gray_p=0.0,
                  erase_p=1.0, erase_scale=(0.05, 0.2))  # fmt: skip
    out = aug(x)
    erased = out == 0
    fraction = erased.float().mean(dim=(1, 2, 3))
    assert float(fraction.min()) >= 0.03 and float(fraction.max()) <= 0.25
    rows, cols = erased.any(dim=3).sum(dim=(1, 2)), erased.any(dim=2).sum(dim=(1, 2))
    assert torch.equal(erased.sum(dim=(1, 2, 3)), rows * cols)  # one full rectangle
    none = Augment(mean=(0.5,), std=(0.25,), crop=False, flip=False, jitter=0.0, gray_p=0.0,
                   erase_p=0.0)  # fmt: skip
    assert not bool((none(x) == 0).any())


def test_noise_has_the_requested_standard_deviation():
    torch.manual_seed(6)
    x = torch.full((32, 1, 32, 32), 128, dtype=torch.uint8)
    out = _plain(noise=0.05)(x)
    assert float((out - 128 / 255).std()) == pytest.approx(0.05, rel=0.05)


@pytest.mark.parametrize(("name", "channels", "flip", "rotate"), [
    ("fashion-mnist", 1, True, 10.0), ("mnist", 1, False, 10.0), ("digits", 1, False, 10.0),
    ("cifar10", 3, True, 0.0), ("svhn", 3, False, 0.0),
])  # fmt: skip
def test_each_data_set_gets_its_recipe(name, channels, flip, rotate):
    from selflabel.config import Config
    from selflabel.data import Dataset, Split
    from selflabel.features import make_augment

    split = Split(torch.zeros(2, channels, 8, 8, dtype=torch.uint8), torch.zeros(2).long())
    data = Dataset(name, split, split, 10, (0.5,) * channels, (0.2,) * channels)
    aug = make_augment(Config(dataset=name), data)
    assert (aug.flip, aug.rotate, aug.scale) == (flip, rotate, (0.2, 1.0))
    assert (aug.erase_p > 0) == (channels == 1) and (aug.gray_p > 0) == (channels == 3)
    assert make_augment(Config(dataset=name, flip=not flip), data).flip == (not flip)

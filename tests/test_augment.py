"""Stage-2 crops as the authors make them (native-resolution views, one bicubic crop each, clamp last), the
order of the training items (shuffle) and the paper profile's loader settings."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from mtmg.core.config import AlignConfig, TrainConfig
from mtmg.data.augment import authors_crops
from mtmg.data.sentinel2 import ms_view
from mtmg.method.training import EpochSampler
from mtmg.runs import profiles

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _preprocess(size):
    """CLIP's evaluation transform (as open_clip builds it): resize, centre crop, to tensor, normalise."""
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(MEAN, STD)])


def _native(seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    rgb = Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy())
    return rgb, torch.rand(13, size, size, generator=g)


def test_crops_reach_the_model_size_from_the_native_views():
    rgb_crop, ms_crop = authors_crops(_preprocess(32), ms_size=48)
    image, ms = _native()
    torch.manual_seed(0)
    assert rgb_crop(image).shape == (3, 32, 32) and ms_crop(ms).shape == (13, 48, 48)
    assert authors_crops(_preprocess(32))[1](ms).shape == (13, 64, 64)  # ms_size None: the view's own size


def test_a_whole_image_crop_is_the_bicubic_resize_of_the_native_composite():
    """With the whole image as the box, the RGB view is CLIP's evaluation preprocessing of the native
    composite: the crop is taken before resizing, bicubic (the old crop resized a resized tensor, bilinear)."""
    image, ms = _native(1)
    rgb_crop, ms_crop = authors_crops(_preprocess(32), ms_size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(rgb_crop(image), _preprocess(32)(image))
    resized = T.Resize((32, 32), interpolation=T.InterpolationMode.BICUBIC, antialias=True)(ms)
    torch.testing.assert_close(ms_crop(ms), resized)


def test_views_get_independent_boxes_and_a_seed_reproduces_them():
    ramp = torch.arange(64.0).reshape(1, 8, 8).repeat(13, 8, 8)
    _, ms_crop = authors_crops(_preprocess(32), ms_size=16)
    torch.manual_seed(3)
    first = ms_crop(ramp)
    torch.manual_seed(3)
    assert torch.equal(first, ms_crop(ramp))
    different = 0
    for seed in range(5):
        torch.manual_seed(seed)
        different += not torch.equal(ms_crop(ramp), ms_crop(ramp))  # two draws: two boxes
    assert different >= 4


def test_ms_view_resizes_then_clamps():
    raw = np.full((13, 8, 8), 5000, dtype=np.uint16)
    raw[:, :, 4:] = 20000  # brighter than the clamp: the resize must see it before the clamp cuts it
    resize = T.Resize((4, 4), interpolation=T.InterpolationMode.BICUBIC, antialias=True)
    out = ms_view(raw, resize)
    expected = resize(torch.from_numpy(raw.astype(np.float32) / 10000)).clamp(0, 1)
    torch.testing.assert_close(out, expected)
    clamp_first = resize(torch.from_numpy(raw.astype(np.float32) / 10000).clamp(0, 1))
    assert not torch.allclose(out, clamp_first)
    assert torch.equal(ms_view(raw), torch.from_numpy(raw.astype(np.float32) / 10000).clamp(0, 1))


def test_without_shuffle_every_epoch_takes_the_dataset_order():
    assert [i for i, _ in EpochSampler(6, 0, 3, shuffle=False)] == list(range(6))
    assert [i for i, _ in EpochSampler(6, 0, 3, 2, shuffle=False)] == list(range(2, 6))
    assert sorted(i for i, _ in EpochSampler(6, 0, 3)) == list(range(6))
    assert TrainConfig().shuffle is True


def test_paper_profile_trains_stage_2_as_the_authors():
    align = profiles.load_profile("paper").align
    assert align.augment == "rrc" and align.train.shuffle is False and align.train.drop_last is True
    assert profiles.load_profile("default").align.train.shuffle is True


def test_stage2_accepts_rrc_only_without_teacher_cache():
    from mtmg.method.alignment import check_supported

    check_supported(AlignConfig(augment="rrc", teacher_cache=False))
    with pytest.raises(ValueError, match="teacher_cache"):
        check_supported(AlignConfig(augment="rrc", teacher_cache=True))

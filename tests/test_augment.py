"""Stage-2 random resized crops: each view cropped on its own, sizes kept, reproducible under a seed."""

import pytest
import torch

from mtmg.core.config import AlignConfig
from mtmg.data.augment import random_resized_crop


def _item():
    g = torch.Generator().manual_seed(0)
    return {"rgb": torch.rand(3, 32, 32, generator=g), "ms": torch.rand(13, 16, 16, generator=g), "target": 3}


def test_crops_keep_sizes_and_change_pixels():
    torch.manual_seed(0)
    item = _item()
    out = random_resized_crop(("rgb", "ms"))(item)
    assert out["rgb"].shape == (3, 32, 32) and out["ms"].shape == (13, 16, 16) and out["target"] == 3
    assert not torch.equal(out["rgb"], item["rgb"]) and not torch.equal(out["ms"], item["ms"])


def test_views_get_independent_boxes_and_seed_reproduces():
    ramp = torch.arange(64.0).reshape(1, 8, 8).repeat(1, 8, 8)
    item = {"a": ramp, "b": ramp.clone()}
    crop = random_resized_crop(("a", "b"))
    torch.manual_seed(3)
    first = crop(item)
    torch.manual_seed(3)
    again = crop(item)
    assert torch.equal(first["a"], again["a"]) and torch.equal(first["b"], again["b"])
    different = 0
    for seed in range(5):
        torch.manual_seed(seed)
        out = crop(item)
        different += not torch.equal(out["a"], out["b"])
    assert different >= 4


def test_stage2_accepts_rrc_only_without_teacher_cache():
    from mtmg.method.alignment import check_supported

    check_supported(AlignConfig(augment="rrc", teacher_cache=False))
    with pytest.raises(ValueError, match="teacher_cache"):
        check_supported(AlignConfig(augment="rrc", teacher_cache=True))

"""Training augmentations: the PAINT reference pipeline on PIL images and D4 on tensors.

Randomness comes from the global torch generator, which the training loop seeds per sample
(``mtmg.training.SeededDataset``), so augmentations are reproducible and resumable.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision import transforms as T

AUGMENTATIONS = ("none", "d4", "d4_student", "paint")


def paint_train_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """The reference patching augmentation on an RGB composite (PIL), ending with CLIP normalisation.

    Crop (scale 0.9-1), flips, colour jitter (0.4, p 0.8), grayscale (p 0.2), Gaussian blur (p 0.4).
    """
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.9, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4)], p=0.8),
        T.RandomGrayscale(p=0.2),
        # as the reference code: torchvision's kernel_size=(3, 7) is a 3-wide, 7-high kernel
        T.RandomApply([T.GaussianBlur(kernel_size=(3, 7), sigma=(0.1, 2.0))], p=0.4),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def d4(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` (0-7) of the dihedral group on the last two axes: ``k % 4`` quarter turns, flip if ``k >= 4``."""
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return y.flip(-1) if k >= 4 else y


def random_d4(keys: Sequence[str]) -> Callable[[dict], dict]:
    """An item transform applying one random D4 element to ``item[key]`` for every key present.

    The element is stored as ``item["d4"]`` (a cached teacher looks its embedding up with it).
    """
    keys = tuple(keys)

    def apply(item: dict) -> dict:
        k = int(torch.randint(8, (1,)))
        out = {key: d4(v, k) if key in keys else v for key, v in item.items()}
        out["d4"] = k
        return out
    return apply

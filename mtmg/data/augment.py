"""Training augmentations: the PAINT reference pipeline on PIL images, D4 on tensors, the authors' stage-2 crops.

The augmentations of :data:`mtmg.core.config.AUGMENTATIONS` (the ``augment`` key of the stage configs):
``none``; ``d4`` (one random D4 element on every view); ``d4_student`` (D4 on the MS view only); ``paint``
(stage 1: the reference patching pipeline on the RGB composite); ``rrc`` (stage 2, the authors' setting:
an independent RandomResizedCrop, scale 0.9-1, bicubic, of each native-resolution view to the model's
input size, :func:`authors_crops`; the teacher then sees a new crop at every step, so its embeddings
cannot be cached).

Randomness comes from the global torch generator, which the training loop seeds per sample
(``mtmg.method.training.SeededDataset``), so augmentations are reproducible and resumable.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision import transforms as T
from torchvision.transforms import functional as TF

CROP_SCALE: tuple[float, float] = (0.9, 1.0)
CROP_RATIO: tuple[float, float] = (3 / 4, 4 / 3)


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


def authors_crops(preprocess: T.Compose, ms_size: int | None = None, scale: tuple[float, float] = CROP_SCALE,
                  ratio: tuple[float, float] = CROP_RATIO) -> tuple[T.Compose, Callable[[torch.Tensor], torch.Tensor]]:
    """The authors' stage-2 training views, as (RGB transform, MS transform) of a dataset reader.

    RGB: CLIP's evaluation ``preprocess`` (resize, centre crop, to tensor, normalise) with its resize and crop
    replaced by one RandomResizedCrop of the native-resolution composite (a PIL image) to the same output
    size (area ``scale``, aspect ``ratio``, bicubic): open_clip's training transform, which the authors'
    pipeline applies. MS: its own crop of the same kind, drawn independently, of the native-resolution MS
    view to ``ms_size`` x ``ms_size`` (None: the view's own size), bicubic with antialiasing; the reader
    clamps after cropping (:func:`mtmg.data.sentinel2.ms_view`). One crop per view and item, drawn from the
    generator the training loop seeds per item, so a run is reproducible.
    """
    geometric = (T.Resize, T.CenterCrop)
    size = [t.size for t in preprocess.transforms if isinstance(t, geometric)][-1]
    rgb = T.Compose([T.RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=T.InterpolationMode.BICUBIC),
                     *(t for t in preprocess.transforms if not isinstance(t, geometric))])

    def ms(x: torch.Tensor) -> torch.Tensor:
        out = [ms_size, ms_size] if ms_size else list(x.shape[-2:])
        top, left, h, w = T.RandomResizedCrop.get_params(x, list(scale), list(ratio))
        return TF.resized_crop(x, top, left, h, w, out, interpolation=T.InterpolationMode.BICUBIC, antialias=True)
    return rgb, ms

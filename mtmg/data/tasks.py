"""A task: a dataset spec, its splits, its prompts and its zero-shot head.

Both training stages, the zero-shot stage and ``python -m mtmg zeroshot`` open their data, resolve
their prompts and build their heads here, so there is one way of doing each (the CLIP a spec names is
loaded by :mod:`mtmg.method.clip_weights`, a task scored by :func:`mtmg.evaluation.scoring.score_zeroshot`):

- :func:`open_split`, :func:`held_out`, :func:`training_split`: splits of a :class:`~mtmg.core.config.DataSpec`
  from the dataset registry (the synthetic supported task included), a missing validation split carved
  from train (PAINT's rule);
- :func:`task_info`, :func:`head_for`: class names and templates (``prompt_key`` if set, else the
  dataset's own) and the cached frozen zero-shot head;
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset
from torchvision.transforms import InterpolationMode, Resize

from mtmg.core import paths
from mtmg.core.config import DataSpec
from mtmg.data import prompts
from mtmg.data.datasets import carve_validation, get_dataset
from mtmg.models.clip import ClipBundle, ZeroShotHead
from mtmg.models.zeroshot import zeroshot_head

HEADS = "heads"
"""Sub-folder of the cache folder that holds the zero-shot heads."""


def cache_folder(configured: str | None) -> Path:
    """A config's ``cache_dir``, or the cache folder of :mod:`mtmg.core.paths`."""
    return paths.resolve(configured) if configured else paths.cache_dir()


# --- data ------------------------------------------------------------------------------------------------

def open_split(spec: DataSpec, split: str, rgb_transform: Any = None, ms_transform: Any = None) -> Dataset:
    """One split of ``spec`` from the dataset registry (:func:`mtmg.data.datasets.get_dataset`)."""
    return get_dataset(spec.name, paths.resolve(spec.root), split, rgb_transform=rgb_transform,
                       ms_transform=ms_transform, **spec.options)


def held_out(spec: DataSpec, transform: Any, carve: tuple[float, int, int],
             ms_transform: Any = None) -> tuple[Dataset, Dataset | None]:
    """(validation, test) splits; without a validation split one is carved from train (PAINT rule)."""
    if spec.val_split is not None:
        val = open_split(spec, spec.val_split, transform, ms_transform)
    else:
        fraction, max_size, seed = carve
        _, val = carve_validation(open_split(spec, spec.train_split, transform, ms_transform),
                                  fraction=fraction, max_size=max_size, seed=seed)
    test = open_split(spec, spec.test_split, transform, ms_transform) if spec.test_split else None
    return val, test


def training_split(spec: DataSpec, transform: Any, carve: tuple[float, int, int],
                   ms_transform: Any = None) -> Dataset:
    """The train split, less the carved validation items when ``spec`` has no validation split."""
    train = open_split(spec, spec.train_split, transform, ms_transform)
    if spec.val_split is not None:
        return train
    fraction, max_size, seed = carve
    return carve_validation(train, fraction=fraction, max_size=max_size, seed=seed)[0]


def sample_ids(dataset: Any, indices: Sequence[int] | None = None) -> list[str]:
    """Sample ids of ``dataset`` (at ``indices``), without loading the samples where the reader allows it."""
    indices = range(len(dataset)) if indices is None else indices
    if isinstance(dataset, Subset):
        inner = sample_ids(dataset.dataset)
        return [inner[dataset.indices[i]] for i in indices]
    records = getattr(dataset, "records", None)
    if records is not None:
        return [records[i].id for i in indices]
    return [str(dataset[i]["id"]) for i in indices]


def ms_resize(size: int | None) -> Any:
    """The MS-view transform that resizes to ``size`` x ``size`` (bicubic, antialiased); None keeps the size."""
    if size is None:
        return None
    return Resize((size, size), interpolation=InterpolationMode.BICUBIC, antialias=True)


# --- prompts and heads -----------------------------------------------------------------------------------

def task_info(spec: DataSpec, dataset: Dataset) -> tuple[list[str], list[str], bool]:
    """(class names, templates, multilabel) of a task: ``spec.prompt_key`` of :mod:`mtmg.data.prompts` if set,
    else the dataset's own (``prompts.for_dataset``)."""
    if spec.prompt_key:
        names, templates = prompts.classnames(spec.prompt_key), prompts.templates(spec.prompt_key)
    else:
        names, templates = prompts.for_dataset(dataset)
    if len(names) != len(dataset.classes):
        raise ValueError(f"{len(names)} class names for the {len(dataset.classes)} classes of dataset {spec.name}; "
                         "fix DataSpec.prompt_key or mtmg/data/prompts.py")
    return list(names), list(templates), bool(dataset.multilabel)


def head_for(bundle: ClipBundle, spec: DataSpec, dataset: Dataset,
             heads_dir: Path | None) -> tuple[ZeroShotHead, bool]:
    """The frozen zero-shot head of a task (cached in ``heads_dir``; None: not cached) and whether the
    task is multi-label."""
    names, templates, multilabel = task_info(spec, dataset)
    head = zeroshot_head(bundle, names, templates, cache_dir=heads_dir, dataset=spec.name)
    return head.requires_grad_(False), multilabel

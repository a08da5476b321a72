"""Dataset readers for Sentinel-2 and RGB scene classification, behind one registry.

``get_dataset(name, root, split, rgb_transform=None, ms_transform=None, **kw)`` builds any of
:data:`DATASET_NAMES`. Items are dicts ``{"rgb", "ms" (multispectral datasets), "target", "id"}``; every
dataset has ``.classes`` (label order), ``.multilabel`` and ``.prompt_key`` (see :mod:`mtmg.data.prompts`).
Common keyword options: ``on_error="raise" | "skip"`` (skip bad files, listed in ``.skipped``),
``cache=True`` (keep decoded samples in memory), ``split_file=`` (override the split list) and
``download=True`` (fetch with torchgeo, with checksums) where the format has one.
Modules are imported on first use, so importing this package stays cheap.
"""
from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from .base import RGBDataset, Transform
from .errors import (
    BandCountError,
    CorruptFileError,
    DatasetNotFoundError,
    DTypeError,
    InvalidSampleError,
    LabelError,
    MissingFileError,
    NonFiniteError,
    SampleError,
    ShapeError,
    UnknownClassError,
    UnknownDatasetError,
)

_REGISTRY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "eurosat_ms": ("eurosat", "EuroSATMS", {}),
    "eurosat_rgb": ("eurosat", "EuroSATRGB", {}),
    "resisc45": ("folder", "RESISC45", {}),
    "folder": ("folder", "FolderDataset", {}),
    "bigearthnet5": ("bigearthnet", "BigEarthNet", {"num_classes": 5}),
    "bigearthnet19": ("bigearthnet", "BigEarthNet", {"num_classes": 19}),
    "bigearthnet43": ("bigearthnet", "BigEarthNet", {"num_classes": 43}),
    "bigearthnet_v2": ("bigearthnet", "BigEarthNetV2", {}),
    "sen12ms": ("sen12ms", "SEN12MS", {}),
    "shards": ("shards", "ShardsDataset", {}),
    "synthetic": (".synthetic", "SyntheticDataset", {}),  # mtmg.data.synthetic: MiniCLIP's supported task, no root
}
DATASET_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def dataset_class(name: str) -> type:
    """The reader class registered under ``name``."""
    if name not in _REGISTRY:
        raise UnknownDatasetError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    module, cls, _ = _REGISTRY[name]
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def get_dataset(name: str, root: str | Path, split: str, rgb_transform: Transform = None,
                ms_transform: Transform = None, **kw: Any) -> Dataset:
    """Build dataset ``name`` from ``root`` for ``split`` ("train", "val" or "test")."""
    klass = dataset_class(name)
    kwargs = {**_REGISTRY[name][2], **kw}
    if issubclass(klass, RGBDataset):
        if ms_transform is not None:
            raise ValueError(f"dataset {name!r} is RGB-only and has no MS view; drop ms_transform")
        return klass(root, split, rgb_transform, **kwargs)
    return klass(root, split, rgb_transform, ms_transform, **kwargs)


class DatasetSubset(Subset):
    """A Subset that keeps the dataset's attributes (classes, multilabel, prompt_key, ...)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("dataset", "indices"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def carve_validation(dataset_train: Dataset, fraction: float = 0.1, max_size: int = 5000,
                     seed: int = 0) -> tuple[DatasetSubset, DatasetSubset]:
    """Hold out a random ``fraction`` of a training set (at most ``max_size``) as validation (PAINT's rule).

    Returns ``(train_subset, val_subset)``, disjoint, covering the dataset, indices in ascending order.
    """
    n = len(dataset_train)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise ValueError(f"cannot carve a validation split out of {n} sample(s)")
    n_val = min(max_size, max(1, math.floor(fraction * n)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return DatasetSubset(dataset_train, sorted(perm[n_val:])), DatasetSubset(dataset_train, sorted(perm[:n_val]))


__all__ = [
    "DATASET_NAMES", "DatasetSubset", "carve_validation", "dataset_class", "get_dataset",
    "BandCountError", "CorruptFileError", "DatasetNotFoundError", "DTypeError", "InvalidSampleError",
    "LabelError", "MissingFileError", "NonFiniteError", "SampleError", "ShapeError", "UnknownClassError",
    "UnknownDatasetError",
]

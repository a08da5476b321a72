"""Shared machinery of all readers: sample dicts, error policy, optional in-memory cache.

A reader builds a list of :class:`Record` (id, target, files) and implements ``_load(record)``. Items are
dicts ``{"rgb", "ms" (multispectral readers only), "target", "id"}`` as described in the SPEC; both views
of a multispectral sample are derived from one ``(13, H, W)`` uint16 array by :func:`make_sample`.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from mtmg.core.device import single_thread
from mtmg.core.errors import ArgumentError
from mtmg.data.sentinel2 import Level, ms_view, rgb_composite

from .errors import SampleError

OnError = Literal["raise", "skip"]
Transform = Callable[[Any], Any] | None


@dataclass(frozen=True)
class Record:
    """One sample before loading: its id, its files and its target (None: read with the files)."""

    id: str
    files: dict[str, Path] = field(default_factory=dict)
    target: int | tuple[int, ...] | None = None


class Loaded(NamedTuple):
    """A decoded multispectral sample: raw ``(13, H, W)`` uint16 array (SSL4EO order), target, extras."""

    array13: np.ndarray
    target: int | tuple[int, ...]
    extras: dict[str, torch.Tensor]


class Skipped(NamedTuple):
    """A file left out under ``on_error="skip"`` and why."""

    path: Path
    reason: str


def target_value(target: int | tuple[int, ...], num_classes: int, multilabel: bool) -> int | torch.Tensor:
    """Class index for single-label data, float32 multi-hot vector for multi-label data."""
    if not multilabel:
        return int(target)
    hot = torch.zeros(num_classes, dtype=torch.float32)
    hot[list(target)] = 1.0
    return hot


def rgb_output(image: Image.Image, rgb_transform: Transform) -> Any:
    """``rgb_transform(image)``, or a uint8 ``(3, H, W)`` tensor when there is no transform."""
    if rgb_transform is not None:
        return rgb_transform(image)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())


def make_sample(
    array13: np.ndarray,
    target: int | torch.Tensor,
    sample_id: str,
    level: Level,
    rgb_transform: Transform = None,
    ms_transform: Transform = None,
) -> dict[str, Any]:
    """The paired sample of one ``(13, H, W)`` raw array: RGB composite and MS view."""
    return {
        "rgb": rgb_output(Image.fromarray(rgb_composite(array13, level)), rgb_transform),
        "ms": ms_view(array13, ms_transform),
        "target": target,
        "id": sample_id,
    }


class SampleDataset(Dataset):
    """Base of every reader: index of records, ``on_error`` policy and optional cache."""

    classes: list[str]
    multilabel: bool = False
    prompt_key: str = ""

    def __init__(self, rgb_transform: Transform = None, on_error: OnError = "raise", cache: bool = False) -> None:
        if on_error not in ("raise", "skip"):
            raise ArgumentError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.rgb_transform = rgb_transform
        self.on_error = on_error
        self.cache = cache
        self.skipped: list[Skipped] = []
        self.records: list[Record] = []
        self._cache: dict[str, Any] = {}

    def _index(self, records: Sequence[Record], problems: Sequence[Exception] = ()) -> None:
        """Install the records; ``problems`` found while indexing are raised or skipped.

        Under ``on_error="skip"`` every record is loaded once here, so that bad files are left out
        before training starts (and the cache, if enabled, is filled on the way).
        """
        if problems and self.on_error == "raise":
            raise problems[0]
        self.skipped.extend(Skipped(getattr(p, "path", Path()), getattr(p, "reason", str(p))) for p in problems)
        if self.on_error == "skip":
            kept = []
            for record in tqdm(records, desc=f"checking {type(self).__name__}", leave=False,
                               disable=len(records) < 500):
                try:
                    payload = self._load(record)
                except SampleError as e:
                    self.skipped.append(Skipped(e.path, e.reason))
                    continue
                if self.cache:
                    self._cache[record.id] = payload
                kept.append(record)
            records = kept
        if self.skipped:
            warnings.warn(f"{type(self).__name__}: skipped {len(self.skipped)} bad or missing files "
                          f"(see .skipped), first: {self.skipped[0].path}: {self.skipped[0].reason}", stacklevel=2)
        self.records = list(records)

    def _load(self, record: Record) -> Any:
        raise NotImplementedError

    def _payload(self, index: int) -> Any:
        record = self.records[index]
        if not self.cache:
            return self._load(record)
        if record.id not in self._cache:
            self._cache[record.id] = self._load(record)
        return self._cache[record.id]

    def target(self, index: int) -> int | torch.Tensor:
        """Target of sample ``index`` (reads the sample's files only if its labels live there)."""
        target = self.records[index].target
        if target is None:
            target = self._payload(index).target
        return target_value(target, len(self.classes), self.multilabel)

    def __len__(self) -> int:
        return len(self.records)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The samples at ``indices`` (a DataLoader's batch), built with one torch thread (per-sample work)."""
        with single_thread():
            return [self[i] for i in indices]


class MultispectralDataset(SampleDataset):
    """Reader of Sentinel-2 samples; ``_load`` returns a :class:`Loaded`."""

    level: Level

    def __init__(self, rgb_transform: Transform = None, ms_transform: Transform = None,
                 on_error: OnError = "raise", cache: bool = False) -> None:
        super().__init__(rgb_transform, on_error, cache)
        self.ms_transform = ms_transform

    def _load(self, record: Record) -> Loaded:
        raise NotImplementedError

    def raw(self, index: int) -> tuple[np.ndarray, int | torch.Tensor, str]:
        """The raw ``(13, H, W)`` uint16 array (SSL4EO order), target and id of sample ``index``."""
        loaded = self._payload(index)
        return loaded.array13, self._target(loaded), self.records[index].id

    def _target(self, loaded: Loaded) -> int | torch.Tensor:
        return target_value(loaded.target, len(self.classes), self.multilabel)

    def __getitem__(self, index: int) -> dict[str, Any]:
        loaded = self._payload(index)
        sample = make_sample(loaded.array13, self._target(loaded), self.records[index].id, self.level,
                             self.rgb_transform, self.ms_transform)
        sample.update({k: v.clone() for k, v in loaded.extras.items()})
        return sample


class RGBDataset(SampleDataset):
    """Reader of RGB image files; ``_load`` returns a PIL image."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self._payload(index)
        return {"rgb": rgb_output(image, self.rgb_transform), "target": self.target(index),
                "id": self.records[index].id}

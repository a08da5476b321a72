"""A task: a dataset spec, its prompts and its zero-shot head, and the CLIP model that scores it.

Both training stages, the zero-shot stage and ``python -m mtmg zeroshot`` open their data, resolve
their prompts and build their heads here, so there is one way of doing each:

- :func:`open_split`, :func:`held_out`, :func:`training_split`: splits of a :class:`~mtmg.core.config.DataSpec`
  from the dataset registry (the synthetic supported task included), a missing validation split carved
  from train (PAINT's rule);
- :func:`task_info`, :func:`head_for`: class names and templates (``prompt_key`` if set, else the
  dataset's own) and the cached frozen zero-shot head;
- :func:`load_clip_spec`, :func:`clip_identity`: a CLIP model of a :class:`~mtmg.core.config.ClipSpec` and what
  identifies its weights;
- :func:`score_zeroshot`: one CLIP model scored zero-shot on one split.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mtmg.core import paths
from mtmg.core.config import ClipSpec, DataSpec
from mtmg.models.clip import ClipBundle, ImageClassifier, ZeroShotHead, load_clip

PRIMARY_METRIC = {False: "top1", True: "macro_ap"}
"""The headline metric of single-label (False) and multi-label (True) tasks."""
MINICLIP = "miniclip"
HEADS = "heads"
"""Sub-folder of the cache folder that holds the zero-shot heads."""


# --- CLIP models -----------------------------------------------------------------------------------------

def clip_source(spec: ClipSpec, cache_dir: Path, device: torch.device | str = "cpu") -> str:
    """What ``load_clip`` gets for ``spec``: the MiniCLIP weights file (pretrained first if missing); without
    weights (``pretrained: null``) the file of a random initialisation drawn once with seed 0
    (:func:`mtmg.models.clip.random_init_file`, with a warning); else ``pretrained``."""
    if spec.pretrained == MINICLIP:
        from mtmg.method.miniclip import MiniClipConfig, ensure_miniclip

        return str(ensure_miniclip(cache_dir, MiniClipConfig(model_name=spec.name), device))
    if spec.pretrained is None:
        from mtmg.models.clip import random_init_file

        path = random_init_file(spec.name, cache_dir)
        warnings.warn(f"No pretrained weights given for {spec.name}: the model is a random initialisation "
                      f"(seed 0, kept in {path}).", UserWarning, stacklevel=2)
        return str(path)
    return spec.pretrained


def load_clip_spec(spec: ClipSpec, cache_dir: Path, device: torch.device | str = "cpu") -> ClipBundle:
    """Load ``spec``; ``pretrained: miniclip`` pretrains MiniCLIP (or reuses the cached weights)."""
    return load_clip(spec.name, clip_source(spec, cache_dir, device), device)


def clip_identity(spec: ClipSpec, cache_dir: Path | None = None) -> dict[str, Any]:
    """What identifies the weights of ``spec`` beyond its name: for MiniCLIP its cache key (it changes with
    the pretraining config and the scene generator) and the content hash of the weights file that
    :func:`clip_source` would load now (shipped, else cached in ``cache_dir``; none before pretraining),
    else a checkpoint file's size and time, or the tag itself; a model named by the path of its config file
    adds the file's content hash (:func:`mtmg.models.clip.config_file_model`)."""
    from mtmg.core.runstore import file_digest, weights_identity
    from mtmg.models.clip import config_file_model

    if spec.pretrained == MINICLIP:
        from mtmg.method.miniclip import MiniClipConfig, miniclip_path, shipped_weights

        config = MiniClipConfig(model_name=spec.name)
        found = shipped_weights(config) or miniclip_path(cache_dir or paths.cache_dir(), config)
        return {"name": spec.name, "miniclip": config.cache_key(),
                "sha256": file_digest(found) if found.is_file() else None}
    config_file = config_file_model(spec.name)
    return {"name": spec.name, **({"config": config_file[1]} if config_file else {}),
            **weights_identity(spec.pretrained)}


def cache_folder(configured: str | None) -> Path:
    """A config's ``cache_dir``, or the cache folder of :mod:`mtmg.core.paths`."""
    return paths.resolve(configured) if configured else paths.cache_dir()


# --- data ------------------------------------------------------------------------------------------------

def open_split(spec: DataSpec, split: str, rgb_transform: Any = None, ms_transform: Any = None) -> Dataset:
    """One split of ``spec`` from the dataset registry (:func:`mtmg.data.datasets.get_dataset`)."""
    from mtmg.data.datasets import get_dataset

    return get_dataset(spec.name, paths.resolve(spec.root), split, rgb_transform=rgb_transform,
                       ms_transform=ms_transform, **spec.options)


def held_out(spec: DataSpec, transform: Any, carve: tuple[float, int, int],
             ms_transform: Any = None) -> tuple[Dataset, Dataset | None]:
    """(validation, test) splits; without a validation split one is carved from train (PAINT rule)."""
    if spec.val_split is not None:
        val = open_split(spec, spec.val_split, transform, ms_transform)
    else:
        from mtmg.data.datasets import carve_validation

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
    from mtmg.data.datasets import carve_validation

    fraction, max_size, seed = carve
    return carve_validation(train, fraction=fraction, max_size=max_size, seed=seed)[0]


def maybe_in_memory(dataset: Dataset, enabled: bool, keys: tuple[str, ...], desc: str) -> Dataset:
    """``dataset`` loaded once into memory (``keys`` only) when ``enabled``; for deterministic transforms."""
    from mtmg.method.training import InMemoryDataset

    return InMemoryDataset(dataset, keys, desc) if enabled else dataset


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
    from torchvision.transforms import InterpolationMode, Resize

    return Resize((size, size), interpolation=InterpolationMode.BICUBIC, antialias=True)


# --- prompts and heads -----------------------------------------------------------------------------------

def task_info(spec: DataSpec, dataset: Dataset) -> tuple[list[str], list[str], bool]:
    """(class names, templates, multilabel) of a task: ``spec.prompt_key`` of :mod:`mtmg.data.prompts` if set,
    else the dataset's own (``prompts.for_dataset``)."""
    from mtmg.data import prompts

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
    from mtmg.models.zeroshot import zeroshot_head

    names, templates, multilabel = task_info(spec, dataset)
    head = zeroshot_head(bundle, names, templates, cache_dir=heads_dir, dataset=spec.name)
    return head.requires_grad_(False), multilabel


# --- zero-shot scoring -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ZeroShotScore:
    """One CLIP model scored zero-shot on one split: the prompts used and every metric of
    :func:`mtmg.evaluation.scoring.evaluate_zeroshot` (``metric`` names the headline one, ``value`` its value)."""

    spec: DataSpec
    split: str
    classes: list[str]
    classnames: list[str]
    templates: list[str]
    multilabel: bool
    n_samples: int
    metric: str
    value: float
    metrics: dict[str, Any]
    skipped: list[Any] = field(default_factory=list)
    """Files left out under ``on_error="skip"`` (:class:`mtmg.data.datasets.base.Skipped`: path, reason)."""


def score_zeroshot(bundle: ClipBundle, spec: DataSpec, split: str, *, heads_dir: Path | None,
                   device: torch.device | str = "cpu", batch_size: int = 256, num_workers: int = 0) -> ZeroShotScore:
    """Score ``bundle`` zero-shot on the RGB view of ``spec``'s ``split`` (``spec.options`` reach the
    reader: ``on_error``, ``split_file``, ...); prompts come from :func:`task_info`."""
    from mtmg.evaluation.scoring import evaluate_zeroshot

    device = torch.device(device)
    data = open_split(spec, split, bundle.preprocess_val)
    head, multilabel = head_for(bundle, spec, data, heads_dir)
    names, templates, _ = task_info(spec, data)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    metrics = evaluate_zeroshot(ImageClassifier(bundle.model.visual, head.to(device)), loader, "rgb",
                                multilabel, device, desc=f"zero-shot {spec.name}/{split}")
    n = int(metrics.pop("n_samples"))
    metric = PRIMARY_METRIC[multilabel]
    return ZeroShotScore(spec, split, list(data.classes), names, templates, multilabel, n, metric,
                         float(metrics[metric]), metrics, list(getattr(data, "skipped", [])))

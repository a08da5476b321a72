"""The CLIP a :class:`~mtmg.core.config.ClipSpec` names: MiniCLIP (pretrained on first use), a seeded
random initialisation (``pretrained: null``) or a weight reference, and what identifies those weights in
the run store's keys."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from mtmg.core import paths
from mtmg.core.config import ClipSpec
from mtmg.core.runstore import file_digest, weights_identity
from mtmg.method.miniclip import MiniClipConfig, ensure_miniclip, miniclip_path, shipped_weights
from mtmg.models.clip import ClipBundle, config_file_model, load_clip, random_init_file

MINICLIP = "miniclip"
"""The ``pretrained`` value that names MiniCLIP's weights."""


def clip_source(spec: ClipSpec, cache_dir: Path, device: torch.device | str = "cpu") -> str:
    """What ``load_clip`` gets for ``spec``: the MiniCLIP weights file (pretrained first if missing); without
    weights (``pretrained: null``) the file of a random initialisation drawn once with seed 0
    (:func:`mtmg.models.clip.random_init_file`, with a warning); else ``pretrained``."""
    if spec.pretrained == MINICLIP:
        return str(ensure_miniclip(cache_dir, MiniClipConfig(model_name=spec.name), device))
    if spec.pretrained is None:
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
    if spec.pretrained == MINICLIP:
        config = MiniClipConfig(model_name=spec.name)
        found = shipped_weights(config) or miniclip_path(cache_dir or paths.cache_dir(), config)
        return {"name": spec.name, "miniclip": config.cache_key(),
                "sha256": file_digest(found) if found.is_file() else None}
    config_file = config_file_model(spec.name)
    return {"name": spec.name, **({"config": config_file[1]} if config_file else {}),
            **weights_identity(spec.pretrained)}

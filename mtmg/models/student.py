"""The multispectral student: a timm ViT on 13 Sentinel-2 bands plus a projection to the teacher's width.

Input: the MS view of a patch, 13 bands in SSL4EO order, ``clamp(x / 10000, 0, 1)``, no CLIP
normalisation. Pretrained weights (SSL4EO-S12 MoCo, torchgeo ``ViTSmall16_Weights.SENTINEL2_ALL_MOCO``,
or a local file) are loaded with a strict key check: only the classification head may be missing
or unexpected.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

from mtmg.core import checkpoint, paths
from mtmg.core.config import StudentConfig

SSL4EO_MOCO = "ssl4eo_s2_moco"
HEAD_PREFIXES = ("head.",)


class WeightsMismatchError(ValueError):
    """A state dict whose keys or shapes do not fit the student backbone."""


class Student(nn.Module):
    """``proj(backbone(x))``: pooled backbone features projected to the teacher's embedding width."""

    def __init__(self, backbone: nn.Module, out_dim: int):
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Linear(backbone.num_features, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(x))


def load_backbone_weights(backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``backbone``; any missing, unexpected or mis-shaped key other than the
    classification head (``head.*``) raises :class:`WeightsMismatchError` naming ``source``."""
    own = backbone.state_dict()
    is_head = lambda k: k.startswith(HEAD_PREFIXES)  # noqa: E731
    missing = sorted(k for k in own if k not in state and not is_head(k))
    unexpected = sorted(k for k in state if k not in own and not is_head(k))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in own if k in state and not is_head(k) and state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        raise WeightsMismatchError(
            f"{source}: the weights do not fit the student backbone ({type(backbone).__name__}); "
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}, "
            f"shape mismatches {shapes[:8]}. Only the classification head may differ: use weights made "
            "for this architecture (student.arch, student.overrides, in_chans 13)")
    backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _ssl4eo_state_dict() -> dict[str, torch.Tensor]:
    from torchgeo.models import ViTSmall16_Weights  # imported here: torchgeo takes seconds to import

    weights = ViTSmall16_Weights.SENTINEL2_ALL_MOCO
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cached.is_file() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(
            f"SSL4EO-S12 MoCo weights are not cached at {cached} and HF_HUB_OFFLINE=1; download "
            f"{weights.url} to that path, or set student.weights to a local state-dict file")
    try:
        return weights.get_state_dict(progress=True)
    except Exception as exc:  # network errors vary by platform
        raise FileNotFoundError(
            f"could not download the SSL4EO-S12 MoCo weights from {weights.url} ({exc}); save the file to "
            f"{cached} or set student.weights to a local state-dict file") from exc


def read_weights(spec: str) -> dict[str, torch.Tensor]:
    """The backbone state dict named by ``spec``: ``ssl4eo_s2_moco`` or a file (``state_dict``/``model`` unwrapped)."""
    if spec == SSL4EO_MOCO:
        return _ssl4eo_state_dict()
    path = paths.resolve(spec)  # relative: from the project root, as in the run-store key
    if not path.is_file():
        raise FileNotFoundError(f"{path}: student weights not found; give a state-dict file or '{SSL4EO_MOCO}'")
    state = checkpoint.load(path, fix="download the weights file again, or give another state-dict file "
                                     f"or '{SSL4EO_MOCO}' as student.weights")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def build_student(cfg: StudentConfig, out_dim: int) -> Student:
    """A :class:`Student` with ``cfg.in_chans`` input bands, projecting to ``out_dim`` (``cfg.out_dim`` wins if set)."""
    backbone = timm.create_model(cfg.arch, pretrained=False, num_classes=0, in_chans=cfg.in_chans,
                                 drop_path_rate=cfg.drop_path, **cfg.overrides)
    if cfg.weights:
        load_backbone_weights(backbone, read_weights(cfg.weights), cfg.weights)
    else:
        warnings.warn(f"student {cfg.arch}: no weights given (student.weights), random initialisation",
                      stacklevel=2)
    return Student(backbone, cfg.out_dim or out_dim)

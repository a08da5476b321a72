"""The encoders that map a scene: the 13-band student on the MS view of a window, and patched and zero-shot
CLIP on the project's RGB composite of the same window (:mod:`mtmg.data.sentinel2`), with the text tower
and the prompts of the profile's task.

:func:`from_profile` takes them from a profile's finished stages 1 and 2 (running them first through
:func:`mtmg.runs.pipeline.ensure_align` when the run store has none); :class:`SceneEncoders` can also be built
from any towers (the tests use small untrained ones).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn

from mtmg.core import checkpoint
from mtmg.core.device import autocast, resolve_device
from mtmg.core.errors import ArgumentError
from mtmg.data.sentinel2 import Level, ms_view, read_band_metadata, rgb_composite
from mtmg.data.tasks import HEADS, ms_resize, open_split, task_info
from mtmg.method.alignment import load_student
from mtmg.method.patching import load_patched
from mtmg.models.clip import ClipBundle, ZeroShotHead, tower_copy
from mtmg.models.zeroshot import zeroshot_head
from mtmg.runs import pipeline

ENCODERS = ("student", "patched", "zeroshot")
"""Encoder names: the MS student, and CLIP's image tower patched (stage 1, selected α) and zero-shot."""
MODALITY = {"student": "ms", "patched": "rgb", "zeroshot": "rgb"}


@dataclass(frozen=True)
class Prompts:
    """Classes to map: ``classes`` (ids: file names, colours), ``names`` (what the text says) and
    ``templates`` (each holds ``{c}`` or ``{}``; ``["{}"]`` uses the names verbatim as prompts)."""

    classes: tuple[str, ...]
    names: tuple[str, ...]
    templates: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.classes:
            raise ArgumentError("the class list is empty; give at least one class name or prompt")
        if len(self.classes) != len(self.names):
            raise ArgumentError(f"{len(self.classes)} classes but {len(self.names)} class names")
        if len(set(self.classes)) != len(self.classes):
            raise ArgumentError(f"class names must be distinct, got {list(self.classes)}")

    def with_classes(self, names: Sequence[str]) -> Prompts:
        """Other class names, with these templates."""
        names = tuple(n.strip() for n in names if n.strip())
        return Prompts(names, names, self.templates)

    @classmethod
    def verbatim(cls, prompts: Sequence[str]) -> Prompts:
        """Free-text prompts, each one class, used as written."""
        prompts = tuple(p.strip() for p in prompts if p.strip())
        return cls(prompts, prompts, ("{}",))

    @classmethod
    def from_file(cls, path: str | Path) -> Prompts:
        """:meth:`verbatim` of a text file: one prompt a line, blank lines and ``#`` comments left out."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ArgumentError(f"{path}: cannot read the prompts file ({e}); give a UTF-8 text file with one "
                                "prompt a line") from e
        prompts = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not prompts:
            raise ArgumentError(f"{path}: the prompts file holds no prompt; write one prompt a line")
        return cls.verbatim(prompts)


@dataclass
class SceneEncoders:
    """Image encoders with what they need to read a window, and the text side that scores them.

    ``window``: the window size in pixels on the 10 m grid; ``ms_size``: the size the student's input is
    resized to (None: as read); ``band_record``: the student's band record (which bands it saw zero-filled).
    """

    bundle: ClipBundle
    towers: dict[str, nn.Module]
    prompts: Prompts
    window: int
    ms_size: int | None = None
    band_record: dict[str, Any] = field(default_factory=dict)
    heads_dir: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 64
    _ms_resize: Callable | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        unknown = [n for n in self.towers if n not in ENCODERS]
        if unknown:
            raise ArgumentError(f"unknown encoder(s) {unknown}; choose from {list(ENCODERS)}")
        self._ms_resize = ms_resize(self.ms_size)
        for tower in self.towers.values():
            tower.to(self.device).eval()

    def inputs(self, name: str, arrays: Sequence[np.ndarray], level: Level) -> torch.Tensor:
        """The batch encoder ``name`` sees for ``(13, H, W)`` windows: the MS view for the student, the
        CLIP-preprocessed RGB composite at the scene's level for the CLIP towers."""
        if MODALITY[name] == "ms":
            views = [ms_view(a) for a in arrays]
            if self._ms_resize is not None:
                views = [self._ms_resize(v) for v in views]
            return torch.stack(views)
        return torch.stack([self.bundle.preprocess_val(Image.fromarray(rgb_composite(a, level))) for a in arrays])

    @torch.no_grad()
    def embed(self, name: str, arrays: Sequence[np.ndarray], level: Level) -> torch.Tensor:
        """(N, D) float32 embeddings of windows by encoder ``name``."""
        x = self.inputs(name, arrays, level).to(self.device)
        with autocast(self.device):
            return self.towers[name](x).float().cpu()

    @torch.no_grad()
    def head(self, prompts: Prompts | None = None) -> ZeroShotHead:
        """The zero-shot head of ``prompts`` (default: the encoders' own), cached like the stages' heads."""
        p = prompts or self.prompts
        return zeroshot_head(self.bundle, list(p.names), list(p.templates), cache_dir=self.heads_dir,
                             dataset="scene").cpu()

    @torch.no_grad()
    def text(self, queries: Sequence[str]) -> torch.Tensor:
        """(Q, D) unit-norm text embeddings of free-text queries (used as written)."""
        model = self.bundle.model
        tokens = self.bundle.tokenizer(list(queries)).to(self.device)
        return model.encode_text(tokens, normalize=True).float().cpu()


def task_prompts(spec: Any) -> Prompts:
    """The classes, class names and templates of a profile's task (``DataSpec``), as its stages use them."""
    split = spec.test_split or spec.val_split or spec.train_split
    data = open_split(spec, split)
    names, templates, _ = task_info(spec, data)
    return Prompts(tuple(str(c) for c in data.classes), tuple(names), tuple(templates))


def window_size(prof: Any) -> int:
    """Window size in 10 m pixels: the student's input size (``align.ms_size`` when the stage resizes its MS
    input, else the ``img_size`` of the student architecture)."""
    if prof.align.ms_size:
        return int(prof.align.ms_size)
    cfg = prof.align.student
    size = cfg.overrides.get("img_size")
    if size is None:
        size = timm.get_pretrained_cfg(cfg.arch).input_size[-1]
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _names(names: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in ENCODERS]
    if unknown or not names:
        raise ArgumentError(f"encoder(s) {unknown or names}: choose from {list(ENCODERS)}")
    return names


def from_profile(prof: Any, names: Sequence[str] = ENCODERS, prompts: Prompts | None = None) -> SceneEncoders:
    """The encoders ``names`` of a profile's finished stages 1 and 2 (run first when missing)."""
    names = _names(names)
    patch_dir = pipeline.ensure_patch(prof).out_dir
    align_dir = pipeline.ensure_align(prof).out_dir if "student" in names else None
    return from_folders(prof, patch_dir, align_dir, names, prompts)


def from_folders(prof: Any, patch_dir: Path, align_dir: Path | None, names: Sequence[str] = ENCODERS,
                 prompts: Prompts | None = None) -> SceneEncoders:
    """The encoders ``names`` of given stage 1 and stage 2 folders (``align_dir`` only for the student), with
    the profile's student architecture, window, batch size and device."""
    names = _names(names)
    if "student" in names and align_dir is None:
        raise ArgumentError("the student needs its stage 2 folder (align_dir)")
    dev = resolve_device(prof.device)
    bundle, _ = load_patched(patch_dir, dev, prof.cache)
    towers: dict[str, nn.Module] = {}
    if "student" in names:
        towers["student"] = load_student(align_dir, prof.align.student)
    if "patched" in names:
        towers["patched"] = bundle.model.visual
    if "zeroshot" in names:
        towers["zeroshot"] = tower_copy(bundle.model.visual, checkpoint.load(patch_dir / "zeroshot.pt"))
    order = {n: towers[n] for n in ENCODERS if n in towers}
    return SceneEncoders(bundle, order, prompts or task_prompts(prof.patch.task), window_size(prof),
                         prof.align.ms_size, read_band_metadata(align_dir) if align_dir else {},
                         prof.cache / HEADS, dev, prof.align.eval_batch_size)


def mapping_classes(classes: Sequence[str]) -> Mapping[str, tuple[str, ...]]:
    """The classes of a task that the index check (:func:`mtmg.mapping.scenemap.index_check`) reads as water
    and as built-up (EuroSAT and BigEarthNet names; none for other class lists)."""
    water = [c for c in classes if c in WATER_CLASSES]
    built = [c for c in classes if c in BUILT_CLASSES]
    return {"water": tuple(water), "built": tuple(built)}


WATER_CLASSES = ("River", "SeaLake", "Inland waters", "Marine waters")
BUILT_CLASSES = ("Highway", "Industrial", "Residential", "Urban fabric", "Industrial or commercial units")

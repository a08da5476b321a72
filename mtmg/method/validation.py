"""Checks of stage-config values that need the registries (datasets, prompts, timm) or the file system.

:func:`mtmg.core.config.load_config` checks types and ranges; these check meaning: dataset names,
reader options, prompt keys, dataset roots, the student's architecture, ``timm`` overrides and weights.
Profiles run them when they are loaded (:func:`mtmg.runs.profiles.load_profile`, without roots: a
profile names folders that need not exist until a stage reads them) and the stages again before they
write anything, so a bad value fails naming its key (``where`` is the file or the config's prefix).
"""
from __future__ import annotations

import difflib
import inspect
import typing
import warnings
from collections.abc import Iterable
from typing import Any

from mtmg.core import paths
from mtmg.core.config import AlignConfig, DataSpec, PatchConfig, StudentConfig, ZeroShotConfig, convert
from mtmg.core.errors import ConfigError
from mtmg.data import prompts
from mtmg.data.datasets import DATASET_NAMES, dataset_class

READER_ARGUMENTS = ("self", "root", "split", "rgb_transform", "ms_transform")
"""Reader arguments the stages set themselves; every other keyword argument is an ``options`` key."""


def _suggest(name: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_dataset_name(name: Any, key: str) -> type:
    """The reader class registered under ``name``; a ConfigError naming ``key`` if there is none."""
    if not isinstance(name, str) or name not in DATASET_NAMES:
        raise ConfigError(f"{key}: unknown dataset {name!r}{_suggest(str(name), DATASET_NAMES)}; expected one of "
                          f"{', '.join(DATASET_NAMES)}")
    return dataset_class(name)


def check_spec(spec: DataSpec, key: str, *, roots: bool = True) -> None:
    """``spec``'s dataset name, ``options`` (keyword arguments of its reader, with their types), prompt key
    and, with ``roots``, its root folder."""
    reader = check_dataset_name(spec.name, f"{key}.name")
    params = {n: p for n, p in inspect.signature(reader).parameters.items() if n not in READER_ARGUMENTS}
    unknown = sorted(set(spec.options) - set(params))
    if unknown:
        raise ConfigError(f"{key}.options: unknown option(s) {unknown} for dataset {spec.name}; valid options: "
                          f"{sorted(params)}")
    try:
        hints = typing.get_type_hints(reader.__init__)
    except Exception:  # annotations that do not evaluate here: the types are then checked by the reader
        hints = {}
    for name, value in spec.options.items():
        if name in hints:
            convert(hints[name], value, f"{key}.options.{name}")
    if spec.prompt_key is not None and spec.prompt_key not in prompts.CLASSNAMES:
        raise ConfigError(f"{key}.prompt_key: unknown prompt set {spec.prompt_key!r}"
                          f"{_suggest(spec.prompt_key, prompts.CLASSNAMES)}; use one of {sorted(prompts.CLASSNAMES)} "
                          "or null (the dataset's own)")
    if roots and "root" in inspect.signature(reader).parameters and spec.name != "synthetic":
        root = paths.resolve(spec.root) if spec.root else None
        if root is None or not root.exists():
            raise ConfigError(f"{key}.root: {root or 'empty'}: no such folder; set {key}.root (or the notebook "
                              f"parameter data_roots={{'{spec.name}': PATH}}) to the folder of the {spec.name} data")


def check_student(cfg: StudentConfig, key: str = "student") -> None:
    """The student's timm architecture, its ``overrides`` (the model is built on the meta device, which
    takes no memory, or else on the CPU) and its weights (``ssl4eo_s2_moco``, an existing file or null)."""
    import timm  # imported here: timm takes seconds to import, and only a student config needs it
    import torch

    from mtmg.models.student import SSL4EO_MOCO

    if not timm.is_model(cfg.arch):
        raise ConfigError(f"{key}.arch: unknown timm model {cfg.arch!r}{_suggest(cfg.arch, timm.list_models())}; "
                          "see timm.list_models('vit_*')")
    for device in ("meta", "cpu"):  # some architectures call .item() while they are built: then on the CPU
        try:
            with torch.device(device), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                timm.create_model(cfg.arch, pretrained=False, num_classes=0, in_chans=cfg.in_chans,
                                  drop_path_rate=cfg.drop_path, **cfg.overrides)
            break
        except Exception as e:
            if device == "cpu":
                detail = " ".join(str(e).split())[:300] or type(e).__name__
                raise ConfigError(f"{key}.overrides: {cfg.arch} cannot be built with {cfg.overrides} ({detail}); "
                                  "use keyword arguments of timm.create_model for this architecture") from None
    if cfg.weights not in (None, SSL4EO_MOCO) and not paths.resolve(cfg.weights).is_file():
        raise ConfigError(f"{key}.weights: {paths.resolve(cfg.weights)}: no such file; give a state-dict file, "
                          f"'{SSL4EO_MOCO}' or null (random initialisation)")


def check_patch_config(cfg: PatchConfig, where: str = "patch", *, roots: bool = True) -> None:
    """Every check of this module on a stage 1 config."""
    check_spec(cfg.task, f"{where}.task", roots=roots)
    for i, spec in enumerate(cfg.supported):
        check_spec(spec, f"{where}.supported.{i}", roots=roots)


def check_align_config(cfg: AlignConfig, where: str = "align", *, roots: bool = True) -> None:
    """Every check of this module on a stage 2 config."""
    check_spec(cfg.data, f"{where}.data", roots=roots)
    for i, spec in enumerate(cfg.eval_sets):
        check_spec(spec, f"{where}.eval_sets.{i}", roots=roots)
    check_student(cfg.student, f"{where}.student")


def check_zeroshot_config(cfg: ZeroShotConfig, where: str = "zeroshot", *, roots: bool = True) -> None:
    """Every check of this module on a zero-shot stage config."""
    for name in ("tasks", "extra_tasks", "supported"):
        for i, spec in enumerate(getattr(cfg, name)):
            check_spec(spec, f"{where}.{name}.{i}", roots=roots)

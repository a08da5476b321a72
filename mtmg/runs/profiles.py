"""Profiles: the stage configs of ``configs/<profile>/`` with a notebook's parameters applied.

:func:`load_profile` reads ``patch.yaml`` and ``align.yaml`` (and ``zeroshot.yaml`` if present) of a
profile folder, applies the notebook parameters and dotted ``overrides``, and type- and range-checks
every value before anything runs. :func:`set_threads` sets torch's CPU threads; the stages run on the
number their configs fix (``threads``, part of every run's key), whatever the machine's load.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from mtmg.core import paths
from mtmg.core.config import (
    AlignConfig,
    DataSpec,
    EmbeddingsConfig,
    PatchConfig,
    ProbeConfig,
    ZeroShotConfig,
    from_dict,
    is_plain_name,
    load_config,
    read_yaml,
    to_dict,
)
from mtmg.core.device import resolve_device
from mtmg.core.errors import ArgumentError, ConfigError, ConfigKeyError
from mtmg.method import validation

C = TypeVar("C")

CONFIG_ROOT = paths.PROJECT_ROOT / "configs"
ZEROSHOT_CONFIG_FILE = "zeroshot.yaml"
PROBE_CONFIG_FILE = "probe.yaml"
OVERRIDE_PREFIXES = ("patch", "align", "zeroshot", "probe", "embeddings")
"""The stage configs a dotted override can change (``<prefix>.<key>``)."""


@dataclass(frozen=True)
class Profile:
    """The stage configs of one profile and the device to run on.

    ``embeddings`` are the settings of chapters 3-4's embeddings (:class:`~mtmg.core.config.EmbeddingsConfig`:
    the split, a cap on its items and the seed that fixes that subset, the example picks and the layouts).
    ``probe`` is the linear-probe stage as :func:`load_profile` read it (``configs/<name>/probe.yaml``;
    :func:`mtmg.runs.probe.load_probe_config` gives it its datasets).
    """

    name: str
    patch: PatchConfig
    align: AlignConfig
    zeroshot: ZeroShotConfig
    device: str = "auto"
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    probe: ProbeConfig = ProbeConfig()

    def __post_init__(self) -> None:
        _expect(is_plain_name(self.name), "name", self.name, "a plain profile name, not a path")
        _expect(isinstance(self.device, str), "device", self.device, "a device name such as auto, cpu or cuda")

    @property
    def threads(self) -> int:
        """The torch CPU threads the profile's stages run on (``threads`` of its stage configs)."""
        return self.patch.threads

    @property
    def run_dir(self) -> Path:
        """``runs/<profile>`` (or under ``MTMG_RUNS``)."""
        return paths.runs_dir() / self.name

    @property
    def cache(self) -> Path:
        """The cache folder of the profile (zero-shot heads, MiniCLIP weights, teacher embeddings)."""
        return paths.resolve(self.patch.cache_dir) if self.patch.cache_dir else paths.cache_dir()

    @property
    def embed_data(self) -> DataSpec:
        """The paired (RGB + MS) dataset of chapters 3 and 4: the first alignment evaluation set."""
        return self.align.eval_sets[0] if self.align.eval_sets else self.align.data

    def describe(self) -> dict[str, Any]:
        """Keyword arguments of :func:`mtmg.book.report.banner` for this profile."""
        clip = self.patch.clip
        weights = ("MiniCLIP weights pretrained by mtmg.method.miniclip on procedural scenes"
                   if clip.pretrained == "miniclip" else str(clip.pretrained))
        data = [_data_label(s, s.test_split or s.val_split) for s in unique_specs(
            (self.patch.task, *self.patch.supported, *self.zeroshot.tasks, *self.zeroshot.extra_tasks,
             self.align.data, *self.align.eval_sets))]
        student = self.align.student
        shape = student.overrides or {}
        name = (f"a ViT of {shape['depth']} layers, width {shape['embed_dim']}, {shape['img_size']} px input "
                f"(timm's `{student.arch}` resized by `student.overrides`)"
                if {"depth", "embed_dim", "img_size"} <= set(shape) else f"`{student.arch}`")
        student_text = f"{name}, {student.in_chans} bands, weights: {student.weights or 'random init'}"
        return {"profile": self.name, "model": clip.name, "weights": weights, "data": data,
                "device": str(resolve_device(self.device)), "student": student_text, "threads": self.threads}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expect(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ArgumentError(f"{key}: expected {expected}, got {value!r}")


def _data_label(spec: DataSpec, split: str | None) -> str:
    where = f" at `{spec.root}`" if spec.root else ""
    return f"{spec.name} ({split} split){where}"


def unique_specs(specs: Sequence[DataSpec]) -> tuple[DataSpec, ...]:
    """``specs`` without repeats of the same (name, root, options), first occurrence kept."""
    seen, out = set(), []
    for s in specs:
        key = (s.name, s.root, json.dumps(s.options, sort_keys=True))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return tuple(out)


def override(cfg: C, changes: Mapping[str, Any], where: str = "override") -> C:
    """A copy of the frozen config ``cfg`` with dotted-key ``changes`` (``"train.seed"``, ``"supported.0.root"``).

    The result is rebuilt with :func:`mtmg.core.config.from_dict`, so values are type- and range-checked.
    """
    data = to_dict(cfg)
    for key, value in changes.items():
        parts = key.split(".")
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigKeyError(f"{where}: {key!r}: {part!r} is not an index of a list of {len(node)} items")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                elif part in node and isinstance(node[part], (dict, list)):
                    node = node[part]
                else:
                    raise ConfigKeyError(f"{where}: {key!r}: no nested key {part!r}; valid keys: {sorted(node)}")
            else:
                raise ConfigKeyError(f"{where}: {key!r}: {'.'.join(parts[:i])} is not a mapping or list")
    return from_dict(type(cfg), data, where=where)


def _parameter_changes(cfg: Any, roots: Mapping[str, str], clip: Mapping[str, Any], eval_batch_size: int | None,
                       seed: int | None, train_batch_size: int | None, threads: int | None = None) -> dict[str, Any]:
    """The notebook parameters shared by all stage configs, as dotted changes of ``cfg``."""
    changes: dict[str, Any] = {} if threads is None else {"threads": threads}
    for name in ("task", "data"):
        if hasattr(cfg, name) and getattr(cfg, name).name in roots:
            changes[f"{name}.root"] = roots[getattr(cfg, name).name]
    for name in ("supported", "eval_sets", "tasks", "extra_tasks"):
        for i, spec in enumerate(getattr(cfg, name, ())):
            if spec.name in roots:
                changes[f"{name}.{i}.root"] = roots[spec.name]
    if hasattr(cfg, "clip"):
        changes.update({f"clip.{k}": v for k, v in clip.items()})
    if eval_batch_size is not None:
        changes["eval_batch_size" if hasattr(cfg, "eval_batch_size") else "batch_size"] = eval_batch_size
    if hasattr(cfg, "train"):
        changes.update({f"train.{k}": v for k, v in (("seed", seed), ("batch_size", train_batch_size))
                        if v is not None})
    return changes


def derived_zeroshot_config(patch: PatchConfig, align: AlignConfig) -> ZeroShotConfig:
    """The zero-shot stage derived from the other two: the patching task and the alignment evaluation
    sets as remote-sensing tasks, the patching stage's supported tasks, its CLIP and batch size."""
    return ZeroShotConfig(profile=patch.profile, clip=patch.clip, tasks=unique_specs((patch.task, *align.eval_sets)),
                          supported=patch.supported, batch_size=patch.eval_batch_size,
                          num_workers=patch.train.num_workers, threads=patch.threads, cache_dir=patch.cache_dir)


def profile_folder(profile: str) -> Path:
    """``configs/<profile>`` for a profile name, or the folder ``profile`` names."""
    folder = Path(profile) if Path(profile).is_dir() and profile not in ("default", "paper") else CONFIG_ROOT / profile
    if not folder.is_dir():
        known = sorted(p.name for p in CONFIG_ROOT.iterdir() if p.is_dir()) if CONFIG_ROOT.is_dir() else []
        raise FileNotFoundError(f"{folder}: no such profile folder; use one of {known} or a folder holding "
                                "patch.yaml and align.yaml")
    return folder


def load_profile(profile: str = "default", *, device: str = "auto", data_roots: Mapping[str, str] | None = None,
                 clip_model: str | None = None, clip_weights: str | None = None,
                 eval_batch_size: int | None = None, train_batch_size: int | None = None, seed: int | None = None,
                 threads: int | None = None, overrides: Mapping[str, Any] | None = None) -> Profile:
    """Read ``configs/<profile>/`` (or a folder path) into a :class:`Profile`.

    ``data_roots`` maps dataset names to folders (every config naming that dataset uses it);
    ``clip_model`` / ``clip_weights`` replace the CLIP model and its weights (``clip_model`` is an open_clip
    model name or the path of an open_clip model-config JSON file, relative paths from the project root;
    the file's content is then part of the runs' keys); ``eval_batch_size``, ``train_batch_size`` and
    ``seed`` apply to every stage that has them; ``threads`` (None: the configs' own) sets the torch CPU
    threads of every stage (another number gives other run keys, so its runs live in their own folders).
    ``overrides`` takes dotted keys prefixed by ``patch.``, ``align.``, ``zeroshot.``, ``probe.`` or
    ``embeddings.`` (e.g. ``{"align.train.epochs": 5}``, ``{"probe.seeds": [0]}``,
    ``{"embeddings.max_items": 20}``). ``configs/<profile>/zeroshot.yaml``, if present,
    changes keys of the derived zero-shot stage (e.g. ``extra_tasks``); ``probe.yaml`` holds the probe's.
    Every value is type- and range-checked here, so a wrong parameter fails before any stage writes a file.
    """
    _expect(isinstance(profile, str), "profile", profile, "a profile name or folder")
    _expect(data_roots is None or (isinstance(data_roots, Mapping) and all(
        isinstance(k, str) and isinstance(v, (str, Path)) for k, v in data_roots.items())),
        "data_roots", data_roots, "a mapping of dataset names to folders")
    for key, value in (("clip_model", clip_model), ("clip_weights", clip_weights)):
        _expect(value is None or isinstance(value, str), key, value, "a string or None")
    for key, value in (("eval_batch_size", eval_batch_size), ("train_batch_size", train_batch_size)):
        _expect(value is None or (_is_int(value) and value >= 1), key, value, "an integer >= 1 or None")
    _expect(seed is None or (_is_int(seed) and seed >= 0), "seed", seed, "an integer >= 0 or None")
    _expect(threads is None or (_is_int(threads) and threads >= 1), "threads", threads, "an integer >= 1 or None")
    _expect(overrides is None or isinstance(overrides, Mapping), "overrides", overrides, "a mapping of dotted keys")
    if clip_model is not None:
        from mtmg.models.clip import config_file_model  # imported here: open_clip takes seconds to import

        config_file_model(clip_model)  # a config file that is missing or invalid fails here
    folder = profile_folder(profile)
    patch = load_config(folder / "patch.yaml", PatchConfig)
    align = load_config(folder / "align.yaml", AlignConfig)
    if patch.profile != align.profile:
        raise ConfigError(f"{folder}: patch.yaml says profile {patch.profile!r}, align.yaml {align.profile!r}; "
                          "both stages of a profile must name the same profile")
    zs_file = folder / ZEROSHOT_CONFIG_FILE
    zs_changes = (read_yaml(zs_file) or {}) if zs_file.is_file() else {}
    if not isinstance(zs_changes, dict):
        raise ConfigError(f"{zs_file}: expected a mapping of zero-shot config keys")
    probe_file = folder / PROBE_CONFIG_FILE
    probe = load_config(probe_file, ProbeConfig) if probe_file.is_file() else ProbeConfig()

    roots = {k: str(v) for k, v in (data_roots or {}).items()}
    for name in roots:  # a misspelt name would silently leave the configured folder in use
        validation.check_dataset_name(name, f"data_roots[{name!r}]")
    clip = {k: v for k, v in (("name", clip_model), ("pretrained", clip_weights)) if v is not None}
    groups: dict[str, dict[str, Any]] = {name: {} for name in OVERRIDE_PREFIXES}
    for key, value in (overrides or {}).items():
        head, _, rest = key.partition(".")
        if head not in groups or not rest:
            raise ConfigKeyError(f"override {key!r}: prefix it with one of "
                                 f"{', '.join(p + '.' for p in OVERRIDE_PREFIXES)} (e.g. align.train.epochs)")
        groups[head][rest] = value

    def changed(cfg: C, name: str) -> C:  # the notebook parameters, then the overrides of the same stage
        params = _parameter_changes(cfg, roots, clip if name != "align" else {}, eval_batch_size, seed,
                                    train_batch_size, threads)
        return override(cfg, {**params, **groups[name]}, name)

    patch, align = changed(patch, "patch"), changed(align, "align")
    zeroshot = derived_zeroshot_config(patch, align)  # from the final stages 1 and 2: their CLIP and data
    if zs_changes:
        zeroshot = from_dict(ZeroShotConfig, {**to_dict(zeroshot), **zs_changes}, where=str(zs_file))
    zeroshot = changed(zeroshot, "zeroshot")
    probe = override(probe, groups["probe"], "probe")
    embeddings = override(EmbeddingsConfig(), groups["embeddings"], "embeddings")
    if patch.profile != align.profile:  # also after the overrides
        raise ConfigError(f"overrides: patch.profile {patch.profile!r} and align.profile {align.profile!r} differ; "
                          "both stages of a profile must name the same profile")
    validation.check_patch_config(patch, "patch", roots=False)
    validation.check_align_config(align, "align", roots=False)
    validation.check_zeroshot_config(zeroshot, "zeroshot", roots=False)
    for i, spec in enumerate(probe.datasets):
        validation.check_spec(spec, f"probe.datasets.{i}", roots=False)
    return Profile(name=patch.profile, patch=patch, align=align, zeroshot=zeroshot, device=device,
                   embeddings=embeddings, probe=probe)


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads for torch in this process (None keeps the current setting); returns
    the number in use. Notebooks pass their profile's :attr:`Profile.threads`."""
    if threads is not None:
        _expect(_is_int(threads) and threads >= 1, "threads", threads, "a positive number of CPU threads")
        torch.set_num_threads(threads)
    return torch.get_num_threads()

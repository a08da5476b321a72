"""The stages behind the book's chapters, each reusing what an earlier run left in ``runs/<profile>/``.

A *profile* is a folder of stage configs, ``configs/default`` (the embedded miniature) or
``configs/paper``; :func:`load_profile` reads it into a :class:`Profile`. The ``ensure_*`` functions
return a stage's outputs, running the stage first when they are missing or stale:

- :func:`ensure_zeroshot`: zero-shot CLIP on every dataset (``runs/<profile>/zeroshot``);
- :func:`ensure_patch`: :func:`mtmg.patching.run_patching` (``runs/<profile>/patch``);
- :func:`ensure_align`: :func:`mtmg.alignment.run_alignment` (``runs/<profile>/align``);
- :func:`ensure_embeddings`: text, RGB and MS test embeddings (``runs/<profile>/embeddings``);
- :func:`ensure_layout`: their joint 2-D UMAP or PCA layout (cached beside them);
- :func:`ensure_patched_zeroshot`: patched CLIP on every dataset (``runs/<profile>/zeroshot_patched``).

Each stage folder holds a ``pipeline.json`` with a fingerprint of the stage's config, of the library
code it runs and of the stage outputs it reads; a different fingerprint means the outputs are stale
and the stage runs again. Outputs of ``python -m mtmg patch`` / ``align`` left without a
``pipeline.json`` are adopted when their ``config.yaml`` equals the profile's config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
import yaml

from mtmg import __version__, checkpoint, paths
from mtmg.config import AlignConfig, ClipSpec, DataSpec, PatchConfig, from_dict, load_config, to_dict

C = TypeVar("C")

CONFIG_ROOT = paths.PROJECT_ROOT / "configs"
STATUS_FILE = "pipeline.json"
ZEROSHOT_CONFIG_FILE = "zeroshot.yaml"
EXTRA_ZEROSHOT: dict[str, tuple[DataSpec, ...]] = {
    "paper": (DataSpec(name="resisc45", root="data/resisc45"),
              DataSpec(name="bigearthnet5", root="data/bigearthnet"),
              DataSpec(name="bigearthnet43", root="data/bigearthnet")),
}
"""Zero-shot datasets of a profile beyond its patching, supported and alignment-evaluation sets."""


@dataclass(frozen=True)
class ZeroShotConfig:
    """Chapter 1's stage: one CLIP model scored zero-shot on remote-sensing ``tasks`` (RGB view)
    and on the ``supported`` tasks it already does well; each on its test split (else validation)."""

    profile: str = "default"
    clip: ClipSpec = ClipSpec()
    tasks: tuple[DataSpec, ...] = ()
    supported: tuple[DataSpec, ...] = ()
    batch_size: int = 256
    num_workers: int = 0
    cache_dir: str | None = None


@dataclass(frozen=True)
class Profile:
    """The stage configs of one profile, the device to run on and the chapter 3-4 embedding settings.

    ``embed_max`` caps the number of test items embedded for the gap analysis (a fixed random
    subset of larger test sets); ``seed`` fixes that subset, the example picks and the layouts.
    """

    name: str
    patch: PatchConfig
    align: AlignConfig
    zeroshot: ZeroShotConfig
    device: str = "auto"
    embed_split: str = "test"
    embed_max: int = 2000
    seed: int = 0

    @property
    def run_dir(self) -> Path:
        """``runs/<profile>`` (or under ``MTMG_RUNS``)."""
        return paths.runs_dir() / self.name

    @property
    def cache(self) -> Path:
        """The cache folder of the profile (zero-shot heads, MiniCLIP weights)."""
        return paths.resolve(self.patch.cache_dir) if self.patch.cache_dir else paths.cache_dir()

    @property
    def embed_data(self) -> DataSpec:
        """The paired (RGB + MS) dataset of chapters 3 and 4: the first alignment evaluation set."""
        return self.align.eval_sets[0] if self.align.eval_sets else self.align.data

    def stage_dir(self, stage: str) -> Path:
        """Output folder of ``stage`` (``zeroshot``, ``patch``, ``align``, ``embeddings``, ...)."""
        from mtmg.patching import stage_dir

        configured = {"patch": self.patch.out_dir, "align": self.align.out_dir}.get(stage)
        return stage_dir(self.name, stage, None, configured)

    def describe(self) -> dict[str, Any]:
        """Keyword arguments of :func:`mtmg.report.banner` for this profile."""
        from mtmg.device import resolve_device

        clip = self.patch.clip
        weights = ("MiniCLIP weights pretrained by mtmg.miniclip on procedural scenes"
                   if clip.pretrained == "miniclip" else str(clip.pretrained))
        data = [_data_label(s, s.test_split or s.val_split) for s in _unique(
            (self.patch.task, *self.patch.supported, *self.zeroshot.tasks, self.align.data, *self.align.eval_sets))]
        student = self.align.student
        student_text = f"{student.arch} ({student.in_chans} bands, weights: {student.weights or 'random init'})"
        return {"profile": self.name, "model": clip.name, "weights": weights, "data": data,
                "device": str(resolve_device(self.device)), "student": student_text}


def _data_label(spec: DataSpec, split: str | None) -> str:
    where = f" at `{spec.root}`" if spec.root else ""
    return f"{spec.name} ({split} split){where}"


def _unique(specs: Sequence[DataSpec]) -> tuple[DataSpec, ...]:
    """``specs`` without repeats of the same (name, root, options), first occurrence kept."""
    seen, out = set(), []
    for s in specs:
        key = (s.name, s.root, json.dumps(s.options, sort_keys=True))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return tuple(out)


# --- profiles --------------------------------------------------------------------------------------------

def override(cfg: C, changes: Mapping[str, Any], where: str = "override") -> C:
    """A copy of the frozen config ``cfg`` with dotted-key ``changes`` (``"train.seed"``, ``"supported.0.root"``).

    The result is rebuilt with :func:`mtmg.config.from_dict`, so values are type-checked.
    """
    data = to_dict(cfg)
    for key, value in changes.items():
        parts = key.split(".")
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise KeyError(f"{where}: {key!r}: {part!r} is not an index of a list of {len(node)} items")
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
                    raise KeyError(f"{where}: {key!r}: no nested key {part!r}; valid keys: {sorted(node)}")
            else:
                raise KeyError(f"{where}: {key!r}: {'.'.join(parts[:i])} is not a mapping or list")
    return from_dict(type(cfg), data, where=where)


def _with_roots(specs: Sequence[DataSpec], roots: Mapping[str, str]) -> tuple[DataSpec, ...]:
    return tuple(dataclasses.replace(s, root=str(roots[s.name])) if s.name in roots else s for s in specs)


def _common_overrides(cfg: Any, data_roots: Mapping[str, str], clip: dict[str, Any],
                      eval_batch_size: int | None, seed: int | None, train_batch_size: int | None = None) -> Any:
    """Apply the notebook parameters shared by all stage configs to ``cfg``."""
    changes: dict[str, Any] = {}
    for name in ("task", "data"):
        if hasattr(cfg, name):
            changes[name] = _with_roots([getattr(cfg, name)], data_roots)[0]
    for name in ("supported", "eval_sets", "tasks"):
        if hasattr(cfg, name):
            changes[name] = _with_roots(getattr(cfg, name), data_roots)
    if hasattr(cfg, "clip") and clip:
        changes["clip"] = dataclasses.replace(cfg.clip, **clip)
    if eval_batch_size is not None:
        changes["eval_batch_size" if hasattr(cfg, "eval_batch_size") else "batch_size"] = eval_batch_size
    if hasattr(cfg, "train"):
        train = {k: v for k, v in (("seed", seed), ("batch_size", train_batch_size)) if v is not None}
        changes["train"] = dataclasses.replace(cfg.train, **train)
    return dataclasses.replace(cfg, **changes)


def default_zeroshot_config(name: str, patch: PatchConfig, align: AlignConfig) -> ZeroShotConfig:
    """The zero-shot stage derived from the other two: the patching task, the alignment evaluation
    sets and :data:`EXTRA_ZEROSHOT` as remote-sensing tasks; the patching stage's supported tasks."""
    return ZeroShotConfig(profile=name, clip=patch.clip,
                          tasks=_unique((patch.task, *align.eval_sets, *EXTRA_ZEROSHOT.get(name, ()))),
                          supported=patch.supported, batch_size=patch.eval_batch_size,
                          num_workers=patch.train.num_workers, cache_dir=patch.cache_dir)


def load_profile(profile: str = "default", *, device: str = "auto", data_roots: Mapping[str, str] | None = None,
                 clip_model: str | None = None, clip_weights: str | None = None,
                 eval_batch_size: int | None = None, train_batch_size: int | None = None, seed: int | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Profile:
    """Read ``configs/<profile>/`` (or a folder path) into a :class:`Profile`.

    ``data_roots`` maps dataset names to folders (every config naming that dataset uses it);
    ``clip_model`` / ``clip_weights`` replace the CLIP model and its weights; ``eval_batch_size``,
    ``train_batch_size`` and ``seed`` apply to every stage that has them. ``overrides`` takes dotted keys prefixed by ``patch.``, ``align.``
    or ``zeroshot.`` (e.g. ``{"align.train.epochs": 5}``) or naming a :class:`Profile` field
    (``embed_max``). ``configs/<profile>/zeroshot.yaml``, if present, replaces the derived zero-shot stage.
    """
    folder = Path(profile) if Path(profile).is_dir() and profile not in ("default", "paper") else CONFIG_ROOT / profile
    if not folder.is_dir():
        known = sorted(p.name for p in CONFIG_ROOT.iterdir() if p.is_dir()) if CONFIG_ROOT.is_dir() else []
        raise FileNotFoundError(f"{folder}: no such profile folder; use one of {known} or a folder holding "
                                "patch.yaml and align.yaml")
    patch = load_config(folder / "patch.yaml", PatchConfig)
    align = load_config(folder / "align.yaml", AlignConfig)
    if patch.profile != align.profile:
        raise ValueError(f"{folder}: patch.yaml says profile {patch.profile!r}, align.yaml {align.profile!r}; "
                         "both stages of a profile must name the same profile")
    name = patch.profile
    roots = dict(data_roots or {})
    clip = {k: v for k, v in (("name", clip_model), ("pretrained", clip_weights)) if v is not None}
    patch = _common_overrides(patch, roots, clip, eval_batch_size, seed, train_batch_size)
    align = _common_overrides(align, roots, {}, eval_batch_size, seed, train_batch_size)
    zs_file = folder / ZEROSHOT_CONFIG_FILE
    if zs_file.is_file():
        zeroshot = _common_overrides(load_config(zs_file, ZeroShotConfig), roots, clip, eval_batch_size, None)
    else:
        zeroshot = default_zeroshot_config(name, patch, align)
    groups: dict[str, dict[str, Any]] = {"patch": {}, "align": {}, "zeroshot": {}, "profile": {}}
    for key, value in (overrides or {}).items():
        head, _, rest = key.partition(".")
        if head in ("patch", "align", "zeroshot") and rest:
            groups[head][rest] = value
        elif key in {f.name for f in dataclasses.fields(Profile)} - {"name", "patch", "align", "zeroshot"}:
            groups["profile"][key] = value
        else:
            raise KeyError(f"override {key!r}: prefix it with patch., align. or zeroshot., or name a profile "
                           "field (device, embed_split, embed_max, seed)")
    patch = override(patch, groups["patch"], "patch override") if groups["patch"] else patch
    align = override(align, groups["align"], "align override") if groups["align"] else align
    if groups["zeroshot"]:
        zeroshot = override(zeroshot, groups["zeroshot"], "zeroshot override")
    prof = Profile(name=name, patch=patch, align=align, zeroshot=zeroshot, device=device, **groups["profile"])
    teacher = prof.stage_dir("patch") if align.teacher_dir is None else paths.resolve(align.teacher_dir)
    if teacher != prof.stage_dir("patch"):
        raise ValueError(f"{folder}: align.yaml reads its teacher from {teacher} but patch.yaml writes to "
                         f"{prof.stage_dir('patch')}; set teacher_dir and out_dir to the same folder")
    return prof


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads for torch in this process (None keeps the current setting); returns
    the number in use. One thread is the fastest for the miniature on a machine shared with other jobs."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be a positive number of CPU threads, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# --- stage bookkeeping -----------------------------------------------------------------------------------

def fingerprint(stage: str, config: Any, upstream: Sequence[str] = ()) -> str:
    """Hash of a stage's config (a dataclass or plain data), the fingerprints it depends on and the version."""
    data = to_dict(config) if dataclasses.is_dataclass(config) else config
    payload = json.dumps({"stage": stage, "config": data, "upstream": list(upstream), "version": __version__},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def clip_identity(spec: ClipSpec) -> dict[str, Any]:
    """What identifies the weights of ``spec`` beyond its name: MiniCLIP's cache key (it changes with the
    pretraining config and the scene generator), a checkpoint file's size and time, or the tag itself."""
    if spec.pretrained == "miniclip":
        from mtmg.miniclip import MiniClipConfig

        return {"miniclip": MiniClipConfig(model_name=spec.name).cache_key()}
    path = paths.resolve(spec.pretrained) if spec.pretrained else None
    if path is not None and path.is_file():
        stat = path.stat()
        return {"file": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"tag": spec.pretrained}


_COMMON_CODE = ("models.py", "zeroshot.py", "evaluation.py", "embeddings.py", "metrics.py", "device.py",
                "sentinel2.py", "prompts.py", "synthetic.py", "datasets")
_TRAIN_CODE = ("patching.py", "training.py", "augment.py", "checkpoint.py", "config.py")
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "zeroshot": _COMMON_CODE + ("patching.py",),
    "patch": _COMMON_CODE + _TRAIN_CODE,
    "align": _COMMON_CODE + _TRAIN_CODE + ("alignment.py", "student.py"),
    "embeddings": _COMMON_CODE + ("patching.py", "checkpoint.py", "student.py"),
}
"""The library files (relative to the package) whose code each stage's outputs depend on."""


def code_hash(stage: str) -> str:
    """Hash of the source of the modules a stage runs (:data:`STAGE_CODE`) and of this module's function
    for it, so that outputs made by other code are stale."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in STAGE_CODE[stage]:
        files = sorted((package / name).rglob("*.py")) if (package / name).is_dir() else [package / name]
        for file in files:
            digest.update(file.relative_to(package).as_posix().encode() + b"\0" + file.read_bytes())
    own = {"zeroshot": run_zeroshot, "embeddings": compute_embeddings}.get(stage)
    if own is not None:
        import inspect

        digest.update(inspect.getsource(own).encode())
    return digest.hexdigest()[:16]


def read_status(out_dir: Path) -> dict[str, Any] | None:
    """The ``pipeline.json`` of a stage folder, or None."""
    path = Path(out_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_status(out_dir: Path, stage: str, fp: str, seconds: float | None, note: str = "") -> None:
    """Record that ``out_dir`` holds complete outputs of ``stage`` under fingerprint ``fp``."""
    status = {"stage": stage, "fingerprint": fp, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
              "run": uuid.uuid4().hex[:12], "seconds": None if seconds is None else round(seconds, 1), "note": note}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / STATUS_FILE).write_text(json.dumps(status, indent=2) + "\n")


def is_current(out_dir: Path, fp: str, required: Sequence[str]) -> bool:
    """True when every ``required`` file exists in ``out_dir`` and its status has fingerprint ``fp``."""
    status = read_status(out_dir)
    return (status is not None and status.get("fingerprint") == fp
            and all((Path(out_dir) / name).is_file() for name in required))


def run_id(out_dir: Path) -> str:
    """Identity of the outputs in a stage folder (fingerprint and a token drawn when they were written);
    dependants hash it, so they run again whenever the stage they read from ran again."""
    status = read_status(out_dir)
    if status is None:
        raise FileNotFoundError(f"{Path(out_dir) / STATUS_FILE}: stage outputs not recorded; run the stage first")
    return f"{status['fingerprint']}@{status.get('run', status['finished'])}"


def _adoptable(out_dir: Path, cfg: Any, required: Sequence[str], after: Path | None) -> bool:
    """Outputs of a command-line run (no status file) whose ``config.yaml`` equals ``cfg``, finished
    after the file ``after`` (the upstream stage's outputs) was written."""
    out_dir = Path(out_dir)
    run_file, config_file = out_dir / "run.json", out_dir / "config.yaml"
    if read_status(out_dir) is not None or not run_file.is_file() or not config_file.is_file():
        return False
    if after is not None and (not after.is_file() or run_file.stat().st_mtime < after.stat().st_mtime):
        return False
    return (yaml.safe_load(config_file.read_text()) == to_dict(cfg)
            and all((out_dir / name).is_file() for name in required))


def _ensure(stage: str, out_dir: Path, fp: str, required: Sequence[str], run: Any, force: bool,
            cfg: Any = None, after: Path | None = None) -> bool:
    """Run ``run()`` unless ``out_dir`` is current; returns True when the stage ran.

    With ``cfg``, outputs of a command-line run of the same config are adopted (see :func:`_adoptable`).
    """
    if not force and is_current(out_dir, fp, required):
        return False
    if not force and cfg is not None and _adoptable(out_dir, cfg, required, after):
        write_status(out_dir, stage, fp, None, "adopted from a command-line run with the same config")
        return False
    t0 = time.perf_counter()
    run()
    missing = [name for name in required if not (Path(out_dir) / name).is_file()]
    if missing:
        raise RuntimeError(f"stage {stage} finished but {out_dir} lacks {missing}")
    write_status(out_dir, stage, fp, time.perf_counter() - t0)
    return True


# --- stage 0: zero-shot ----------------------------------------------------------------------------------

ZEROSHOT_FILES = ("results.json", "results.csv")


def zeroshot_fingerprint(prof: Profile) -> str:
    """Fingerprint of the zero-shot stage: its config and the identity of the CLIP weights."""
    return fingerprint("zeroshot", prof.zeroshot, [json.dumps(clip_identity(prof.zeroshot.clip)),
                                                   code_hash("zeroshot")])


def run_zeroshot(cfg: ZeroShotConfig, out_dir: Path, *, device: str = "auto",
                 visual_state: Mapping[str, torch.Tensor] | None = None, tower: str = "zero-shot") -> dict[str, Any]:
    """Score ``cfg.clip`` (its image tower replaced by ``visual_state`` if given) zero-shot on every
    dataset of ``cfg``; write ``results.json`` (per-class scores, confusion matrices) and ``results.csv``."""
    from torch.utils.data import DataLoader

    from mtmg.device import resolve_device
    from mtmg.evaluation import evaluate_zeroshot
    from mtmg.models import ImageClassifier
    from mtmg.patching import PRIMARY_METRIC, head_for, load_clip_spec, open_split, task_info

    dev = resolve_device(device)
    cache = paths.resolve(cfg.cache_dir) if cfg.cache_dir else paths.cache_dir()
    bundle = load_clip_spec(cfg.clip, cache, dev)
    if visual_state is not None:
        bundle.model.visual.load_state_dict(visual_state)
    entries = []
    for role, specs in (("remote sensing", cfg.tasks), ("supported", cfg.supported)):
        for spec in specs:
            split = spec.test_split or spec.val_split or spec.train_split
            data = open_split(spec, split, bundle.preprocess_val)
            head, multilabel = head_for(bundle, spec, data, cache)
            names, templates, _ = task_info(spec, data)
            loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
                                pin_memory=dev.type == "cuda")
            result = evaluate_zeroshot(ImageClassifier(bundle.model.visual, head.to(dev)), loader, "rgb",
                                       multilabel, dev, desc=f"zero-shot {spec.name}/{split}")
            metric = PRIMARY_METRIC[multilabel]
            entries.append({
                "dataset": spec.name, "root": spec.root, "split": split, "role": role,
                "multilabel": multilabel, "classes": list(data.classes), "classnames": names,
                "templates": templates, "n_samples": result["n_samples"], "metric": metric,
                "value": float(result[metric]), "chance": None if multilabel else 1.0 / len(names),
                "per_class": [None if np.isnan(v) else float(v)
                              for v in result["per_class_ap" if multilabel else "per_class_accuracy"]],
                "confusion_matrix": result.get("confusion_matrix"),
            })
    results = {"profile": cfg.profile, "model": bundle.model_name, "weights": bundle.weights, "tower": tower,
               "device": str(dev), "datasets": entries}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    pd.DataFrame([{k: e[k] for k in ("dataset", "role", "split", "n_samples", "metric", "value", "chance")}
                  for e in entries]).to_csv(out_dir / "results.csv", index=False)
    return results


def ensure_zeroshot(prof: Profile, *, force: bool = False) -> dict[str, Any]:
    """Chapter 1: zero-shot scores of the profile's CLIP on every dataset (``runs/<profile>/zeroshot``)."""
    out = prof.stage_dir("zeroshot")
    _ensure("zeroshot", out, zeroshot_fingerprint(prof), ZEROSHOT_FILES,
            lambda: run_zeroshot(prof.zeroshot, out, device=prof.device), force)
    return json.loads((out / "results.json").read_text())


# --- stage 1: patching -----------------------------------------------------------------------------------

PATCH_FILES = ("selected_alpha.json", "scores.csv", "patched.pt", "zeroshot.pt", "clip.json")


@dataclass(frozen=True)
class PatchOutputs:
    """What stage 1 left in its folder: the scores table, the selected α and the training log."""

    out_dir: Path
    alpha: float
    paper_alpha: float
    criterion: str
    scores: pd.DataFrame
    log: pd.DataFrame | None
    run: dict[str, Any] = field(default_factory=dict)


def patch_fingerprint(prof: Profile) -> str:
    """Fingerprint of stage 1: its config and the identity of the CLIP weights."""
    return fingerprint("patch", prof.patch, [json.dumps(clip_identity(prof.patch.clip)), code_hash("patch")])


def read_log(path: Path) -> pd.DataFrame | None:
    """The CSV log :func:`mtmg.training.fit` writes, or None when the file is absent."""
    return pd.read_csv(path) if Path(path).is_file() else None


def load_patch_outputs(out_dir: Path) -> PatchOutputs:
    """Read a finished stage 1 folder."""
    from mtmg.training import LOG

    out_dir = Path(out_dir)
    selected = json.loads((out_dir / "selected_alpha.json").read_text())
    run = json.loads((out_dir / "run.json").read_text()) if (out_dir / "run.json").is_file() else {}
    return PatchOutputs(out_dir, float(selected["alpha"]), float(selected.get("paper_alpha", 0.5)),
                        str(selected.get("criterion", "")), pd.read_csv(out_dir / "scores.csv"),
                        read_log(out_dir / "finetune" / LOG), run)


def ensure_patch(prof: Profile, *, force: bool = False) -> PatchOutputs:
    """Chapter 2: PAINT patching (``runs/<profile>/patch``), run with :func:`mtmg.patching.run_patching`."""
    from mtmg.patching import run_patching

    out = prof.stage_dir("patch")
    _ensure("patch", out, patch_fingerprint(prof), PATCH_FILES,
            lambda: run_patching(prof.patch, device=prof.device), force, prof.patch)
    return load_patch_outputs(out)


# --- stage 2: alignment ----------------------------------------------------------------------------------

ALIGN_FILES = ("student.pt", "results.csv")


@dataclass(frozen=True)
class AlignOutputs:
    """What stage 2 left in its folder: the results table and the training log."""

    out_dir: Path
    results: pd.DataFrame
    log: pd.DataFrame | None
    run: dict[str, Any] = field(default_factory=dict)


def align_fingerprint(prof: Profile) -> str:
    """Fingerprint of stage 2: its config and the stage 1 run it reads (stage 1 must have run)."""
    return fingerprint("align", prof.align, [run_id(prof.stage_dir("patch")), code_hash("align")])


def load_align_outputs(out_dir: Path) -> AlignOutputs:
    """Read a finished stage 2 folder."""
    from mtmg.training import LOG

    out_dir = Path(out_dir)
    run = json.loads((out_dir / "run.json").read_text()) if (out_dir / "run.json").is_file() else {}
    return AlignOutputs(out_dir, pd.read_csv(out_dir / "results.csv"), read_log(out_dir / "train" / LOG), run)


def ensure_align(prof: Profile, *, force: bool = False) -> AlignOutputs:
    """Chapter 3: cross-modal alignment (``runs/<profile>/align``); runs stage 1 first if needed."""
    from mtmg.alignment import run_alignment

    ensure_patch(prof)
    out = prof.stage_dir("align")
    _ensure("align", out, align_fingerprint(prof), ALIGN_FILES,
            lambda: run_alignment(prof.align, device=prof.device), force, prof.align,
            after=prof.stage_dir("patch") / "patched.pt")
    return load_align_outputs(out)


# --- chapter 3-4: embeddings -----------------------------------------------------------------------------

EMBEDDING_FILES = ("text.pt", "rgb_zeroshot.pt", "rgb_patched.pt", "ms_student.pt", "meta.json")


@dataclass(frozen=True)
class Embeddings:
    """Embeddings of one test split in the shared space, row i of every image set = item ``ids[i]``.

    ``text``: one row per (class, template) prompt, class ``text_labels``; ``class_text``: the
    zero-shot head (one unit row per class). Images: RGB composites under zero-shot and patched CLIP,
    MS views under the student. ``targets``: class indices, or multi-hot rows for multi-label data.
    """

    text: torch.Tensor
    text_labels: torch.Tensor
    class_text: torch.Tensor
    logit_scale: float
    rgb_zeroshot: torch.Tensor
    rgb_patched: torch.Tensor
    ms_student: torch.Tensor
    targets: torch.Tensor
    ids: list[str]
    classnames: list[str]
    classes: list[str]
    dataset: str
    root: str
    split: str
    multilabel: bool
    level: str
    alpha: float
    n_total: int
    out_dir: Path

    @property
    def labels(self) -> np.ndarray:
        """One class index per image: the target, or the first positive class of a multi-hot row."""
        t = self.targets.numpy()
        return t.argmax(axis=1) if t.ndim == 2 else t.astype(np.int64)


def embeddings_fingerprint(prof: Profile) -> str:
    """Fingerprint of the embeddings: their settings and the stage 1 and 2 runs they read."""
    settings = {"data": to_dict(prof.embed_data), "split": prof.embed_split, "max": prof.embed_max,
                "seed": prof.seed, "ms_size": prof.align.ms_size}
    return fingerprint("embeddings", settings, [run_id(prof.stage_dir("patch")), run_id(prof.stage_dir("align")),
                                                code_hash("embeddings")])


def open_paired(prof: Profile, split: str | None = None, rgb_transform: Any = None,
                ms_transform: Any = None) -> Any:
    """The paired RGB/MS dataset of chapters 3-4 (:attr:`Profile.embed_data`), one split."""
    from mtmg.patching import open_split

    return open_split(prof.embed_data, split or prof.embed_split, rgb_transform, ms_transform)


def subset_indices(n: int, max_items: int, seed: int) -> list[int]:
    """All of ``range(n)``, or a fixed random ``max_items`` of them in ascending order."""
    if n <= max_items:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_items].tolist())


def item_ids(dataset: Any, indices: Sequence[int]) -> list[str]:
    """Sample ids of ``dataset`` at ``indices`` without loading the samples where the reader allows it."""
    records = getattr(dataset, "records", None)
    if records is not None:
        return [records[i].id for i in indices]
    return [str(dataset[i]["id"]) for i in indices]


@torch.no_grad()
def compute_embeddings(prof: Profile, out_dir: Path) -> None:
    """Embed the text prompts, the RGB composites (zero-shot and patched CLIP) and the MS views (student)."""
    from torch.utils.data import DataLoader, Subset
    from torchvision.transforms import InterpolationMode, Resize

    from mtmg.device import autocast, resolve_device
    from mtmg.patching import head_for, load_patched, task_info
    from mtmg.student import build_student

    dev = resolve_device(prof.device)
    patch_dir, align_dir = prof.stage_dir("patch"), prof.stage_dir("align")
    bundle, alpha = load_patched(patch_dir, dev, prof.cache)
    patched = bundle.model.visual.eval()
    zeroshot = _tower_copy(patched, checkpoint.load(patch_dir / "zeroshot.pt"))
    ms_tf = None if prof.align.ms_size is None else Resize(
        (prof.align.ms_size, prof.align.ms_size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    data = open_paired(prof, None, bundle.preprocess_val, ms_tf)
    head, multilabel = head_for(bundle, prof.embed_data, data, prof.cache)
    names, templates, _ = task_info(prof.embed_data, data)
    prompts = [t.format(c, c=c) for c in names for t in templates]
    text = bundle.model.encode_text(bundle.tokenizer(prompts).to(dev), normalize=True).float().cpu()
    with warnings.catch_warnings():  # the weights come from student.pt, not from the configured source
        warnings.simplefilter("ignore")
        student = build_student(dataclasses.replace(prof.align.student, weights=None), head.weight.shape[1])
    student.load_state_dict(checkpoint.load(align_dir / "student.pt"))
    student.to(dev).eval()

    indices = subset_indices(len(data), prof.embed_max, prof.seed)
    loader = DataLoader(Subset(data, indices), batch_size=prof.align.eval_batch_size, shuffle=False,
                        num_workers=prof.align.train.num_workers)
    outs: dict[str, list[torch.Tensor]] = {"rgb_zeroshot": [], "rgb_patched": [], "ms_student": [], "targets": []}
    for batch in loader:
        rgb, ms = batch["rgb"].to(dev), batch["ms"].to(dev)
        with autocast(dev):
            outs["rgb_zeroshot"].append(zeroshot(rgb).float().cpu())
            outs["rgb_patched"].append(patched(rgb).float().cpu())
            outs["ms_student"].append(student(ms).float().cpu())
        outs["targets"].append(torch.as_tensor(batch["target"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = torch.cat(outs["targets"])
    checkpoint.atomic_save({"embeddings": text, "labels": torch.arange(len(names)).repeat_interleave(len(templates)),
                            "class_embeddings": head.weight.cpu(), "logit_scale": head.logit_scale.cpu()},
                           out_dir / "text.pt")
    for name in ("rgb_zeroshot", "rgb_patched", "ms_student"):
        checkpoint.atomic_save({"embeddings": torch.cat(outs[name]), "targets": targets}, out_dir / f"{name}.pt")
    meta = {"dataset": prof.embed_data.name, "root": prof.embed_data.root, "split": prof.embed_split,
            "ids": item_ids(data, indices), "classes": list(data.classes), "classnames": names,
            "templates": templates, "multilabel": multilabel, "level": getattr(data, "level", "L1C"),
            "alpha": alpha, "n_total": len(data)}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def _tower_copy(tower: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    import copy

    other = copy.deepcopy(tower)
    other.load_state_dict(state)
    return other.requires_grad_(False).eval()


def load_embeddings(out_dir: Path) -> Embeddings:
    """Read the files :func:`compute_embeddings` wrote."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "meta.json").read_text())
    text = checkpoint.load(out_dir / "text.pt")
    sets = {name: checkpoint.load(out_dir / f"{name}.pt") for name in ("rgb_zeroshot", "rgb_patched", "ms_student")}
    return Embeddings(
        text=text["embeddings"], text_labels=text["labels"], class_text=text["class_embeddings"],
        logit_scale=float(text["logit_scale"]), rgb_zeroshot=sets["rgb_zeroshot"]["embeddings"],
        rgb_patched=sets["rgb_patched"]["embeddings"], ms_student=sets["ms_student"]["embeddings"],
        targets=sets["rgb_patched"]["targets"], ids=list(meta["ids"]), classnames=list(meta["classnames"]),
        classes=list(meta["classes"]), dataset=meta["dataset"], root=meta["root"], split=meta["split"],
        multilabel=bool(meta["multilabel"]), level=meta["level"], alpha=float(meta["alpha"]),
        n_total=int(meta["n_total"]), out_dir=out_dir)


def ensure_embeddings(prof: Profile, *, force: bool = False) -> Embeddings:
    """Chapters 3-4: cached embeddings of the paired test split; runs stages 1 and 2 first if needed."""
    ensure_align(prof)
    out = prof.stage_dir("embeddings")
    _ensure("embeddings", out, embeddings_fingerprint(prof), EMBEDDING_FILES,
            lambda: compute_embeddings(prof, out), force)
    return load_embeddings(out)


def embedding_sets(emb: Embeddings) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """The four sets of chapter 4 by display name, and their class-name labels."""
    names = emb.classnames
    image_labels = [names[i] for i in emb.labels]
    sets = {"text (class prompts)": emb.text, "RGB, zero-shot CLIP": emb.rgb_zeroshot,
            "RGB, patched CLIP": emb.rgb_patched, "MS, student": emb.ms_student}
    labels = {"text (class prompts)": [names[i] for i in emb.text_labels.tolist()],
              **{k: image_labels for k in list(sets)[1:]}}
    return sets, labels


def ensure_layout(prof: Profile, emb: Embeddings, method: str = "umap", *, force: bool = False) -> pd.DataFrame:
    """The joint 2-D layout (:func:`mtmg.gap.reduce_2d`) of :func:`embedding_sets`, cached as CSV."""
    from mtmg.gap import reduce_2d

    fp = fingerprint("layout", {"method": method, "seed": prof.seed}, [run_id(emb.out_dir)])
    path = emb.out_dir / f"layout-{method}-{fp}.csv"
    if path.is_file() and not force:
        layout = pd.read_csv(path, keep_default_na=False)
        layout["label"] = layout["label"].astype(object)
        return layout
    sets, labels = embedding_sets(emb)
    layout = reduce_2d(sets, labels, method=method, seed=prof.seed)
    for old in emb.out_dir.glob(f"layout-{method}-*.csv"):
        old.unlink()
    layout.to_csv(path, index=False)
    return layout


# --- chapter 5: patched CLIP on every zero-shot dataset ---------------------------------------------------

def ensure_patched_zeroshot(prof: Profile, *, force: bool = False) -> dict[str, Any]:
    """The zero-shot stage again with the patched image tower (``runs/<profile>/zeroshot_patched``)."""
    ensure_patch(prof)
    out = prof.stage_dir("zeroshot_patched")
    fp = fingerprint("zeroshot_patched", prof.zeroshot, [run_id(prof.stage_dir("patch")), code_hash("zeroshot")])

    def run() -> None:
        patch = load_patch_outputs(prof.stage_dir("patch"))
        run_zeroshot(prof.zeroshot, out, device=prof.device, visual_state=checkpoint.load(patch.out_dir / "patched.pt"),
                     tower=f"patched (alpha={patch.alpha:g})")

    _ensure("zeroshot_patched", out, fp, ZEROSHOT_FILES, run, force)
    return json.loads((out / "results.json").read_text())


def run_times(prof: Profile) -> pd.DataFrame:
    """When each stage of the profile last ran and how long it took (seconds; None when adopted)."""
    rows = []
    for stage in ("zeroshot", "patch", "align", "embeddings", "zeroshot_patched"):
        status = read_status(prof.stage_dir(stage))
        if status is not None:
            rows.append({"stage": stage, "seconds": status.get("seconds"), "finished": status.get("finished"),
                         "note": status.get("note", "")})
    return pd.DataFrame(rows, columns=["stage", "seconds", "finished", "note"])


# --- data views for the figures --------------------------------------------------------------------------

@dataclass(frozen=True)
class Tile:
    """One raw multispectral tile: (13, H, W) reflectance x 10000 in SSL4EO band order."""

    id: str
    label: int
    classname: str
    array13: np.ndarray
    level: str


def _tile(dataset: Any, index: int) -> Tile:
    array, target, sample_id = dataset.raw(index)
    label = int(torch.as_tensor(target).argmax()) if dataset.multilabel else int(target)
    return Tile(sample_id, label, dataset.classes[label], np.asarray(array), dataset.level)


def example_tiles(prof: Profile, per_class: int = 1, split: str | None = None, max_classes: int = 10) -> list[Tile]:
    """The first ``per_class`` tiles of each of the first ``max_classes`` classes of the paired dataset."""
    data = open_paired(prof, split)
    picked: dict[int, list[int]] = {}
    for i in range(len(data)):
        target = data.target(i)
        label = int(torch.as_tensor(target).argmax()) if data.multilabel else int(target)
        if label < max_classes and len(picked.setdefault(label, [])) < per_class:
            picked[label].append(i)
        if len(picked) == min(max_classes, len(data.classes)) and all(len(v) == per_class for v in picked.values()):
            break
    return [_tile(data, i) for label in sorted(picked) for i in picked[label]]


def tiles_by_id(prof: Profile, ids: Sequence[str], split: str | None = None) -> dict[str, Tile]:
    """The raw tiles of the paired dataset with the given ids."""
    data = open_paired(prof, split)
    wanted = set(ids)
    index = {sid: i for i, sid in enumerate(item_ids(data, range(len(data)))) if sid in wanted}
    missing = sorted(wanted - set(index))
    if missing:
        raise KeyError(f"{prof.embed_data.name}/{split or prof.embed_split}: no samples with ids {missing[:5]}")
    return {sid: _tile(data, i) for sid, i in index.items()}


def class_spectra(prof: Profile, split: str | None = None, max_items: int = 2000) -> pd.DataFrame:
    """Mean reflectance (fraction, x/10000) of every band per class; rows classes, columns bands."""
    from mtmg.sentinel2 import REFLECTANCE_SCALE, SSL4EO_BANDS

    data = open_paired(prof, split)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for i in subset_indices(len(data), max_items, prof.seed):
        tile = _tile(data, i)
        means = tile.array13.reshape(13, -1).astype(np.float64).mean(axis=1) / REFLECTANCE_SCALE
        sums[tile.classname] = sums.get(tile.classname, 0) + means
        counts[tile.classname] = counts.get(tile.classname, 0) + 1
    order = [c for c in data.classes if c in sums]
    return pd.DataFrame([sums[c] / counts[c] for c in order], index=pd.Index(order, name="class"),
                        columns=list(SSL4EO_BANDS))


@dataclass(frozen=True)
class RetrievalExample:
    """An MS query and its top-k RGB gallery items (ids, labels, cosine similarities)."""

    query: str
    query_label: int
    hits: list[str]
    hit_labels: list[int]
    similarities: list[float]
    positive_rank: int


def query_picks(labels: Sequence[int], n: int, seed: int = 0) -> list[int]:
    """``n`` random item indices, from as many different classes as possible (fixed by ``seed``)."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    picks, seen = [], set()
    for i in order:
        if int(labels[i]) not in seen:
            picks.append(i)
            seen.add(int(labels[i]))
    picks += [i for i in order if i not in set(picks)]
    return picks[:n]


def retrieval_examples(emb: Embeddings, n_queries: int = 4, k: int = 5, seed: int = 0) -> list[RetrievalExample]:
    """MS→RGB retrieval (student query, patched-CLIP gallery) for ``n_queries`` random test items of
    different classes (:func:`query_picks`)."""
    q = torch.nn.functional.normalize(emb.ms_student, dim=1)
    g = torch.nn.functional.normalize(emb.rgb_patched, dim=1)
    sims = q @ g.T
    labels = emb.labels
    out = []
    for i in query_picks(labels, n_queries, seed):
        order = torch.argsort(sims[i], descending=True, stable=True)
        top = order[:k].tolist()
        rank = int((sims[i] > sims[i, i]).sum())
        out.append(RetrievalExample(emb.ids[i], int(labels[i]), [emb.ids[j] for j in top],
                                    [int(labels[j]) for j in top], [float(sims[i, j]) for j in top], rank))
    return out

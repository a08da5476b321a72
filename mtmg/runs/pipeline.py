"""The stages behind the book's chapters, registered once in :data:`STAGES`, each reused from the run
store when it already ran.

A :class:`Stage` names the chapter that runs it, the stages it reads, the files of a finished folder,
its key and its runner. :func:`ensure` returns a stage's result, running the stages it reads and then
the stage itself when the run store has no complete folder for its key (:mod:`mtmg.core.runstore`:
settings, upstream keys, package source, weights and data manifest); each key is computed once per
call. Folders are ``runs/<profile>/<stage>/<key>/``, so parameter sets live side by side; each call
prints the folder it read or wrote.

- ``zeroshot``: zero-shot CLIP on every dataset (:func:`mtmg.runs.stages.run_zeroshot`), chapter 1;
- ``patch``: stage 1 (:func:`mtmg.method.patching.run_patching`), chapter 2;
- ``align``: stage 2 (:func:`mtmg.method.alignment.run_alignment`), after stage 1, chapter 3;
- ``embeddings``: text, RGB and MS test embeddings (:func:`mtmg.runs.stages.compute_embeddings`), chapters 3-4;
- ``zeroshot_patched``: patched CLIP on every dataset, chapter 5;
- ``probe``: linear probes of the student, its initial weights and both CLIP towers
  (:func:`mtmg.runs.probe.run_probe`), after stage 2, chapter 5.

The ``ensure_*`` functions are :func:`ensure` of one stage. Profiles come from
:func:`mtmg.runs.profiles.load_profile`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mtmg.core import checkpoint, paths, runstore
from mtmg.core.device import torch_threads
from mtmg.method import alignment, patching
from mtmg.runs import probe, stages
from mtmg.runs.profiles import Profile


@dataclass(frozen=True)
class Stage:
    """One stage of the book: its name, the chapter that runs it, what its time includes, the stages it
    reads, the files of a finished folder, its run-store key (from the profile and the folders of the
    stages it reads), its runner (writes the folder) and the reader of a finished folder. ``locks``:
    the runner takes the folder's lock and records the key itself (the two training stages)."""

    name: str
    chapter: int
    includes: str
    upstream: tuple[str, ...]
    files: tuple[str, ...]
    key: Callable[[Profile, Mapping[str, Path]], str]
    run: Callable[[Profile, Path, Mapping[str, Path]], object]
    load: Callable[[Path], Any]
    threads: Callable[[Profile], int] = lambda prof: prof.threads
    locks: bool = False


def _recorded(folders: Mapping[str, Path], *names: str) -> tuple[str, ...]:
    return tuple(runstore.recorded_key(folders[n]) for n in names)


def _run_patched_zeroshot(prof: Profile, folder: Path, up: Mapping[str, Path]) -> None:
    alpha = patching.PatchResult.load(up["patch"]).alpha
    stages.run_zeroshot(prof.zeroshot, folder, device=prof.device, tower=f"patched (alpha={alpha:g})",
                        visual_state=checkpoint.load(up["patch"] / "patched.pt"))


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("zeroshot", 1, "zero-shot heads and scoring; also MiniCLIP pretraining when its settings are not the "
          "shipped ones (data/miniclip/) and not in cache/ yet", (), stages.ZEROSHOT_FILES,
          key=lambda prof, up: stages.zeroshot_key(prof.zeroshot),
          run=lambda prof, folder, up: stages.run_zeroshot(prof.zeroshot, folder, device=prof.device),
          load=stages.ZeroShotResult.load, threads=lambda prof: prof.zeroshot.threads),
    Stage("patch", 2, "fine-tuning, the α sweep on validation and test splits", (), patching.FILES,
          key=lambda prof, up: patching.patch_key(prof.patch),
          run=lambda prof, folder, up: patching.run_patching(prof.patch, out_dir=folder, device=prof.device),
          load=patching.PatchResult.load, locks=True),
    Stage("align", 3, "teacher embeddings, distillation, evaluation", ("patch",), alignment.FILES,
          key=lambda prof, up: alignment.align_key(prof.align, up["patch"]),
          run=lambda prof, folder, up: alignment.run_alignment(prof.align, teacher_dir=up["patch"], out_dir=folder,
                                                               device=prof.device),
          load=alignment.AlignResult.load, locks=True),
    Stage("embeddings", 3, "embedding the test tiles with every model", ("patch", "align"), stages.EMBEDDING_FILES,
          key=lambda prof, up: stages.embeddings_key(prof, *_recorded(up, "patch", "align")),
          run=lambda prof, folder, up: stages.compute_embeddings(prof, up["patch"], up["align"], folder),
          load=stages.Embeddings.load),
    Stage("zeroshot_patched", 5, "zero-shot scoring of the patched model", ("patch",), stages.ZEROSHOT_FILES,
          key=lambda prof, up: stages.zeroshot_key(prof.zeroshot, _recorded(up, "patch")),
          run=_run_patched_zeroshot, load=stages.ZeroShotResult.load, threads=lambda prof: prof.zeroshot.threads),
    Stage("probe", 5, "embedding train, validation and test tiles with four encoders, the probe fits and the "
          "bootstrap intervals", ("patch", "align"), probe.FILES,
          key=lambda prof, up: probe.probe_key(probe.load_probe_config(prof), prof, *_recorded(up, "patch", "align")),
          run=lambda prof, folder, up: probe.run_probe(prof, up["patch"], up["align"], folder),
          load=probe.ProbeRun.load),
)}
"""Every stage of the book, in the order the chapters run them."""


def chapter_stages(chapter: int) -> tuple[str, ...]:
    """The stages chapter ``chapter`` runs itself, in registry order."""
    return tuple(name for name, s in STAGES.items() if s.chapter == chapter)


class _Folders:
    """The folders of one profile's stages, each key computed at most once (per call of :func:`ensure`)."""

    def __init__(self, prof: Profile) -> None:
        self.prof, self._known, self.results = prof, {}, {}

    def __call__(self, name: str) -> Path:
        if name not in self._known:
            stage = STAGES[name]
            up = {u: self(u) for u in stage.upstream}
            self._known[name] = runstore.stage_folder(self.prof.name, name, stage.key(self.prof, up))
        return self._known[name]


def _stage(name: str) -> Stage:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; use one of {list(STAGES)}")
    return STAGES[name]


def ensure(prof: Profile, name: str, *, force: bool = False, _folders: _Folders | None = None) -> Any:
    """The result of stage ``name`` for the profile's parameter set: the stages it reads are ensured
    first (reused when complete), then the stage runs unless its folder is complete for its key
    (``force``: run it again, not the stages it reads)."""
    stage = _stage(name)
    folders = _folders or _Folders(prof)
    if name in folders.results:  # ensured already in this call (a stage two others read)
        return folders.results[name]
    with runstore.one_walk_per_dataset():
        for u in stage.upstream:
            ensure(prof, u, _folders=folders)
        folder = folders(name)
        key = folder.name
        reuse = not force and runstore.is_current(folder, key, stage.files)
        if not reuse:
            up = {u: folders(u) for u in stage.upstream}
            if stage.locks:
                stage.run(prof, folder, up)
            else:
                with torch_threads(stage.threads(prof)), runstore.writing(name, folder, key, stage.files):
                    stage.run(prof, folder, up)
    shown = folder.relative_to(paths.PROJECT_ROOT) if folder.is_relative_to(paths.PROJECT_ROOT) else folder
    print(f"{name}: {'reused' if reuse else 'wrote'} {shown}")
    folders.results[name] = stage.load(folder)
    return folders.results[name]


def ensure_zeroshot(prof: Profile, *, force: bool = False) -> stages.ZeroShotResult:
    """Chapter 1: zero-shot scores of the profile's CLIP on every dataset."""
    return ensure(prof, "zeroshot", force=force)


def ensure_patch(prof: Profile, *, force: bool = False) -> patching.PatchResult:
    """Chapter 2: PAINT patching (:func:`mtmg.method.patching.run_patching`)."""
    return ensure(prof, "patch", force=force)


def ensure_align(prof: Profile, *, force: bool = False) -> alignment.AlignResult:
    """Chapter 3: cross-modal alignment (:func:`mtmg.method.alignment.run_alignment`); runs stage 1 first if needed."""
    return ensure(prof, "align", force=force)


def ensure_embeddings(prof: Profile, *, force: bool = False) -> stages.Embeddings:
    """Chapters 3-4: embeddings of the paired test split; runs stages 1 and 2 first if needed."""
    return ensure(prof, "embeddings", force=force)


def ensure_patched_zeroshot(prof: Profile, *, force: bool = False) -> stages.ZeroShotResult:
    """Chapter 5: the zero-shot stage again with the patched image tower."""
    return ensure(prof, "zeroshot_patched", force=force)


def ensure_probe(prof: Profile, *, force: bool = False) -> probe.ProbeRun:
    """Chapter 5: linear probes (:func:`mtmg.runs.probe.run_probe`): the fits, the student's gain over its
    initial weights and the folder; runs stages 1 and 2 first."""
    return ensure(prof, "probe", force=force)


def stage_folder(prof: Profile, stage: str) -> Path:
    """The run-store folder of ``stage`` (a name of :data:`STAGES`) for the profile's parameter set; the
    stages it reads must have finished (their keys are part of its key), else FileNotFoundError."""
    _stage(stage)
    with runstore.one_walk_per_dataset():
        return _Folders(prof)(stage)


def stage_folders(prof: Profile) -> dict[str, Path]:
    """The folder of every stage of :data:`STAGES` whose key can be known now (the stages it reads have
    finished), for the profile's parameter set."""
    folders, out = _Folders(prof), {}
    with runstore.one_walk_per_dataset():
        for stage in STAGES:
            try:
                out[stage] = folders(stage)
            except (FileNotFoundError, runstore.CorruptStatusError, runstore.ChangedOutputError):
                # a stage it reads has not run, or its folder is corrupt or was edited by hand
                continue
    return out


def run_times(prof: Profile) -> pd.DataFrame:
    """When each finished stage of the profile's parameter set ran, how long it took (seconds) and its folder."""
    rows = []
    for stage, folder in stage_folders(prof).items():
        status = runstore.read_status(folder)
        if status is not None and status.get("key") == folder.name:
            rows.append({"stage": stage, "seconds": status.get("seconds"), "finished": status.get("finished"),
                         "folder": str(folder)})
    return pd.DataFrame(rows, columns=["stage", "seconds", "finished", "folder"])

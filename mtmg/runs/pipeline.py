"""The stages behind the book's chapters, each reused from the run store when it already ran.

The ``ensure_*`` functions return a stage's result, running the stage first when the run store has no
complete folder for its key (:mod:`mtmg.core.runstore`: settings, upstream keys, package source, weights
and data manifest). Folders are ``runs/<profile>/<stage>/<key>/``, so parameter sets live side by side;
each call prints the folder it read or wrote.

- :func:`ensure_zeroshot`: zero-shot CLIP on every dataset (:func:`mtmg.runs.stages.run_zeroshot`);
- :func:`ensure_patch`: stage 1 (:func:`mtmg.method.patching.run_patching`);
- :func:`ensure_align`: stage 2 (:func:`mtmg.method.alignment.run_alignment`), after stage 1;
- :func:`ensure_embeddings`: text, RGB and MS test embeddings (:func:`mtmg.runs.stages.compute_embeddings`);
- :func:`ensure_layout`: their joint 2-D UMAP or PCA layout (cached beside them);
- :func:`ensure_patched_zeroshot`: patched CLIP on every dataset;
- :func:`ensure_probe`: linear probes of the student, its initial weights and both CLIP towers
  (:func:`mtmg.evaluation.probe.run_probe`), after stage 2.

Profiles come from :func:`mtmg.runs.profiles.load_profile`, the figures' data views from :mod:`mtmg.book.views`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from mtmg.core import checkpoint, paths, runstore
from mtmg.evaluation import probe
from mtmg.method import alignment, patching
from mtmg.runs import stages
from mtmg.runs.profiles import Profile

STAGES = ("zeroshot", "patch", "align", "embeddings", "zeroshot_patched", "probe")


def _ensure(stage: str, folder: Path, key: str, required: Sequence[str], run: Callable[[], object],
            force: bool) -> Path:
    """Run ``run()`` (which writes ``folder`` under ``key``) unless ``folder`` is complete for ``key``."""
    reuse = not force and runstore.is_current(folder, key, required)
    if not reuse:
        run()
    shown = folder.relative_to(paths.PROJECT_ROOT) if folder.is_relative_to(paths.PROJECT_ROOT) else folder
    print(f"{stage}: {'reused' if reuse else 'wrote'} {shown}")
    return folder


def _written(stage: str, folder: Path, key: str, required: Sequence[str], body: Callable[[], object]) -> Callable:
    def run() -> None:
        with runstore.writing(stage, folder, key, required):
            body()
    return run


def patch_folder(prof: Profile) -> Path:
    """The run-store folder of the profile's stage 1."""
    return runstore.stage_folder(prof.name, "patch", patching.patch_key(prof.patch))


def align_folder(prof: Profile) -> Path:
    """The run-store folder of the profile's stage 2 (stage 1 must have finished: its key is part of it)."""
    return runstore.stage_folder(prof.name, "align", alignment.align_key(prof.align, patch_folder(prof)))


def zeroshot_folder(prof: Profile, patched: bool = False) -> Path:
    """The run-store folder of the zero-shot stage (of the patched tower: stage 1 must have finished)."""
    upstream = (runstore.recorded_key(patch_folder(prof)),) if patched else ()
    stage = "zeroshot_patched" if patched else "zeroshot"
    return runstore.stage_folder(prof.name, stage, stages.zeroshot_key(prof.zeroshot, upstream))


def embeddings_folder(prof: Profile) -> Path:
    """The run-store folder of the embeddings (stages 1 and 2 must have finished)."""
    key = stages.embeddings_key(prof, runstore.recorded_key(patch_folder(prof)),
                                runstore.recorded_key(align_folder(prof)))
    return runstore.stage_folder(prof.name, "embeddings", key)


def ensure_zeroshot(prof: Profile, *, force: bool = False) -> stages.ZeroShotResult:
    """Chapter 1: zero-shot scores of the profile's CLIP on every dataset."""
    folder = zeroshot_folder(prof)
    key = folder.name
    _ensure("zeroshot", folder, key, stages.ZEROSHOT_FILES, _written(
        "zeroshot", folder, key, stages.ZEROSHOT_FILES,
        lambda: stages.run_zeroshot(prof.zeroshot, folder, device=prof.device)), force)
    return stages.ZeroShotResult.load(folder)


def ensure_patch(prof: Profile, *, force: bool = False) -> patching.PatchResult:
    """Chapter 2: PAINT patching (:func:`mtmg.method.patching.run_patching`)."""
    folder = patch_folder(prof)
    _ensure("patch", folder, folder.name, patching.FILES,
            lambda: patching.run_patching(prof.patch, out_dir=folder, device=prof.device), force)
    return patching.PatchResult.load(folder)


def ensure_align(prof: Profile, *, force: bool = False) -> alignment.AlignResult:
    """Chapter 3: cross-modal alignment (:func:`mtmg.method.alignment.run_alignment`); runs stage 1 first if needed."""
    teacher = ensure_patch(prof).out_dir
    folder = align_folder(prof)
    _ensure("align", folder, folder.name, alignment.FILES,
            lambda: alignment.run_alignment(prof.align, teacher_dir=teacher, out_dir=folder, device=prof.device),
            force)
    return alignment.AlignResult.load(folder)


def ensure_embeddings(prof: Profile, *, force: bool = False) -> stages.Embeddings:
    """Chapters 3-4: embeddings of the paired test split; runs stages 1 and 2 first if needed."""
    align = ensure_align(prof)
    folder = embeddings_folder(prof)
    key = folder.name
    _ensure("embeddings", folder, key, stages.EMBEDDING_FILES, _written(
        "embeddings", folder, key, stages.EMBEDDING_FILES,
        lambda: stages.compute_embeddings(prof, patch_folder(prof), align.out_dir, folder)), force)
    return stages.Embeddings.load(folder)


def ensure_layout(prof: Profile, emb: stages.Embeddings, method: str = "umap", *,
                  force: bool = False) -> pd.DataFrame:
    """The joint 2-D layout (:func:`mtmg.evaluation.gap.reduce_2d`) of :func:`mtmg.book.views.embedding_sets`, cached as
    CSV in the embeddings folder (one file per method and seed)."""
    from mtmg.book.views import embedding_sets
    from mtmg.evaluation.gap import reduce_2d

    path = emb.out_dir / f"layout-{method}-seed{prof.seed}.csv"
    if path.is_file() and not force:
        layout = pd.read_csv(path, keep_default_na=False)
        layout["label"] = layout["label"].astype(object)
        return layout
    sets, labels = embedding_sets(emb)
    layout = reduce_2d(sets, labels, method=method, seed=prof.seed)
    checkpoint.atomic_write_text(path, layout.to_csv(index=False))
    return layout


def ensure_patched_zeroshot(prof: Profile, *, force: bool = False) -> stages.ZeroShotResult:
    """Chapter 5: the zero-shot stage again with the patched image tower."""
    patch = ensure_patch(prof)
    folder = zeroshot_folder(prof, patched=True)
    key = folder.name

    def body() -> None:
        stages.run_zeroshot(prof.zeroshot, folder, device=prof.device, tower=f"patched (alpha={patch.alpha:g})",
                            visual_state=checkpoint.load(patch.out_dir / "patched.pt"))

    _ensure("zeroshot_patched", folder, key, stages.ZEROSHOT_FILES,
            _written("zeroshot_patched", folder, key, stages.ZEROSHOT_FILES, body), force)
    return stages.ZeroShotResult.load(folder)


def probe_folder(prof: Profile, cfg: probe.ProbeConfig | None = None) -> Path:
    """The run-store folder of the linear probe (stages 1 and 2 must have finished); ``cfg`` defaults to
    :func:`mtmg.evaluation.probe.load_probe_config`."""
    key = probe.probe_key(cfg or probe.load_probe_config(prof), prof, runstore.recorded_key(patch_folder(prof)),
                          runstore.recorded_key(align_folder(prof)))
    return runstore.stage_folder(prof.name, "probe", key)


def ensure_probe(prof: Profile, cfg: probe.ProbeConfig | None = None, *, force: bool = False) -> pd.DataFrame:
    """Chapter 5: linear probes (:func:`mtmg.evaluation.probe.run_probe`; one row per fit); runs stages 1 and 2
    first."""
    cfg = cfg or probe.load_probe_config(prof)
    align = ensure_align(prof)
    folder = probe_folder(prof, cfg)
    key = folder.name
    _ensure("probe", folder, key, probe.FILES, _written(
        "probe", folder, key, probe.FILES,
        lambda: probe.run_probe(prof, patch_folder(prof), align.out_dir, folder, cfg)), force)
    return pd.read_csv(folder / "results.csv")


def stage_folder(prof: Profile, stage: str) -> Path:
    """The run-store folder of ``stage`` (one of :data:`STAGES`) for the profile's parameter set; the
    stages it reads must have finished (their keys are part of its key), else FileNotFoundError."""
    folders = {"zeroshot": zeroshot_folder, "patch": patch_folder, "align": align_folder,
               "embeddings": embeddings_folder, "zeroshot_patched": lambda p: zeroshot_folder(p, patched=True),
               "probe": probe_folder}
    if stage not in folders:
        raise KeyError(f"unknown stage {stage!r}; use one of {list(STAGES)}")
    return folders[stage](prof)


def run_times(prof: Profile) -> pd.DataFrame:
    """When each finished stage of the profile's parameter set ran, how long it took (seconds) and its folder."""
    rows = []
    for stage in STAGES:
        try:
            folder = stage_folder(prof, stage)
        except FileNotFoundError:  # a stage it reads has not run
            continue
        status = runstore.read_status(folder)
        if status is not None and status.get("key") == folder.name:
            rows.append({"stage": stage, "seconds": status.get("seconds"), "finished": status.get("finished"),
                         "folder": str(folder)})
    return pd.DataFrame(rows, columns=["stage", "seconds", "finished", "folder"])

"""Stage 2: align a multispectral student to the patched CLIP image tower (cross-modal distillation).

The teacher (stage 1's image tower at the selected α, frozen, eval mode) embeds the RGB composite
of a patch; the student embeds its 13-band MS view. Loss: MSE between the raw embeddings (or cosine
distance) + λ · (BCE or CE) of the frozen text head applied to the student embedding.

The teacher sees no augmentation that is not in its cache: its embeddings are computed once per
training item (per D4 element with ``augment: d4``) and looked up each step, which gives the same
result as recomputing them.

Outputs in ``out_dir``: ``student.pt`` (state dict), ``results.csv`` (model, modality, dataset,
split, metric, value), ``teacher_cache.pt``, ``config.yaml``, ``run.json`` and ``train/``. ``out_dir``
defaults to the run store's folder of the stage's key (:func:`align_key`), which includes the key of
the stage 1 folder it distils.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mtmg.core import checkpoint, paths, runstore
from mtmg.core.config import AUGMENTATIONS, AlignConfig, StudentConfig, save_config
from mtmg.core.device import resolve_device, torch_threads
from mtmg.data.augment import authors_crops, d4, random_d4
from mtmg.data.sentinel2 import band_metadata, evaluation_spec, save_band_metadata
from mtmg.data.tasks import HEADS, cache_folder, head_for, held_out, ms_resize, sample_ids, training_split
from mtmg.evaluation import metrics
from mtmg.evaluation.embeddings import embed
from mtmg.method import validation
from mtmg.method.losses import feature_loss, task_loss
from mtmg.method.patching import load_patched
from mtmg.method.training import (
    LOG,
    LossFn,
    check_resume,
    fit,
    is_main,
    main_first,
    maybe_in_memory,
    read_log,
)
from mtmg.models.clip import ZeroShotHead, tower_copy
from mtmg.models.student import Student, build_student

TEACHER_CACHE = "teacher_cache.pt"
STUDENT_FILE = "student.pt"
FILES = (STUDENT_FILE, "results.csv")
"""The files a finished stage 2 folder holds."""


def load_student(folder: str | Path, cfg: StudentConfig) -> Student:
    """The trained student of a finished stage 2 folder: the architecture of ``cfg``, the weights of its
    ``student.pt`` (the configured initial weights are not read)."""
    state = checkpoint.load(Path(folder) / STUDENT_FILE)
    with warnings.catch_warnings():  # no initial weights: student.pt replaces them all
        warnings.simplefilter("ignore")
        student = build_student(dataclasses.replace(cfg, weights=None), state["proj.weight"].shape[0])
    student.load_state_dict(state)
    return student


@torch.no_grad()
def teacher_embeddings(teacher: nn.Module, dataset: Dataset, views: int, *, device: torch.device,
                       batch_size: int = 256, num_workers: int = 0) -> torch.Tensor:
    """(N, views, D) float32 embeddings of ``dataset[i]["rgb"]`` under D4 elements 0..views-1."""
    teacher.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    out = [embed({"t": (lambda x, k=k: teacher(d4(x, k)), "rgb")}, loader, device, f"teacher cache {k + 1}/{views}")
           for k in range(views)]
    return torch.stack([o["t"] for o, _ in out], dim=1)


def cached_teacher_embeddings(teacher: nn.Module, dataset: Dataset, views: int, path: Path, key: str, *,
                              device: torch.device, batch_size: int, num_workers: int = 0) -> torch.Tensor:
    """:func:`teacher_embeddings`, reused from ``path`` when it was written under the same ``key``."""
    stored = checkpoint.load_cache(path)  # a corrupt cache file is a miss (warned) and is rewritten
    if isinstance(stored, dict) and stored.get("key") == key and isinstance(stored.get("embeddings"), torch.Tensor):
        return stored["embeddings"]
    emb = teacher_embeddings(teacher, dataset, views, device=device, batch_size=batch_size, num_workers=num_workers)
    checkpoint.atomic_save({"key": key, "embeddings": emb}, path)
    return emb


def make_loss(teacher: nn.Module, head: ZeroShotHead, multilabel: bool, *, kind: str = "mse",
              cls_weight: float = 0.05, cache: torch.Tensor | None = None) -> LossFn:
    """The distillation loss ``loss_fn(student, batch)`` for :func:`mtmg.method.training.fit`.

    With ``cache`` (N, V, D) the teacher embedding of item ``index`` under D4 element ``d4`` is looked
    up (element 0 when V == 1); otherwise the frozen teacher embeds ``batch["rgb"]``.
    """
    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        s = model(batch["ms"])
        if cache is not None:
            view = batch["d4"] if cache.shape[1] > 1 else torch.zeros_like(batch["index"])
            t = cache[batch["index"].cpu(), view.cpu()].to(s.device)
        else:
            with torch.no_grad():
                t = teacher(batch["rgb"]).float()
        feat = feature_loss(kind, s, t)
        cls = task_loss(multilabel, head(s), batch["target"])
        return feat + cls_weight * cls, {"feature_loss": feat.item(), "cls_loss": cls.item()}
    return loss_fn


def _zeroshot_rows(model: str, modality: str, dataset: str, split: str, emb: torch.Tensor,
                   targets: torch.Tensor, head: ZeroShotHead, multilabel: bool) -> list[dict[str, Any]]:
    with torch.no_grad():
        logits = head.cpu()(emb)
    rows = [{"model": model, "modality": modality, "dataset": dataset, "split": split, "metric":
             metrics.PRIMARY_METRIC[multilabel], "value": metrics.headline_score(logits, targets, multilabel)}]
    if multilabel:  # the paper's convention beside the correct AP (see mtmg.evaluation.metrics)
        rows.append({**rows[0], "metric": "macro_ap_authors",
                     "value": metrics.authors_macro_average_precision(logits, targets)})
    return rows


def evaluate_alignment(students: dict[str, nn.Module], teachers: dict[str, nn.Module], head: ZeroShotHead,
                       multilabel: bool, dataset: Dataset, *, name: str, split: str, device: torch.device,
                       ks: Sequence[int] = (1, 5, 10, 20, 50), batch_size: int = 256,
                       num_workers: int = 0) -> list[dict[str, Any]]:
    """Zero-shot score of each teacher on RGB and each student on MS, and RGB↔MS retrieval recall@k
    of each student against the first teacher (the aligned pair), as tidy rows."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    views = {**{t: (m, "rgb") for t, m in teachers.items()}, **{s: (m, "ms") for s, m in students.items()}}
    out, targets = embed(views, loader, device, desc=f"{name}/{split}")
    rows = []
    for tname in teachers:
        rows += _zeroshot_rows(tname, "rgb", name, split, out[tname], targets, head, multilabel)
    reference = out[next(iter(teachers))]
    for sname in students:
        emb = out[sname]
        rows += _zeroshot_rows(sname, "ms", name, split, emb, targets, head, multilabel)
        for direction, recalls in metrics.retrieval_recalls(emb, reference, ks, names=("ms", "rgb")).items():
            rows += [{"model": sname, "modality": direction, "dataset": name, "split": split,
                      "metric": f"recall@{k}", "value": float(v)} for k, v in recalls.items()]
    return rows


@dataclass(frozen=True)
class AlignResult:
    """A finished stage 2 folder: the results table, the training log and the run record."""

    out_dir: Path
    results: pd.DataFrame
    log: pd.DataFrame | None = None
    run: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path) -> AlignResult:
        """Read a finished stage 2 folder."""
        folder = Path(folder)
        run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
        return cls(folder, pd.read_csv(folder / "results.csv"), read_log(folder / "train" / LOG), run)


def align_key(cfg: AlignConfig, teacher_dir: Path) -> str:
    """The run-store key of stage 2: its settings, the key of the stage 1 folder it distils, the student's
    initial weights, its data and the package source."""
    return runstore.stage_key("align", cfg, **_key_inputs(cfg, teacher_dir))


def _key_inputs(cfg: AlignConfig, teacher_dir: Path) -> dict[str, Any]:
    return {"upstream": [runstore.recorded_key(teacher_dir)], "weights": runstore.weights_identity(cfg.student.weights),
            "data": (cfg.data, *cfg.eval_sets)}


def resume_identity(cfg: AlignConfig, teacher_dir: Path) -> dict[str, Any]:
    """What a resumed distillation must share with the interrupted one (see :func:`mtmg.method.training.fit`)."""
    parts = runstore.key_parts("align", cfg, **_key_inputs(cfg, teacher_dir))
    return {k: parts[k] for k in ("settings", "upstream", "weights", "data")}


def teacher_folder(cfg: AlignConfig, teacher_dir: str | Path | None = None) -> Path:
    """The stage 1 folder to distil: ``teacher_dir``, else the config's; one of them must be set."""
    chosen = teacher_dir if teacher_dir is not None else cfg.teacher_dir
    if not chosen:
        raise ValueError("stage 2 needs the stage 1 folder to distil: set teacher_dir in the config, pass "
                         "--teacher, or run it through the pipeline (mtmg.runs.pipeline.ensure_align)")
    return paths.resolve(chosen)


def output_folder(cfg: AlignConfig, teacher_dir: Path, out_dir: str | Path | None = None) -> Path:
    """Where :func:`run_alignment` writes: ``out_dir``, else the config's, else the run store's folder."""
    chosen = out_dir if out_dir is not None else cfg.out_dir
    return paths.resolve(chosen) if chosen else runstore.stage_folder(cfg.profile, "align", align_key(cfg, teacher_dir))


def check_supported(cfg: AlignConfig) -> None:
    """Refuse settings stage 2 cannot run (before it writes anything)."""
    if cfg.augment not in AUGMENTATIONS or cfg.augment == "paint":
        raise ValueError(f"augment {cfg.augment!r}: alignment supports 'none', 'd4', 'd4_student' and 'rrc'")
    if cfg.augment == "rrc" and cfg.teacher_cache:
        raise ValueError("augment 'rrc' crops the teacher's RGB view too, so its embeddings cannot be cached: "
                         "set teacher_cache: false in the align config (or use augment: none or d4)")


def teacher_cache_key(teacher_dir: Path, cfg: AlignConfig, ids: Sequence[str], views: int) -> str:
    """Key of the teacher embeddings of the training items: the patched tower's bytes, the training data
    (manifest, carve, sample ids), the MS view size, in-memory loading and the number of D4 views."""
    patched = hashlib.sha256((teacher_dir / "patched.pt").read_bytes()).hexdigest()
    return runstore.stage_key("teacher_cache", {"carve": cfg.carve, "ms_size": cfg.ms_size, "in_memory": cfg.in_memory,
                                                "views": views, "ids": list(ids)},
                              upstream=[patched], data=(cfg.data,))


def align(teacher: nn.Module, student: Student, head: ZeroShotHead, multilabel: bool, train: Dataset,
          cfg: AlignConfig, out_dir: Path, *, device: torch.device, resume: bool = False,
          cache_key: Any = None, identity: dict[str, Any] | None = None) -> None:
    """Train ``student`` on ``train`` (items with ``rgb``, ``ms``, ``target``) against the frozen ``teacher``.

    ``cache_key(views)`` gives the key of the teacher cache (default: the number of views and items
    only, for callers that own ``out_dir``); ``identity`` is what a resumed run must share with the
    checkpoint's (see :func:`mtmg.method.training.fit`).
    """
    check_supported(cfg)
    teacher.requires_grad_(False).eval().to(device)
    head = head.to(device).requires_grad_(False)
    cache = None
    if cfg.teacher_cache:
        views = 8 if cfg.augment == "d4" else 1
        with main_first():
            key = cache_key(views) if cache_key is not None else f"views={views},n={len(train)}"
            cache = cached_teacher_embeddings(teacher, train, views, out_dir / TEACHER_CACHE, key, device=device,
                                              batch_size=cfg.eval_batch_size, num_workers=cfg.train.num_workers)
    augment = {"d4": random_d4(("rgb", "ms")), "d4_student": random_d4(("ms",)), "none": None,
               "rrc": None}[cfg.augment]  # rrc: the reader crops (see _align)
    loss_fn = make_loss(teacher, head, multilabel, kind=cfg.feature_loss, cls_weight=cfg.cls_weight, cache=cache)
    fit(student, loss_fn, train, cfg.train, out_dir / "train", device=device, resume=resume,
        augment=augment, desc="alignment", identity=identity)
    student.eval()


def run_alignment(cfg: AlignConfig, *, teacher_dir: str | Path | None = None, out_dir: str | Path | None = None,
                  device: str = "auto", resume: bool = False) -> AlignResult | None:
    """Stage 2 end to end: load the patched teacher, train the student, evaluate both, write the table.

    Writes into :func:`output_folder` under its lock and records :func:`align_key` when done. Under
    ``torchrun`` every rank trains the student (data-parallel); rank 0 alone then evaluates and writes
    the outputs, and the other ranks return ``None`` at once.
    """
    check_supported(cfg)
    validation.check_align_config(cfg, "align")  # names, options, roots, student: before anything is written
    teacher = teacher_folder(cfg, teacher_dir)
    out = output_folder(cfg, teacher, out_dir)
    if resume:
        check_resume(out / "train", cfg.train, resume_identity(cfg, teacher))
    with torch_threads(cfg.threads), runstore.writing("align", out, align_key(cfg, teacher), FILES,
                                                      enabled=is_main()):
        _align(cfg, teacher, out, resolve_device(device), resume)
    return AlignResult.load(out) if is_main() else None


def _align(cfg: AlignConfig, teacher_dir: Path, out: Path, dev: torch.device, resume: bool) -> None:
    t0 = time.perf_counter()
    with main_first():  # under torchrun rank 0 prepares first; the other ranks reuse its caches
        if is_main():
            save_config(cfg, out / "config.yaml")
        cache = cache_folder(cfg.cache_dir)
        bundle, alpha = load_patched(teacher_dir, dev, cache)
        teacher = bundle.model.visual.requires_grad_(False).eval()
        timings = {"load": time.perf_counter() - t0}

        t = time.perf_counter()
        ms_tf = ms_resize(cfg.ms_size)
        if cfg.augment == "rrc":  # the authors' crops of the native-resolution views, new at every step
            rgb_crop, ms_crop = authors_crops(bundle.preprocess_val, cfg.ms_size)
            train = training_split(cfg.data, rgb_crop, cfg.carve, ms_crop)
        else:
            train = training_split(cfg.data, bundle.preprocess_val, cfg.carve, ms_tf)
        ids = sample_ids(train)
        bands = band_metadata(train)
        if cfg.augment != "rrc":
            train = maybe_in_memory(train, cfg.in_memory, ("rgb", "ms", "target"), f"{cfg.data.name}/train")
        head, multilabel = head_for(bundle, cfg.data, train, cache / HEADS)
        with torch.no_grad():
            dim = teacher.to(dev)(train[0]["rgb"][None].to(dev)).shape[-1]
        timings["data"] = time.perf_counter() - t

    torch.manual_seed(cfg.train.seed)
    student = build_student(cfg.student, dim)
    start = copy.deepcopy(student)
    t = time.perf_counter()
    align(teacher, student, head, multilabel, train, cfg, out, device=dev, resume=resume,
          cache_key=lambda views: teacher_cache_key(teacher_dir, cfg, ids, views),
          identity=resume_identity(cfg, teacher_dir))
    if not is_main():
        return
    timings["train"] = time.perf_counter() - t
    checkpoint.atomic_save({k: v.detach().cpu() for k, v in student.state_dict().items()}, out / STUDENT_FILE)
    save_band_metadata(bands, out)

    t = time.perf_counter()
    zs = tower_copy(teacher, checkpoint.load(teacher_dir / "zeroshot.pt"))
    rows = []
    for spec in cfg.eval_sets:
        spec = evaluation_spec(spec, bands)
        val, test = held_out(spec, bundle.preprocess_val, cfg.carve, ms_tf)
        eval_head, eval_multilabel = head_for(bundle, spec, val, cache / HEADS)
        for split, data in (("val", val), ("test", test)):
            if data is None:
                continue
            data = maybe_in_memory(data, cfg.in_memory, ("rgb", "ms", "target"), f"{spec.name}/{split}")
            rows += evaluate_alignment({"student": student.to(dev), "student_init": start.to(dev)},
                                       {"clip_patched": teacher, "clip_zeroshot": zs.to(dev)},
                                       eval_head, eval_multilabel, data, name=spec.name, split=split,
                                       device=dev, ks=cfg.retrieval_ks, batch_size=cfg.eval_batch_size,
                                       num_workers=cfg.train.num_workers)
    results = pd.DataFrame(rows, columns=["model", "modality", "dataset", "split", "metric", "value"])
    checkpoint.atomic_write_text(out / "results.csv", results.to_csv(index=False))
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    checkpoint.atomic_write_text(out / "run.json", json.dumps(
        {"stage": "align", "device": str(dev), "teacher_alpha": alpha, "teacher_dir": str(teacher_dir),
         "seconds": timings}, indent=2))

"""Stage 2: align a multispectral student to the patched CLIP image tower (cross-modal distillation).

The teacher (stage 1's image tower at the selected α, frozen, eval mode) embeds the RGB composite
of a patch; the student embeds its 13-band MS view. Loss: MSE between the raw embeddings (or cosine
distance) + λ · (BCE or CE) of the frozen text head applied to the student embedding.

The teacher sees no augmentation that is not in its cache: its embeddings are computed once per
training item (per D4 element with ``augment: d4``) and looked up each step, which gives the same
result as recomputing them.

Outputs in ``out_dir``: ``student.pt`` (state dict), ``results.csv`` (model, modality, dataset,
split, metric, value), ``teacher_cache.pt``, ``config.yaml``, ``run.json`` and ``train/``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, Resize
from tqdm import tqdm

from mtmg import checkpoint, metrics, paths
from mtmg.augment import AUGMENTATIONS, d4, random_d4
from mtmg.config import AlignConfig, save_config
from mtmg.device import autocast, resolve_device
from mtmg.embeddings import run_encoder
from mtmg.models import ZeroShotHead
from mtmg.patching import PRIMARY_METRIC, head_for, held_out, load_patched, maybe_in_memory, stage_dir, \
    task_loss, training_split
from mtmg.student import Student, build_student
from mtmg.training import LossFn, fit, is_main, main_first

TEACHER_CACHE = "teacher_cache.pt"


def feature_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mse`` on raw embeddings, or ``cosine`` distance (1 − cos), averaged over the batch."""
    if kind == "mse":
        return F.mse_loss(student.float(), teacher.float())
    if kind == "cosine":
        return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()
    raise ValueError(f"feature_loss {kind!r}: use 'mse' or 'cosine'")


@torch.no_grad()
def teacher_embeddings(teacher: nn.Module, dataset: Dataset, views: int, *, device: torch.device,
                       batch_size: int = 256, num_workers: int = 0) -> torch.Tensor:
    """(N, views, D) float32 embeddings of ``dataset[i]["rgb"]`` under D4 elements 0..views-1."""
    teacher.eval()
    out = []
    for k in range(views):
        chunks = []
        for batch in tqdm(DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers),
                          desc=f"teacher cache {k + 1}/{views}", leave=False):
            with autocast(device):
                chunks.append(teacher(d4(batch["rgb"].to(device), k)).float().cpu())
        out.append(torch.cat(chunks))
    return torch.stack(out, dim=1)


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_teacher_embeddings(teacher: nn.Module, dataset: Dataset, views: int, path: Path, key: str, *,
                              device: torch.device, batch_size: int, num_workers: int = 0) -> torch.Tensor:
    """:func:`teacher_embeddings`, reused from ``path`` when it was written under the same ``key``."""
    if path.is_file():
        stored = checkpoint.load(path)
        if stored.get("key") == key:
            return stored["embeddings"]
    emb = teacher_embeddings(teacher, dataset, views, device=device, batch_size=batch_size, num_workers=num_workers)
    checkpoint.atomic_save({"key": key, "embeddings": emb}, path)
    return emb


def make_loss(teacher: nn.Module, head: ZeroShotHead, multilabel: bool, *, kind: str = "mse",
              cls_weight: float = 0.05, cache: torch.Tensor | None = None) -> LossFn:
    """The distillation loss ``loss_fn(student, batch)`` for :func:`mtmg.training.fit`.

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


def _ms_transform(size: int | None):
    return None if size is None else Resize((size, size), interpolation=InterpolationMode.BICUBIC, antialias=True)


def _zeroshot_rows(model: str, modality: str, dataset: str, split: str, emb: torch.Tensor,
                   targets: torch.Tensor, head: ZeroShotHead, multilabel: bool) -> list[dict[str, Any]]:
    with torch.no_grad():
        logits = head.cpu()(emb)
    name = PRIMARY_METRIC[multilabel]
    value = metrics.macro_average_precision(logits, targets) if multilabel else metrics.top1_accuracy(logits, targets)
    return [{"model": model, "modality": modality, "dataset": dataset, "split": split, "metric": name,
             "value": float(value)}]


def evaluate_alignment(students: dict[str, nn.Module], teachers: dict[str, nn.Module], head: ZeroShotHead,
                       multilabel: bool, dataset: Dataset, *, name: str, split: str, device: torch.device,
                       ks: Sequence[int] = (1, 5, 10, 20, 50), batch_size: int = 256,
                       num_workers: int = 0) -> list[dict[str, Any]]:
    """Zero-shot score of each teacher on RGB and each student on MS, and RGB↔MS retrieval recall@k
    of each student against the first teacher (the aligned pair), as tidy rows."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    rows, rgb = [], {}
    for tname, teacher in teachers.items():
        rgb[tname], targets = run_encoder(teacher, loader, "rgb", device, desc=f"{tname} {name}/{split}")
        rows += _zeroshot_rows(tname, "rgb", name, split, rgb[tname], targets, head, multilabel)
    reference = rgb[next(iter(teachers))]
    for sname, student in students.items():
        emb, targets = run_encoder(student, loader, "ms", device, desc=f"{sname} {name}/{split}")
        rows += _zeroshot_rows(sname, "ms", name, split, emb, targets, head, multilabel)
        for direction, recalls in metrics.retrieval_recalls(emb, reference, ks, names=("ms", "rgb")).items():
            rows += [{"model": sname, "modality": direction, "dataset": name, "split": split,
                      "metric": f"recall@{k}", "value": float(v)} for k, v in recalls.items()]
    return rows


@dataclass(frozen=True)
class AlignResult:
    """Where stage 2 wrote its outputs and the results table."""

    out_dir: Path
    results: pd.DataFrame


def align(teacher: nn.Module, student: Student, head: ZeroShotHead, multilabel: bool, train: Dataset,
          cfg: AlignConfig, out_dir: Path, *, device: torch.device, resume: bool = False,
          cache_key: str = "") -> None:
    """Train ``student`` on ``train`` (items with ``rgb``, ``ms``, ``target``) against the frozen ``teacher``."""
    if cfg.augment not in AUGMENTATIONS or cfg.augment == "paint":
        raise ValueError(f"augment {cfg.augment!r}: alignment supports 'none', 'd4' and 'd4_student'")
    teacher.requires_grad_(False).eval().to(device)
    head = head.to(device).requires_grad_(False)
    cache = None
    if cfg.teacher_cache:
        views = 8 if cfg.augment == "d4" else 1
        with main_first():
            cache = cached_teacher_embeddings(teacher, train, views, out_dir / TEACHER_CACHE,
                                              _fingerprint(cache_key, views, len(train)), device=device,
                                              batch_size=cfg.eval_batch_size, num_workers=cfg.train.num_workers)
    augment = {"d4": random_d4(("rgb", "ms")), "d4_student": random_d4(("ms",)), "none": None}[cfg.augment]
    loss_fn = make_loss(teacher, head, multilabel, kind=cfg.feature_loss, cls_weight=cfg.cls_weight, cache=cache)
    fit(student, loss_fn, train, cfg.train, out_dir / "train", device=device, resume=resume,
        augment=augment, desc="alignment")
    student.eval()


def run_alignment(cfg: AlignConfig, *, out_dir: str | Path | None = None, device: str = "auto",
                  resume: bool = False) -> AlignResult | None:
    """Stage 2 end to end: load the patched teacher, train the student, evaluate both, write the table.

    Under ``torchrun`` every rank trains the student (data-parallel); rank 0 alone then evaluates and
    writes the outputs, and the other ranks return ``None`` at once.
    """
    t0 = time.perf_counter()
    with main_first():  # under torchrun rank 0 prepares first; the other ranks reuse its caches
        out = stage_dir(cfg.profile, "align", out_dir, cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        dev = resolve_device(device)
        cache = paths.resolve(cfg.cache_dir) if cfg.cache_dir else paths.cache_dir()
        carve = (cfg.carve_fraction, cfg.carve_max, cfg.carve_seed)
        teacher_dir = stage_dir(cfg.profile, "patch", None, cfg.teacher_dir)
        bundle, alpha = load_patched(teacher_dir, dev, cache)
        teacher = bundle.model.visual.requires_grad_(False).eval()
        timings = {"load": time.perf_counter() - t0}

        t = time.perf_counter()
        ms_tf = _ms_transform(cfg.ms_size)
        train = maybe_in_memory(training_split(cfg.data, bundle.preprocess_val, carve, ms_tf), cfg.in_memory,
                                ("rgb", "ms", "target"), f"{cfg.data.name}/train")
        head, multilabel = head_for(bundle, cfg.data, train, cache)
        with torch.no_grad():
            dim = teacher.to(dev)(train[0]["rgb"][None].to(dev)).shape[-1]
        timings["data"] = time.perf_counter() - t

    torch.manual_seed(cfg.train.seed)
    student = build_student(cfg.student, dim)
    start = copy.deepcopy(student)
    t = time.perf_counter()
    patched_id = hashlib.sha256((teacher_dir / "patched.pt").read_bytes()).hexdigest()
    align(teacher, student, head, multilabel, train, cfg, out, device=dev, resume=resume,
          cache_key=_fingerprint(patched_id, cfg.data, cfg.ms_size, cfg.in_memory))
    if not is_main():
        return None
    timings["train"] = time.perf_counter() - t
    checkpoint.atomic_save({k: v.detach().cpu() for k, v in student.state_dict().items()}, out / "student.pt")

    t = time.perf_counter()
    zs = _zeroshot_tower(bundle, teacher_dir)
    rows = []
    for spec in cfg.eval_sets:
        val, test = held_out(spec, bundle.preprocess_val, carve, ms_tf)
        eval_head, eval_multilabel = head_for(bundle, spec, val, cache)
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
    results.to_csv(out / "results.csv", index=False)
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    (out / "run.json").write_text(json.dumps({"stage": "align", "device": str(dev), "teacher_alpha": alpha,
                                              "teacher_dir": str(teacher_dir), "seconds": timings}, indent=2))
    return AlignResult(out, results)


def _zeroshot_tower(bundle: Any, teacher_dir: Path) -> nn.Module:
    """A copy of the image tower at the zero-shot endpoint (α = 0) of stage 1."""
    tower = copy.deepcopy(bundle.model.visual)
    tower.load_state_dict(checkpoint.load(teacher_dir / "zeroshot.pt"))
    return tower.requires_grad_(False).eval()

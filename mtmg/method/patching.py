"""Stage 1: PAINT patching of CLIP's image tower on RGB composites, interpolation and α selection.

1. fine-tune ``model.visual`` on the patching task through its frozen zero-shot text head
   (cross-entropy, or BCE for multi-label tasks);
2. interpolate every state-dict entry, θα = (1 − α)·θ_zs + α·θ_ft, for each α of the sweep;
3. evaluate every α on the validation splits of the patching and supported tasks and choose the α
   with the best mean (PAINT); the test splits are evaluated only after the choice, for reporting.

Outputs in ``out_dir``: ``zeroshot.pt``, ``finetuned.pt``, ``patched.pt`` (visual state dicts),
``scores.csv`` (task, split, alpha, metric, value), ``selected_alpha.json``, ``clip.json`` (how to
rebuild the model: spec, weights id and file), ``config.yaml``, ``run.json`` and ``finetune/`` (checkpoint,
training log).
``out_dir`` defaults to the run store's folder of the config's key (:func:`patch_key`).
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mtmg.core import checkpoint, paths, runstore
from mtmg.core.config import ClipSpec, PatchConfig, save_config
from mtmg.core.device import resolve_device, torch_threads
from mtmg.data.augment import paint_train_transform, random_d4
from mtmg.data.tasks import HEADS, cache_folder, head_for, held_out, training_split
from mtmg.evaluation.metrics import PRIMARY_METRIC
from mtmg.evaluation.scoring import evaluate_zeroshot
from mtmg.method import validation
from mtmg.method.clip_weights import clip_identity, clip_source, load_clip_spec
from mtmg.method.losses import task_loss
from mtmg.method.training import (
    LOG,
    check_resume,
    fit,
    is_main,
    main_first,
    maybe_in_memory,
    read_log,
)
from mtmg.models.clip import ClipBundle, ImageClassifier, ZeroShotHead, load_clip

PAPER_ALPHA = 0.5
AUGMENTATIONS = ("none", "d4", "paint")
"""The augmentations of :data:`mtmg.core.config.AUGMENTATIONS` that stage 1 applies."""
FILES = ("selected_alpha.json", "scores.csv", "patched.pt", "zeroshot.pt", "clip.json")
"""The files a finished stage 1 folder holds."""


# --- interpolation and selection -------------------------------------------------------------------------

def interpolate_state_dicts(zs: Mapping[str, torch.Tensor], ft: Mapping[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """θα = (1 − α)·θ_zs + α·θ_ft for every floating-point entry; new tensors, inputs untouched.

    Integer and boolean entries cannot be interpolated: they are copied from the nearer endpoint
    (``zs`` for α < 0.5), so α = 0 and α = 1 reproduce the endpoints exactly.
    """
    _check_same_architecture(zs, ft)
    out = {}
    for k, a in zs.items():
        out[k] = torch.empty_like(a)
        _interpolate_into(out[k], a, ft[k], alpha)
    return out


@torch.no_grad()
def load_interpolated(module: nn.Module, zs: Mapping[str, torch.Tensor], ft: Mapping[str, torch.Tensor],
                      alpha: float) -> None:
    """Write θα into ``module``'s own parameters and buffers: the numbers of :func:`interpolate_state_dicts`
    without a second copy of the tower (1.2 GB for ViT-L-14's)."""
    _check_same_architecture(zs, ft)
    own = module.state_dict()
    if set(own) != set(zs):
        raise KeyError(f"{type(module).__name__} and the state dicts differ in keys: only in the module "
                       f"{sorted(set(own) - set(zs))[:8]}, only in the state dicts {sorted(set(zs) - set(own))[:8]}")
    for k, target in own.items():
        _interpolate_into(target, zs[k], ft[k], alpha)


def _check_same_architecture(zs: Mapping[str, torch.Tensor], ft: Mapping[str, torch.Tensor]) -> None:
    if set(zs) != set(ft):
        only_zs, only_ft = sorted(set(zs) - set(ft)), sorted(set(ft) - set(zs))
        raise KeyError(f"state dicts differ in keys: only in zero-shot {only_zs[:8]}, only in fine-tuned "
                       f"{only_ft[:8]}; both must come from the same architecture")
    shapes = [f"{k}: {tuple(zs[k].shape)} vs {tuple(ft[k].shape)}" for k in zs if zs[k].shape != ft[k].shape]
    if shapes:
        raise ValueError(f"state dicts differ in shapes ({shapes[:8]}); both must come from the same architecture")


def _interpolate_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> None:
    """out = (1 − α)·a + α·b in fp32 (stored in ``out``'s dtype); the nearer endpoint for integer entries."""
    if not a.is_floating_point():
        out.copy_(a if alpha < 0.5 else b)
    elif alpha == 0:
        out.copy_(a)
    elif alpha == 1:
        out.copy_(b)
    elif a.dtype == b.dtype == out.dtype == torch.float32 and a.device == b.device == out.device:
        torch.mul(a, 1 - alpha, out=out)  # the same two products and sum as below, one temporary fewer
        out.add_(b * alpha)
    else:
        out.copy_((1 - alpha) * a.float() + alpha * b.float())


def select_alpha(scores: pd.DataFrame, split: str = "val") -> tuple[float, pd.Series]:
    """PAINT's rule: the α with the best mean primary metric over tasks on ``split`` (ties: smallest α).

    ``scores`` is the tidy table (task, split, alpha, metric, value); only rows of ``split`` whose
    metric is a primary one (``top1`` or ``macro_ap``) are read. Returns (α, mean score per α).
    """
    rows = scores[(scores["split"] == split) & scores["metric"].isin(PRIMARY_METRIC.values())]
    if rows.empty:
        raise ValueError(f"no {split!r} scores with a primary metric "
                         f"{sorted(PRIMARY_METRIC.values())} to select α from")
    table = rows.pivot_table(index="alpha", columns="task", values="value", aggfunc="first")
    if table.isna().any().any():
        missing = [(a, t) for a in table.index for t in table.columns if pd.isna(table.loc[a, t])]
        raise ValueError(f"incomplete {split!r} scores, missing (alpha, task): {missing[:8]}")
    mean = table.mean(axis=1).sort_index()
    return float(mean.idxmax()), mean


@dataclass
class EvalTask:
    """A task of the sweep: its zero-shot head and its held-out splits (RGB, eval transform)."""

    name: str
    head: ZeroShotHead
    multilabel: bool
    val: Dataset
    test: Dataset | None = None


def _score(visual: nn.Module, task: EvalTask, split: str, dataset: Dataset, alpha: float,
           batch_size: int, device: torch.device, num_workers: int) -> dict[str, Any]:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    result = evaluate_zeroshot(ImageClassifier(visual, task.head), loader, "rgb", task.multilabel, device,
                               desc=f"{task.name}/{split} α={alpha:g}")
    metric = PRIMARY_METRIC[task.multilabel]
    return {"task": task.name, "split": split, "alpha": alpha, "metric": metric, "value": float(result[metric])}


def sweep(visual: nn.Module, zs: Mapping[str, torch.Tensor], ft: Mapping[str, torch.Tensor],
          tasks: Sequence[EvalTask], alphas: Sequence[float], *, device: torch.device | str = "cpu",
          batch_size: int = 256, num_workers: int = 0) -> tuple[pd.DataFrame, float]:
    """Evaluate θα for every α: all validation splits first, then select α, then the test splits.

    ``visual`` is overwritten with each θα and left at the selected one. Returns the tidy table and α.
    """
    device = torch.device(device)
    visual.to(device)
    rows = []
    for alpha in tqdm(alphas, desc="α sweep (val)"):
        load_interpolated(visual, zs, ft, alpha)
        rows += [_score(visual, t, "val", t.val, alpha, batch_size, device, num_workers) for t in tasks]
    alpha_star, _ = select_alpha(pd.DataFrame(rows), "val")
    for alpha in tqdm(alphas, desc="α sweep (test)"):
        load_interpolated(visual, zs, ft, alpha)
        rows += [_score(visual, t, "test", t.test, alpha, batch_size, device, num_workers)
                 for t in tasks if t.test is not None]
    load_interpolated(visual, zs, ft, alpha_star)
    return pd.DataFrame(rows, columns=["task", "split", "alpha", "metric", "value"]), alpha_star


# --- the stage -------------------------------------------------------------------------------------------

def _image_norm(visual: nn.Module) -> tuple[int, Sequence[float], Sequence[float]]:
    size = visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return (int(size), getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN,
            getattr(visual, "image_std", None) or OPENAI_DATASET_STD)


@dataclass(frozen=True)
class PatchResult:
    """A finished stage 1 folder: the selected α (and the paper's), the rule that chose it, the scores
    table (task, split, alpha, metric, value), the fine-tuning log and the run record."""

    out_dir: Path
    alpha: float
    paper_alpha: float
    criterion: str
    scores: pd.DataFrame
    log: pd.DataFrame | None
    run: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path) -> PatchResult:
        """Read a finished stage 1 folder."""
        folder = Path(folder)
        selected = json.loads((folder / "selected_alpha.json").read_text())
        run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
        return cls(folder, float(selected["alpha"]), float(selected.get("paper_alpha", PAPER_ALPHA)),
                   str(selected.get("criterion", "")), pd.read_csv(folder / "scores.csv"),
                   read_log(folder / "finetune" / LOG), run)


def patch_key(cfg: PatchConfig) -> str:
    """The run-store key of stage 1: its settings, the CLIP weights, its data and the package source."""
    return runstore.stage_key("patch", cfg, **_key_inputs(cfg))


def _key_inputs(cfg: PatchConfig) -> dict[str, Any]:
    return {"weights": clip_identity(cfg.clip, cache_folder(cfg.cache_dir)), "data": (cfg.task, *cfg.supported)}


def resume_identity(cfg: PatchConfig) -> dict[str, Any]:
    """What a resumed fine-tuning must share with the interrupted one (see :func:`mtmg.method.training.fit`)."""
    parts = runstore.key_parts("patch", cfg, **_key_inputs(cfg))
    return {k: parts[k] for k in ("settings", "weights", "data")}


def output_folder(cfg: PatchConfig, out_dir: str | Path | None = None) -> Path:
    """Where :func:`run_patching` writes: ``out_dir``, else the config's, else the run store's folder."""
    chosen = out_dir if out_dir is not None else cfg.out_dir
    return paths.resolve(chosen) if chosen else runstore.stage_folder(cfg.profile, "patch", patch_key(cfg))


def check_supported(cfg: PatchConfig) -> None:
    """Refuse settings stage 1 cannot run (before it writes anything)."""
    if cfg.augment not in AUGMENTATIONS:
        raise ValueError(f"augment {cfg.augment!r}: patching supports {list(AUGMENTATIONS)}")


def finetune(bundle: ClipBundle, head: ZeroShotHead, multilabel: bool, train: Dataset, cfg: PatchConfig,
             out_dir: Path, *, device: torch.device, resume: bool = False,
             identity: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Fine-tune ``bundle.model.visual`` through the frozen ``head``; returns the fine-tuned state dict.

    Everything but the image tower is frozen; ``train`` yields ``{"rgb", "target"}`` items. ``identity``
    (default: :func:`resume_identity`) is what a resumed run must share with the checkpoint's.
    """
    check_supported(cfg)
    visual = bundle.model.visual
    bundle.model.requires_grad_(False)
    visual.requires_grad_(True)
    head = head.to(device)

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return task_loss(multilabel, head(model(batch["rgb"])), batch["target"]), {}

    fit(visual, loss_fn, train, cfg.train, out_dir / "finetune", device=device, resume=resume,
        augment=random_d4(("rgb",)) if cfg.augment == "d4" else None, desc="patching",
        identity=resume_identity(cfg) if identity is None else identity)
    visual.eval()
    return {k: v.detach().clone() for k, v in visual.state_dict().items()}


def run_patching(cfg: PatchConfig, *, out_dir: str | Path | None = None, device: str = "auto",
                 resume: bool = False) -> PatchResult | None:
    """Stage 1 end to end: fine-tune, sweep α on validation splits, save endpoints and the patched tower.

    Writes into :func:`output_folder` under its lock and records :func:`patch_key` when done. Under
    ``torchrun`` every rank fine-tunes (data-parallel); rank 0 alone then sweeps α and writes the
    outputs, and the other ranks return ``None`` at once (a barrier could time out during a long sweep).
    """
    check_supported(cfg)
    validation.check_patch_config(cfg, "patch")  # names, options, roots: before anything is written
    out = output_folder(cfg, out_dir)
    if resume:
        check_resume(out / "finetune", cfg.train, resume_identity(cfg))
    with torch_threads(cfg.threads), runstore.writing("patch", out, patch_key(cfg), FILES, enabled=is_main()):
        _patch(cfg, out, resolve_device(device), resume)
    return PatchResult.load(out) if is_main() else None


def _patch(cfg: PatchConfig, out: Path, dev: torch.device, resume: bool) -> None:
    t0 = time.perf_counter()
    with main_first():  # under torchrun rank 0 prepares first; the other ranks reuse its caches
        if is_main():
            save_config(cfg, out / "config.yaml")
        cache = cache_folder(cfg.cache_dir)
        source = clip_source(cfg.clip, cache, dev)
        bundle = load_clip(cfg.clip.name, source, dev)
        visual = bundle.model.visual
        zs = {k: v.detach().clone() for k, v in visual.state_dict().items()}
        if is_main():
            checkpoint.atomic_write_text(out / "clip.json", json.dumps({
                "clip": asdict(cfg.clip), "weights": bundle.weights,
                "file": source if source is not None and Path(source).is_file() else None}, indent=2))
            checkpoint.atomic_save(zs, out / "zeroshot.pt")
        timings = {"load": time.perf_counter() - t0}

        t = time.perf_counter()
        tasks = []
        for spec in (cfg.task, *cfg.supported):
            val, test = held_out(spec, bundle.preprocess_val, cfg.carve)
            head, multilabel = head_for(bundle, spec, val, cache / HEADS)
            keep = ("rgb", "target")
            if test is not None:
                test = maybe_in_memory(test, cfg.in_memory, keep, f"{spec.name}/test")
            tasks.append(EvalTask(spec.name, head.to(dev), multilabel,
                                  maybe_in_memory(val, cfg.in_memory, keep, f"{spec.name}/val"), test))
        if cfg.augment == "paint":
            train = training_split(cfg.task, paint_train_transform(*_image_norm(visual)), cfg.carve)
        else:
            train = maybe_in_memory(training_split(cfg.task, bundle.preprocess_val, cfg.carve), cfg.in_memory,
                                    ("rgb", "target"), f"{cfg.task.name}/train")
        timings["data"] = time.perf_counter() - t

    t = time.perf_counter()
    ft = finetune(bundle, tasks[0].head, tasks[0].multilabel, train, cfg, out, device=dev, resume=resume)
    if not is_main():
        return
    checkpoint.atomic_save(ft, out / "finetuned.pt")
    timings["finetune"] = time.perf_counter() - t

    t = time.perf_counter()
    scores, alpha = sweep(visual, zs, ft, tasks, cfg.alphas, device=dev, batch_size=cfg.eval_batch_size,
                          num_workers=cfg.train.num_workers)
    timings["sweep"] = time.perf_counter() - t
    checkpoint.atomic_write_text(out / "scores.csv", scores.to_csv(index=False))
    _, val_mean = select_alpha(scores, "val")
    checkpoint.atomic_save({k: v.detach().cpu() for k, v in visual.state_dict().items()}, out / "patched.pt")
    checkpoint.atomic_write_text(out / "selected_alpha.json", json.dumps({
        "alpha": alpha, "paper_alpha": PAPER_ALPHA,
        "criterion": "max mean validation " + "/".join(sorted(set(scores["metric"])))
                     + f" over {[t.name for t in tasks]}",
        "val_mean_by_alpha": {f"{a:g}": float(v) for a, v in val_mean.items()}}, indent=2))
    timings["total"] = time.perf_counter() - t0
    checkpoint.atomic_write_text(out / "run.json", json.dumps(
        {"stage": "patch", "device": str(dev), "seconds": timings, "alpha": alpha}, indent=2))


def load_patched(out_dir: str | Path, device: torch.device | str = "cpu",
                 cache_dir: str | Path | None = None) -> tuple[ClipBundle, float]:
    """The CLIP model of a finished stage 1 with its image tower at the selected α, and that α."""
    out = Path(out_dir)
    for name in ("clip.json", "patched.pt", "selected_alpha.json"):
        if not (out / name).is_file():
            raise FileNotFoundError(f"{out / name}: stage 1 output missing; run `python -m mtmg patch` "
                                    "first or point teacher_dir at its output folder")
    info = json.loads((out / "clip.json").read_text())
    if info.get("file") and Path(info["file"]).is_file():
        bundle = load_clip(info["clip"]["name"], info["file"], device)
    else:
        bundle = load_clip_spec(ClipSpec(**info["clip"]), Path(cache_dir) if cache_dir else paths.cache_dir(), device)
    if bundle.weights != info["weights"]:
        raise ValueError(f"{out / 'clip.json'}: stage 1 started from CLIP weights {info['weights']} but "
                         f"{bundle.weights} were found now; re-run stage 1 (python -m mtmg patch) with this setup")
    bundle.model.visual.load_state_dict(checkpoint.load(out / "patched.pt"))
    return bundle, float(json.loads((out / "selected_alpha.json").read_text())["alpha"])

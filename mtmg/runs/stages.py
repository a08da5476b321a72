"""The stages around the two training stages: zero-shot CLIP on every dataset of a profile (before and
after patching) and the test-split embeddings of the modality-gap analysis.

Like :func:`mtmg.method.patching.run_patching` and :func:`mtmg.method.alignment.run_alignment`, each writes one
folder, and each result type reads a finished folder back with ``load(folder)``.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from mtmg.core import checkpoint, runstore
from mtmg.core.config import ZeroShotConfig
from mtmg.core.device import resolve_device
from mtmg.data.tasks import HEADS, cache_folder, head_for, ms_resize, open_split, sample_ids, task_info
from mtmg.evaluation.embeddings import embed
from mtmg.evaluation.scoring import score_zeroshot
from mtmg.method.alignment import load_student
from mtmg.method.clip_weights import clip_identity, load_clip_spec
from mtmg.method.patching import load_patched
from mtmg.models.clip import tower_copy
from mtmg.runs.profiles import Profile, unique_specs

ZEROSHOT_FILES = ("results.json", "results.csv")
EMBEDDING_FILES = ("text.pt", "rgb_zeroshot.pt", "rgb_patched.pt", "ms_student.pt", "meta.json")


# --- zero-shot CLIP on every dataset ---------------------------------------------------------------------

class ZeroShotResult(Mapping):
    """``results.json`` of a zero-shot folder (read like the mapping it is: ``result["datasets"]``) and
    the folder it came from."""

    def __init__(self, out_dir: Path, data: Mapping[str, Any]) -> None:
        self.out_dir, self._data = Path(out_dir), dict(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    @classmethod
    def load(cls, folder: str | Path) -> ZeroShotResult:
        """Read a finished zero-shot folder."""
        return cls(Path(folder), json.loads((Path(folder) / "results.json").read_text()))


def zeroshot_datasets(cfg: ZeroShotConfig) -> list[tuple[str, Any]]:
    """(role, spec) of every dataset the zero-shot stage scores, remote-sensing tasks first."""
    return ([("remote sensing", s) for s in unique_specs((*cfg.tasks, *cfg.extra_tasks))]
            + [("supported", s) for s in cfg.supported])


def zeroshot_key(cfg: ZeroShotConfig, upstream: tuple[str, ...] = ()) -> str:
    """Run-store key of the zero-shot stage: config, CLIP weights, data, package source and, for the
    patched tower, the key of the stage 1 folder."""
    weights = clip_identity(cfg.clip, cache_folder(cfg.cache_dir))
    return runstore.stage_key("zeroshot", cfg, upstream=upstream, weights=weights,
                              data=[s for _, s in zeroshot_datasets(cfg)])


def run_zeroshot(cfg: ZeroShotConfig, out_dir: Path, *, device: str = "auto",
                 visual_state: Mapping[str, torch.Tensor] | None = None, tower: str = "zero-shot") -> ZeroShotResult:
    """Score ``cfg.clip`` (its image tower replaced by ``visual_state`` if given) zero-shot on every
    dataset of ``cfg`` (:func:`mtmg.evaluation.scoring.score_zeroshot`, on the test split, else validation); write
    ``results.json`` (per-class scores, confusion matrices) and ``results.csv``."""
    dev = resolve_device(device)
    cache = cache_folder(cfg.cache_dir)
    bundle = load_clip_spec(cfg.clip, cache, dev)
    if visual_state is not None:
        bundle.model.visual.load_state_dict(visual_state)
    entries = []
    for role, spec in zeroshot_datasets(cfg):
        split = spec.test_split or spec.val_split or spec.train_split
        score = score_zeroshot(bundle, spec, split, heads_dir=cache / HEADS, device=dev, batch_size=cfg.batch_size,
                               num_workers=cfg.num_workers)
        per_class = score.metrics["per_class_ap" if score.multilabel else "per_class_accuracy"]
        entries.append({
            "dataset": spec.name, "root": spec.root, "split": split, "role": role,
            "multilabel": score.multilabel, "classes": score.classes, "classnames": score.classnames,
            "templates": score.templates, "n_samples": score.n_samples, "metric": score.metric,
            "value": score.value, "chance": None if score.multilabel else 1.0 / len(score.classnames),
            "per_class": [None if np.isnan(v) else float(v) for v in per_class],
            "value_authors": score.metrics.get("macro_ap_authors"),
            "classes_scored": score.metrics.get("classes_scored"),
            "confusion_matrix": score.metrics.get("confusion_matrix"),
        })
    results = {"profile": cfg.profile, "model": bundle.model_name, "weights": bundle.weights, "tower": tower,
               "device": str(dev), "datasets": entries}
    checkpoint.atomic_write_text(out_dir / "results.json", json.dumps(results, indent=1) + "\n")
    table = pd.DataFrame([{k: e[k] for k in ("dataset", "role", "split", "n_samples", "metric", "value", "chance")}
                          for e in entries])
    checkpoint.atomic_write_text(out_dir / "results.csv", table.to_csv(index=False))
    return ZeroShotResult(out_dir, results)


# --- embeddings of the modality-gap analysis -------------------------------------------------------------

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

    @classmethod
    def load(cls, folder: str | Path) -> Embeddings:
        """Read the files :func:`compute_embeddings` wrote."""
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        text = checkpoint.load(folder / "text.pt")
        sets = {name: checkpoint.load(folder / f"{name}.pt") for name in ("rgb_zeroshot", "rgb_patched", "ms_student")}
        return cls(
            text=text["embeddings"], text_labels=text["labels"], class_text=text["class_embeddings"],
            logit_scale=float(text["logit_scale"]), rgb_zeroshot=sets["rgb_zeroshot"]["embeddings"],
            rgb_patched=sets["rgb_patched"]["embeddings"], ms_student=sets["ms_student"]["embeddings"],
            targets=sets["rgb_patched"]["targets"], ids=list(meta["ids"]), classnames=list(meta["classnames"]),
            classes=list(meta["classes"]), dataset=meta["dataset"], root=meta["root"], split=meta["split"],
            multilabel=bool(meta["multilabel"]), level=meta["level"], alpha=float(meta["alpha"]),
            n_total=int(meta["n_total"]), out_dir=folder)


def subset_indices(n: int, max_items: int, seed: int) -> list[int]:
    """All of ``range(n)``, or a fixed random ``max_items`` of them in ascending order."""
    if n <= max_items:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_items].tolist())


def embeddings_key(prof: Profile, patch_key: str, align_key: str) -> str:
    """Run-store key of the embeddings: their settings (the torch threads included), the stage 1 and 2
    folders they read, the data."""
    emb = prof.embeddings
    settings = {"split": emb.split, "max": emb.max_items, "seed": emb.seed, "ms_size": prof.align.ms_size,
                "eval_batch_size": prof.align.eval_batch_size, "threads": prof.threads}
    return runstore.stage_key("embeddings", settings, upstream=(patch_key, align_key), data=(prof.embed_data,))


@torch.no_grad()
def compute_embeddings(prof: Profile, patch_dir: Path, align_dir: Path, out_dir: Path) -> Embeddings:
    """Embed the text prompts, the RGB composites (zero-shot and patched CLIP, from ``patch_dir``) and the
    MS views (the student of ``align_dir``) of the profile's paired test split."""
    dev = resolve_device(prof.device)
    bundle, alpha = load_patched(patch_dir, dev, prof.cache)
    patched = bundle.model.visual.eval()
    zeroshot = tower_copy(patched, checkpoint.load(patch_dir / "zeroshot.pt"))
    data = open_split(prof.embed_data, prof.embeddings.split, bundle.preprocess_val, ms_resize(prof.align.ms_size))
    head, multilabel = head_for(bundle, prof.embed_data, data, prof.cache / HEADS)
    names, templates, _ = task_info(prof.embed_data, data)
    prompts = [t.format(c, c=c) for c in names for t in templates]
    text = bundle.model.encode_text(bundle.tokenizer(prompts).to(dev), normalize=True).float().cpu()
    student = load_student(align_dir, prof.align.student).to(dev)

    indices = subset_indices(len(data), prof.embeddings.max_items, prof.embeddings.seed)
    loader = DataLoader(Subset(data, indices), batch_size=prof.align.eval_batch_size, shuffle=False,
                        num_workers=prof.align.train.num_workers)
    outs, targets = embed({"rgb_zeroshot": (zeroshot, "rgb"), "rgb_patched": (patched, "rgb"),
                           "ms_student": (student, "ms")}, loader, dev, desc="embeddings")
    checkpoint.atomic_save({"embeddings": text, "labels": torch.arange(len(names)).repeat_interleave(len(templates)),
                            "class_embeddings": head.weight.cpu(), "logit_scale": head.logit_scale.cpu()},
                           out_dir / "text.pt")
    for name in ("rgb_zeroshot", "rgb_patched", "ms_student"):
        checkpoint.atomic_save({"embeddings": outs[name], "targets": targets}, out_dir / f"{name}.pt")
    meta = {"dataset": prof.embed_data.name, "root": prof.embed_data.root, "split": prof.embeddings.split,
            "ids": sample_ids(data, indices), "classes": list(data.classes), "classnames": names,
            "templates": templates, "multilabel": multilabel, "level": getattr(data, "level", "L1C"),
            "alpha": alpha, "n_total": len(data)}
    checkpoint.atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=1) + "\n")
    return Embeddings.load(out_dir)

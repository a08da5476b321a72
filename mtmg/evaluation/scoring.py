"""Zero-shot evaluation of an image classifier (encoder + frozen head) over a loader, and of a CLIP
model on one split of a task."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from mtmg.core.config import DataSpec
from mtmg.data.tasks import head_for, open_split, task_info
from mtmg.evaluation import metrics
from mtmg.evaluation.embeddings import embed
from mtmg.evaluation.metrics import PRIMARY_METRIC
from mtmg.models.clip import ClipBundle, ImageClassifier


def evaluate_zeroshot(
    classifier: nn.Module,
    loader: Iterable[dict],
    key: str = "rgb",
    multilabel: bool = False,
    device: str | torch.device | None = None,
    desc: str = "zero-shot",
    empty_class: str = "drop",
) -> dict:
    """Run ``classifier`` on ``batch[key]`` and score its logits (fp32: the head runs outside autocast).

    Single-label: {"top1", "per_class_accuracy" (list, NaN for absent classes), "confusion_matrix",
    "n_samples"}. Multi-label: {"macro_ap" (classes without positives handled by ``empty_class``, see
    :mod:`mtmg.evaluation.metrics`), "per_class_ap", "classes_scored" (classes with a positive), "macro_ap_authors"
    (:func:`mtmg.evaluation.metrics.authors_macro_average_precision`, the paper's convention), "n_samples"}.
    Values are fractions in [0, 1]; AP uses the raw logits.
    """
    outputs, targets = embed({"logits": (classifier, key)}, loader, device, desc)
    return score_logits(outputs["logits"], targets, multilabel, empty_class)


def score_logits(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool, empty_class: str = "drop") -> dict:
    """The scores of :func:`evaluate_zeroshot` from (N, C) logits and their targets."""
    if multilabel:
        return {
            "macro_ap": metrics.macro_average_precision(logits, targets, empty_class),
            "per_class_ap": metrics.average_precision_per_class(logits, targets, empty_class).tolist(),
            "classes_scored": metrics.classes_scored(targets),
            "macro_ap_authors": metrics.authors_macro_average_precision(logits, targets),
            "n_samples": int(targets.shape[0]),
        }
    num_classes = logits.shape[1]
    return {
        "top1": metrics.top1_accuracy(logits, targets),
        "per_class_accuracy": metrics.per_class_accuracy(logits, targets, num_classes).tolist(),
        "confusion_matrix": metrics.confusion_matrix(logits, targets, num_classes).tolist(),
        "n_samples": int(targets.shape[0]),
    }


# --- zero-shot scoring -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ZeroShotScore:
    """One CLIP model scored zero-shot on one split: the prompts used and every metric of
    :func:`evaluate_zeroshot` (``metric`` names the headline one, ``value`` its value)."""

    spec: DataSpec
    split: str
    classes: list[str]
    classnames: list[str]
    templates: list[str]
    multilabel: bool
    n_samples: int
    metric: str
    value: float
    metrics: dict[str, Any]
    skipped: list[Any] = field(default_factory=list)
    """Files left out under ``on_error="skip"`` (:class:`mtmg.data.datasets.base.Skipped`: path, reason)."""


def score_zeroshot(bundle: ClipBundle, spec: DataSpec, split: str, *, heads_dir: Path | None,
                   device: torch.device | str = "cpu", batch_size: int = 256, num_workers: int = 0) -> ZeroShotScore:
    """Score ``bundle`` zero-shot on the RGB view of ``spec``'s ``split`` (``spec.options`` reach the
    reader: ``on_error``, ``split_file``, ...); prompts come from :func:`mtmg.data.tasks.task_info`."""
    device = torch.device(device)
    data = open_split(spec, split, bundle.preprocess_val)
    head, multilabel = head_for(bundle, spec, data, heads_dir)
    names, templates, _ = task_info(spec, data)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    metrics = evaluate_zeroshot(ImageClassifier(bundle.model.visual, head.to(device)), loader, "rgb",
                                multilabel, device, desc=f"zero-shot {spec.name}/{split}")
    n = int(metrics.pop("n_samples"))
    metric = PRIMARY_METRIC[multilabel]
    return ZeroShotScore(spec, split, list(data.classes), names, templates, multilabel, n, metric,
                         float(metrics[metric]), metrics, list(getattr(data, "skipped", [])))

"""Zero-shot evaluation of an image classifier (encoder + frozen head) over a loader."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mtmg.evaluation import metrics
from mtmg.evaluation.embeddings import run_encoder


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
    logits, targets = run_encoder(classifier, loader, key, device, desc)
    return score_logits(logits, targets, multilabel, empty_class)


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

"""Zero-shot evaluation of an image classifier (encoder + frozen head) over a loader."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from mtmg import metrics
from mtmg.embeddings import run_encoder


def evaluate_zeroshot(
    classifier: nn.Module,
    loader: Iterable[dict],
    key: str = "rgb",
    multilabel: bool = False,
    device: str | torch.device | None = None,
    desc: str = "zero-shot",
) -> dict:
    """Run ``classifier`` on ``batch[key]`` and score its logits.

    Single-label: {"top1", "per_class_accuracy" (list, NaN for absent classes), "confusion_matrix",
    "n_samples"}. Multi-label: {"macro_ap", "per_class_ap" (list, NaN for classes without positives),
    "n_samples"}. Values are fractions in [0, 1]; AP uses the raw logits.
    """
    logits, targets = run_encoder(classifier, loader, key, device, desc)
    if multilabel:
        return {
            "macro_ap": metrics.macro_average_precision(logits, targets),
            "per_class_ap": metrics.average_precision_per_class(logits, targets).tolist(),
            "n_samples": int(targets.shape[0]),
        }
    num_classes = logits.shape[1]
    return {
        "top1": metrics.top1_accuracy(logits, targets),
        "per_class_accuracy": metrics.per_class_accuracy(logits, targets, num_classes).tolist(),
        "confusion_matrix": metrics.confusion_matrix(logits, targets, num_classes).tolist(),
        "n_samples": int(targets.shape[0]),
    }

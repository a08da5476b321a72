"""The losses of the two training stages: the task loss through a frozen zero-shot head and the
feature loss between student and teacher embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mtmg.core.config import FEATURE_LOSSES


def task_loss(multilabel: bool, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits on multi-hot targets, cross-entropy on class indices."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return F.cross_entropy(logits.float(), target)


def feature_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mse`` on raw embeddings, or ``cosine`` distance (1 − cos), averaged over the batch."""
    if kind == "mse":
        return F.mse_loss(student.float(), teacher.float())
    if kind == "cosine":
        return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()
    raise ValueError(f"feature_loss {kind!r}: use one of {list(FEATURE_LOSSES)}")

"""Evaluation metrics as pure functions on tensors or arrays; values are fractions in [0, 1].

Conventions
- Classification: ``scores`` are (N, C) logits (the prediction is the arg-max, the lowest class index on
  ties) or (N,) predicted labels; ``targets`` are (N,) integer labels.
- Multi-label: average precision (AP) of one class is computed exactly as scikit-learn's
  ``average_precision_score``: AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, so tied
  scores form one threshold. A class with no positive sample has no AP: by default (``empty_class="drop"``)
  it is reported as NaN and left out of the macro mean, and :func:`classes_scored` says how many classes
  the mean covers; ``empty_class="zero"`` counts it as AP 0, as scikit-learn and torchmetrics do (on a toy
  case with one empty class of two: 1.0 against 0.5).
- The authors' convention (:func:`authors_macro_average_precision`) is torchmetrics'
  ``multilabel_average_precision`` on ``100 * cos`` logits as the reference code produced them (bf16 under
  autocast): torchmetrics applies a sigmoid to scores outside [0, 1], which saturates to exactly 1.0 in
  float32 and bf16 at that scale, so most scores tie and the AP falls toward the class prevalence. It is
  reported beside the correct macro AP so the paper's numbers can be compared, never instead of it.
- Retrieval uses cosine similarity (inputs are L2-normalised here). A relevant item counts as retrieved at
  rank r (0-based) where r is the number of *non-relevant* items whose similarity is greater than *or
  equal to* it: ties count against the query (the conservative rule), so recall never depends on the
  order of the gallery. recall@k is the fraction of queries with a relevant item at rank < k.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20, 50)
PRIMARY_METRIC = {False: "top1", True: "macro_ap"}
"""The headline metric of single-label (False) and multi-label (True) tasks, for every stage and table."""
_CHUNK = 1024

ArrayLike = np.ndarray | torch.Tensor | Sequence


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _predictions_and_targets(scores: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    scores, targets = _np(scores), _np(targets)
    if targets.ndim != 1:
        raise ValueError(f"Single-label targets must be (N,) class indices, got shape {targets.shape}.")
    preds = scores.argmax(axis=1) if scores.ndim == 2 else scores
    if preds.shape != targets.shape:
        raise ValueError(f"{preds.shape[0]} predictions for {targets.shape[0]} targets.")
    return preds.astype(np.int64), targets.astype(np.int64)


def _num_classes(scores: ArrayLike, preds: np.ndarray, targets: np.ndarray, num_classes: int | None) -> int:
    if num_classes is not None:
        return num_classes
    if _np(scores).ndim == 2:
        return _np(scores).shape[1]
    return int(max(preds.max(initial=-1), targets.max(initial=-1))) + 1


def top1_accuracy(scores: ArrayLike, targets: ArrayLike) -> float:
    """Fraction of samples whose arg-max class is the target."""
    preds, targets = _predictions_and_targets(scores, targets)
    if targets.size == 0:
        raise ValueError("top1_accuracy of an empty set is undefined.")
    return float((preds == targets).mean())


def confusion_matrix(scores: ArrayLike, targets: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    preds, targets = _predictions_and_targets(scores, targets)
    c = _num_classes(scores, preds, targets, num_classes)
    return np.bincount(targets * c + preds, minlength=c * c).reshape(c, c).astype(np.int64)


def per_class_accuracy(scores: ArrayLike, targets: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """(C,) accuracy within each true class (recall per class); NaN for classes without samples."""
    cm = confusion_matrix(scores, targets, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def _binary_average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    order = np.argsort(-score, kind="mergesort")
    score, positive = score[order], positive[order]
    last_of_threshold = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    tps = np.cumsum(positive)[last_of_threshold]
    precision = tps / (last_of_threshold + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


EMPTY_CLASS_RULES = ("drop", "zero")


def average_precision_per_class(scores: ArrayLike, targets: ArrayLike, empty_class: str = "drop") -> np.ndarray:
    """(C,) average precision of each class from (N, C) scores and (N, C) multi-hot targets.

    A class without positive samples gets NaN (``empty_class="drop"``) or 0 (``"zero"``, the rule of
    scikit-learn and torchmetrics).
    """
    if empty_class not in EMPTY_CLASS_RULES:
        raise ValueError(f"empty_class {empty_class!r}: use one of {EMPTY_CLASS_RULES}")
    scores, targets = _np(scores).astype(np.float64), _np(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"Need (N, C) scores and multi-hot targets of one shape, got {scores.shape}, {targets.shape}.")
    if not np.isfinite(scores).all():
        raise ValueError("Scores contain NaN or infinite values.")
    positive = targets > 0.5
    empty = np.nan if empty_class == "drop" else 0.0
    return np.array([_binary_average_precision(positive[:, c], scores[:, c]) if positive[:, c].any() else empty
                     for c in range(scores.shape[1])])


def resampled_macro_average_precision(scores: ArrayLike, targets: ArrayLike, counts: np.ndarray) -> np.ndarray:
    """(B,) macro AP (``drop`` rule) of B resamples of the items, each given as a row of ``counts`` (B, N):
    how many times each item is drawn. Equal to :func:`macro_average_precision` on the items repeated
    that many times (a repeated item ties with itself), without building the resamples: every class's
    ranking is sorted once."""
    scores, positive = _np(scores).astype(np.float64), _np(targets) > 0.5
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] != len(scores):
        raise ValueError(f"counts: need (B, {len(scores)}) draws per item, got {counts.shape}")
    from scipy import sparse  # imported here: only the bootstrap needs it, and it loads much of scipy

    n = len(scores)
    per_class = np.full((len(counts), scores.shape[1]), np.nan)
    for c in np.flatnonzero(positive.any(axis=0)):
        order = np.argsort(-scores[:, c], kind="mergesort")
        score, pos = scores[order, c], positive[order, c]
        ends = np.r_[np.flatnonzero(np.diff(score)), n - 1]  # last item of each threshold
        # only thresholds holding a positive move the recall: sum the draws between their ends
        hit_ends = np.unique(ends[np.searchsorted(ends, np.flatnonzero(pos))])
        segment = np.searchsorted(hit_ends, np.arange(n))  # items after the last such end: len(hit_ends)
        kept = segment < len(hit_ends)
        rows = np.r_[order[kept], order[pos]]
        cols = np.r_[segment[kept], len(hit_ends) + segment[pos]]
        sums = np.asarray((sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, 2 * len(hit_ends)))
                           .T @ counts.T).T)
        drawn, tps = np.cumsum(sums[:, :len(hit_ends)], axis=1), np.cumsum(sums[:, len(hit_ends):], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(drawn > 0, tps / drawn, 0.0)
            ap = np.sum(np.diff(tps / tps[:, -1:], axis=1, prepend=0.0) * precision, axis=1)
        per_class[:, c] = np.where(tps[:, -1] > 0, ap, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without any positive: NaN
        return np.nanmean(per_class, axis=1)


def classes_scored(targets: ArrayLike) -> int:
    """Number of classes with at least one positive in (N, C) multi-hot ``targets``: the classes a macro AP
    under the ``drop`` rule averages over."""
    return int((_np(targets) > 0.5).any(axis=0).sum())


def macro_average_precision(scores: ArrayLike, targets: ArrayLike, empty_class: str = "drop") -> float:
    """Mean AP over the classes (those with at least one positive under ``"drop"``, NaN if none has;
    all of them under ``"zero"``)."""
    ap = average_precision_per_class(scores, targets, empty_class)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


AUTHORS_LOGIT_DTYPE = "bfloat16"


def authors_macro_average_precision(logits: ArrayLike, targets: ArrayLike,
                                    dtype: str | torch.dtype = AUTHORS_LOGIT_DTYPE) -> float:
    """The authors' macro AP: torchmetrics' ``multilabel_average_precision(average="macro")`` on logits
    held in ``dtype`` (bf16, as their head ran under autocast).

    As torchmetrics: the logits are cast to ``dtype``; if any lies outside [0, 1] the sigmoid is applied
    in that dtype (at ``100 * cos`` it rounds to exactly 1.0 for most samples, which then tie); tied
    scores form one threshold; a class without positives counts as AP 0. Not the correct AP: see
    :func:`macro_average_precision`.
    """
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    t = logits.detach().cpu() if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
    t = t.to(dtype)
    if bool(((t < 0) | (t > 1)).any()):
        t = t.sigmoid()
    return macro_average_precision(t.double().numpy(), targets, empty_class="zero")


def _normalized(x: ArrayLike) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"Embeddings must be (N, D), got shape {tuple(t.shape)}.")
    return F.normalize(t.float().cpu(), dim=1)


def _recalls(ranks: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    return {int(k): float((ranks < k).float().mean()) for k in ks}


def recall_at_k(query: ArrayLike, gallery: ArrayLike, ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """Paired retrieval: the only relevant gallery item of query i is gallery item i.

    Returns {k: recall@k}, the share of queries whose :func:`retrieval_ranks` is below k.
    """
    return _recalls(retrieval_ranks(query, gallery), ks)


def retrieval_ranks(query: ArrayLike, gallery: ArrayLike) -> torch.Tensor:
    """(N,) 0-based rank of gallery item i for query i: the number of other gallery items with a cosine
    similarity >= its own (ties count against the query)."""
    q, g = _normalized(query), _normalized(gallery)
    if q.shape != g.shape:
        raise ValueError(f"Paired retrieval needs query and gallery of one shape, got {tuple(q.shape)}, "
                         f"{tuple(g.shape)}.")
    ranks = torch.empty(q.shape[0], dtype=torch.long)
    for start in range(0, q.shape[0], _CHUNK):
        sims = q[start:start + _CHUNK] @ g.T
        rows = torch.arange(sims.shape[0])
        positive = sims[rows, rows + start]
        ranks[start:start + _CHUNK] = (sims >= positive[:, None]).sum(dim=1) - 1
    return ranks


def retrieval_recalls(a: ArrayLike, b: ArrayLike, ks: Sequence[int] = DEFAULT_KS,
                      names: tuple[str, str] = ("a", "b")) -> dict[str, dict[int, float]]:
    """Paired recall@k in both directions: {"a->b": ..., "b->a": ...} (keys use ``names``)."""
    x, y = names
    return {f"{x}->{y}": recall_at_k(a, b, ks), f"{y}->{x}": recall_at_k(b, a, ks)}


def headline_score(scores: ArrayLike, targets: ArrayLike, multilabel: bool) -> float:
    """The :data:`PRIMARY_METRIC` of a task: macro AP for multi-label targets, else top-1 accuracy."""
    return macro_average_precision(scores, targets) if multilabel else top1_accuracy(scores, targets)

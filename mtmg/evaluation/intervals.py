"""95 % percentile-bootstrap intervals over test items, for single scores and paired differences.

One resampling scheme serves every number of the book: a resample draws N test items with replacement,
given as a row of draw counts (how many times each item is drawn), and a *statistic* maps a block of
such rows (B, N) to B values. Top-1 accuracy and recall@k are means of per-item hits (a 0/1 value per
test item or query); macro AP is recomputed on each resample from the item scores
(:func:`mtmg.evaluation.metrics.resampled_macro_average_precision`). A difference between two models
scored on the same items is *paired*: both are scored on the same resample, so the interval reflects
how few test items there are, not how different the two models' items are.

- :func:`bootstrap`: any statistic of the draw counts;
- :func:`score_interval`, :func:`difference_interval`: scores (N, C) of one or more fits per model
  (the mean over fits, e.g. few-shot draws), top-1 or macro AP;
- :func:`hit_interval`, :func:`hit_difference_interval`: per-item hits (top-1, recall@k);
- :func:`retrieval_hits`, :func:`top1_hits`: those hits from embeddings or scores.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mtmg.evaluation import metrics

LEVEL = 0.95
BLOCK_DRAWS = 2 ** 23
"""Resamples are drawn in blocks of at most this many draw counts (64 MiB of float64)."""

Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Interval:
    """An estimate on all test items and its 95 % percentile-bootstrap interval (same unit)."""

    value: float
    low: float
    high: float
    n: int

    @property
    def clear(self) -> bool:
        """Whether the interval excludes zero (for a difference: the test items resolve it)."""
        return bool(self.low > 0 or self.high < 0)

    def scaled(self, factor: float) -> Interval:
        """The interval with every bound multiplied by ``factor`` (100: fractions to percent)."""
        return Interval(self.value * factor, self.low * factor, self.high * factor, self.n)

    def text(self, digits: int = 1, signed: bool = False) -> str:
        """``"38.0 (24.0 to 52.0)"``; ``signed`` writes ``+`` before positive numbers (differences)."""
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        return f"{f.format(self.value)} ({f.format(self.low)} to {f.format(self.high)})"


def bootstrap_counts(n: int, n_boot: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``n_boot`` resamples of ``n`` items as blocks of draw-count rows (B, n), drawn with ``seed``."""
    if n < 1:
        raise ValueError("bootstrap: need at least one test item")
    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_DRAWS // n)
    for start in range(0, n_boot, block):
        rows = min(block, n_boot - start)
        drawn = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
        yield np.bincount(drawn.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def bootstrap(statistic: Statistic, n: int, *, n_boot: int = 1000, seed: int = 0, level: float = LEVEL) -> Interval:
    """``statistic`` on all ``n`` items and the percentile interval of its ``n_boot`` resamples (NaN
    resamples, e.g. a macro AP without any positive, are left out)."""
    if not 0 < level < 1:
        raise ValueError(f"bootstrap: level must be in (0, 1), got {level}")
    if n < 1:
        raise ValueError("bootstrap: need at least one test item")
    value = float(statistic(np.ones((1, n)))[0])
    boot = np.concatenate([statistic(c) for c in bootstrap_counts(n, n_boot, seed)])
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(boot, [tail, 100 - tail])
    return Interval(value, float(low), float(high), n)


def hit_statistic(hits: np.ndarray) -> Statistic:
    """The mean of per-item values (0/1 hits, or hit rates over fits) on each resample."""
    hits = np.asarray(hits, dtype=np.float64)
    return lambda counts: counts @ hits / len(hits)


def score_statistic(scores: Sequence[np.ndarray], targets: np.ndarray, multilabel: bool) -> Statistic:
    """Top-1 accuracy (single-label) or macro AP (multi-label) of score arrays (N, C), the mean over
    the arrays (fits) on each resample."""
    if not len(scores):
        raise ValueError("give at least one score array")
    targets = np.asarray(targets)
    if any(len(s) != len(targets) for s in scores):
        raise ValueError(f"every score array needs one row per test item ({len(targets)})")
    if not multilabel:
        return hit_statistic(np.mean([top1_hits(s, targets) for s in scores], axis=0))
    return lambda counts: np.mean([metrics.resampled_macro_average_precision(s, targets, counts) for s in scores],
                                  axis=0)


def score_interval(scores: Sequence[np.ndarray], targets: np.ndarray, multilabel: bool, *, n_boot: int = 1000,
                   seed: int = 0) -> Interval:
    """Top-1 or macro AP (fraction) of one model, mean over its fits, with its 95 % interval."""
    return bootstrap(score_statistic(scores, targets, multilabel), len(targets), n_boot=n_boot, seed=seed)


def difference_interval(scores_a: Sequence[np.ndarray], scores_b: Sequence[np.ndarray], targets: np.ndarray,
                        multilabel: bool, *, n_boot: int = 1000, seed: int = 0) -> Interval:
    """Model ``a``'s score minus model ``b``'s on the same test items, with the 95 % paired interval."""
    if not multilabel:  # one statistic of the per-item differences: a single product per resample
        hits = (np.mean([top1_hits(s, targets) for s in scores_a], axis=0)
                - np.mean([top1_hits(s, targets) for s in scores_b], axis=0))
        return bootstrap(hit_statistic(hits), len(targets), n_boot=n_boot, seed=seed)
    a, b = score_statistic(scores_a, targets, True), score_statistic(scores_b, targets, True)
    return bootstrap(lambda counts: a(counts) - b(counts), len(targets), n_boot=n_boot, seed=seed)


def hit_interval(hits: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> Interval:
    """The mean of per-item hits (top-1, recall@k) with its 95 % interval."""
    return bootstrap(hit_statistic(hits), len(hits), n_boot=n_boot, seed=seed)


def hit_difference_interval(hits_a: np.ndarray, hits_b: np.ndarray, *, n_boot: int = 1000,
                            seed: int = 0) -> Interval:
    """Mean of ``hits_a`` minus mean of ``hits_b`` on the same items, with the 95 % paired interval."""
    hits_a, hits_b = np.asarray(hits_a, dtype=np.float64), np.asarray(hits_b, dtype=np.float64)
    if hits_a.shape != hits_b.shape:
        raise ValueError(f"paired hits need one shape, got {hits_a.shape} and {hits_b.shape}")
    return hit_interval(hits_a - hits_b, n_boot=n_boot, seed=seed)


def top1_hits(scores: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N,) 1.0 where the highest score is the target class, else 0.0."""
    s = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    t = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    return (np.argmax(s, axis=1) == t).astype(np.float64)


def retrieval_hits(query: np.ndarray | torch.Tensor, gallery: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """(N,) 1.0 where query i's paired gallery item i ranks in the top ``k`` (ties count against the
    query, as :func:`mtmg.evaluation.metrics.recall_at_k`, whose recall@k is the mean of these hits)."""
    return metrics.retrieval_ranks(query, gallery).lt(k).double().numpy()

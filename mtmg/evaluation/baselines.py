"""What the probe numbers are worth: a baseline without any learned encoder, and a second probe protocol.

- **Band statistics** (:class:`BandStatistics`): the mean and standard deviation of each of the 13 bands
  of the MS view, 26 numbers per tile, given to the same probe as the embeddings. An encoder whose probe
  does not beat it has learned nothing a linear classifier could not read from the bands' averages.
- **CLIP_benchmark's linear-probe protocol** (:func:`benchmark_probe`, after ``clip_benchmark.metrics.
  linear_probe`` of CLIP_benchmark 1.6): unit-norm features without standardisation; one linear layer
  (bias included) trained with AdamW, learning rate 0.1 under a cosine schedule without warm-up, 10 epochs
  in shuffled batches of 64, cross-entropy; the weight decay searched on validation over 97 values from
  10⁻⁶ to 10² (7 spread values, then a bisection around the best); with the whole training split, the
  final layer is refitted on train + validation (few-shot fits train on their tiles only). The project's
  own probe (:mod:`mtmg.evaluation.probe`) standardises the features and fits scikit-learn's logistic
  regression with C chosen on validation, without refitting. Differences between the two protocols are
  differences of protocol, not of the encoders.

CLIP_benchmark is single-label; for multi-label data the same protocol here trains with binary
cross-entropy and searches the weight decay by validation macro AP. Few-shot training tiles are the
project's draws (:func:`mtmg.evaluation.probe.few_shot_indices`), so both protocols see the same tiles.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mtmg.evaluation import metrics
from mtmg.evaluation.probe import ALL, Split, few_shot_curve, few_shot_indices, scores_name

BENCHMARK_LR = 0.1
BENCHMARK_EPOCHS = 10
BENCHMARK_BATCH = 64
WEIGHT_DECAYS: tuple[float, ...] = tuple(np.logspace(-6, 2, num=97).tolist())
"""CLIP_benchmark's weight-decay grid; the search starts at every 16th value (10⁻⁶, 10⁻⁴.⁶⁷, ..., 10²)."""


class BandStatistics(nn.Module):
    """(N, 13, H, W) MS views -> (N, 26) features: the mean of each band, then its standard deviation
    (population, over the tile's pixels)."""

    def forward(self, ms: torch.Tensor) -> torch.Tensor:
        x = ms.float().flatten(2)
        return torch.cat([x.mean(dim=2), x.std(dim=2, correction=0)], dim=1)


@dataclass(frozen=True)
class LinearLayerResult:
    """Test score of CLIP_benchmark's protocol with the weight decay chosen on validation."""

    metric: str
    value: float
    weight_decay: float
    val_value: float
    n_train: int
    n_test: int
    test_scores: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros((0, 0)))


def _unit(x: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float32)
    return nn.functional.normalize(t, dim=-1)


def train_linear(x: torch.Tensor, y: torch.Tensor, n_out: int, weight_decay: float, *, multilabel: bool = False,
                 lr: float = BENCHMARK_LR, epochs: int = BENCHMARK_EPOCHS, batch_size: int = BENCHMARK_BATCH,
                 seed: int = 0) -> nn.Linear:
    """One linear layer trained as CLIP_benchmark's ``train``: seed, layer, AdamW, cosine learning rate per
    step, and each epoch's batches in the order a shuffling ``DataLoader`` draws them from the global
    generator (its base seed, then a permutation seeded by one draw, as torch's ``RandomSampler``), so the same
    seed gives the same layer as CLIP_benchmark without a loader's per-batch overhead."""
    torch.manual_seed(seed)
    model = nn.Linear(x.shape[1], n_out)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    per_epoch = math.ceil(len(x) / batch_size)
    steps = epochs * per_epoch
    for epoch in range(epochs):
        torch.empty((), dtype=torch.int64).random_()  # the loader's base seed for its workers, then the sampler's
        draw = int(torch.empty((), dtype=torch.int64).random_().item())
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(draw))
        for i in range(per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            for group in opt.param_groups:
                group["lr"] = 0.5 * (1 + math.cos(math.pi * (i + epoch * per_epoch) / steps)) * lr
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def _score(model: nn.Linear, x: torch.Tensor, targets: np.ndarray, multilabel: bool) -> tuple[float, np.ndarray]:
    with torch.no_grad():
        scores = model(x).double().numpy()
    return metrics.headline_score(scores, targets, multilabel), scores


def benchmark_probe(train: Split, val: Split, test: Split, multilabel: bool, *, refit: bool = True, seed: int = 0,
                    lr: float = BENCHMARK_LR, epochs: int = BENCHMARK_EPOCHS,
                    batch_size: int = BENCHMARK_BATCH) -> LinearLayerResult:
    """CLIP_benchmark's linear probe of ``train`` features: weight decay searched on ``val``, the final layer
    trained on train + validation when ``refit`` (CLIP_benchmark: with the whole training split), scored
    on ``test``."""
    n_out = val.targets.shape[1] if multilabel else int(max(train.targets.max(), val.targets.max(),
                                                            test.targets.max())) + 1
    xtr, xva, xte = _unit(train.features), _unit(val.features), _unit(test.features)
    cast = (lambda t: torch.as_tensor(t, dtype=torch.float32)) if multilabel else \
        (lambda t: torch.as_tensor(t, dtype=torch.int64))
    ytr, yva = cast(train.targets), cast(val.targets)
    fit = dict(multilabel=multilabel, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed)
    tried: dict[int, float] = {}

    def peak(indices: Sequence[int]) -> int:
        best, best_value = 0, 0.0  # as CLIP_benchmark's find_peak: a strictly better score moves the peak
        for idx in indices:
            if idx not in tried:
                model = train_linear(xtr, ytr, n_out, WEIGHT_DECAYS[idx], **fit)
                tried[idx] = _score(model, xva, val.targets, multilabel)[0]
            if best_value < tried[idx]:
                best, best_value = idx, tried[idx]
        return best

    last = len(WEIGHT_DECAYS) - 1
    best = peak(range(0, len(WEIGHT_DECAYS), 16))
    span = 8
    while span > 0:
        best = peak([max(best - span, 0), best, min(best + span, last)])
        span //= 2
    wd = WEIGHT_DECAYS[best]
    if refit:
        model = train_linear(torch.cat([xtr, xva]), torch.cat([ytr, yva]), n_out, wd, **fit)
    else:
        model = train_linear(xtr, ytr, n_out, wd, **fit)
    value, scores = _score(model, xte, test.targets, multilabel)
    return LinearLayerResult(metrics.PRIMARY_METRIC[multilabel], float(value), float(wd), float(tried.get(best, 0.0)),
                             len(train.targets) + (len(val.targets) if refit else 0), len(test.targets), scores)


def benchmark_curve(train: Split, val: Split, test: Split, multilabel: bool, *, shots: Sequence[int] = (1, 2, 5, ALL),
                    seeds: Sequence[int] = (0, 1, 2)) -> list[dict]:
    """:func:`benchmark_probe` for every ``k`` of ``shots`` and seed, on the training tiles of
    :func:`mtmg.evaluation.probe.few_shot_curve` (refit on train + validation only with the whole split);
    rows as :func:`~mtmg.evaluation.probe.few_shot_curve`'s with ``weight_decay`` in place of ``C``."""
    rows = []
    for k in shots:
        for seed in (seeds[:1] if k == ALL else seeds):
            part = train if k == ALL else train.subset(few_shot_indices(train.targets, k, seed))
            r = benchmark_probe(part, val, test, multilabel, refit=k == ALL, seed=seed)
            rows.append({"shots": k, "seed": seed, "metric": r.metric, "value": r.value,
                         "weight_decay": r.weight_decay, "val_value": r.val_value, "n_train": r.n_train,
                         "n_test": r.n_test, "test_scores": r.test_scores})
    return rows


BAND_STATISTICS = "bands"
"""The encoder name of :class:`BandStatistics` in the probe stage's files."""
LOGISTIC, BENCHMARK = "mtmg", "clip_benchmark"
"""The two probe protocols: the project's (:func:`mtmg.evaluation.probe.linear_probe`) and CLIP_benchmark's."""
LABELS = {BAND_STATISTICS: "band statistics on MS (mean and std of 13 bands)"}


def protocol_name(encoder: str, protocol: str) -> str:
    """How an encoder's fits under ``protocol`` are named in ``test_scores.npz`` (the project's keep the
    encoder's own name, so :func:`mtmg.evaluation.probe.difference_table` reads either)."""
    return encoder if protocol == LOGISTIC else f"{encoder}@{protocol}"


def baseline_rows(dataset: str, feats: dict[str, dict[str, Split]], encoders: Sequence[str], multilabel: bool, *,
                  shots: Sequence[int], seeds: Sequence[int], Cs: Sequence[float]) -> tuple[list[dict], dict]:
    """The probe stage's baselines on one dataset: :data:`BAND_STATISTICS` under the project's probe (every
    ``shots``), and every encoder and the band statistics under CLIP_benchmark's protocol with the whole
    training split. ``feats``: split -> encoder -> features. Returns rows (dataset, model, protocol, shots,
    seed, metric, value, hyperparameter, val_value, n_train, n_test) and the fits' test scores by npz name."""
    rows, arrays = [], {}

    def add(model: str, protocol: str, fits: list[dict], hyper: str) -> None:
        for r in fits:
            arrays[scores_name(dataset, protocol_name(model, protocol), r["shots"], r["seed"])] = r["test_scores"]
            rows.append({"dataset": dataset, "model": model, "protocol": protocol, "shots": r["shots"],
                         "seed": r["seed"], "metric": r["metric"], "value": r["value"], "hyperparameter": hyper,
                         "hyperparameter_value": r[hyper], "val_value": r["val_value"], "n_train": r["n_train"],
                         "n_test": r["n_test"]})

    add(BAND_STATISTICS, LOGISTIC, few_shot_curve(*(feats[s][BAND_STATISTICS] for s in ("train", "val", "test")),
                                                   multilabel, shots=shots, seeds=seeds, Cs=Cs), "C")
    for model in (*encoders, BAND_STATISTICS):
        add(model, BENCHMARK, benchmark_curve(*(feats[s][model] for s in ("train", "val", "test")), multilabel,
                                              shots=(ALL,), seeds=seeds[:1]), "weight_decay")
    return rows, arrays

"""Linear probing of frozen image embeddings: the evaluation of an encoder by the best linear classifier
on its features.

The project's protocol, scikit-learn's logistic regression (not CLIP_benchmark's: that one trains a linear
layer with AdamW on unit-norm features without standardisation, searches the weight decay and refits on
train + validation; :mod:`mtmg.evaluation.baselines` implements it as a second protocol, and the two can
rank encoders differently):

- features are the frozen encoders' embeddings, L2-normalised, then standardised with the mean and
  standard deviation of the training features (standardisation puts every dimension on the same scale,
  so the probe reads small directions of the embedding as well as large ones);
- single-label data: multinomial logistic regression; multi-label data: one logistic regression per
  class (one-vs-rest; a class without positives in the training set predicts a constant);
- the inverse regularisation strength C is chosen from :data:`DEFAULT_CS` by the validation score
  (the smallest C among equal scores); the classifier fitted with it on the training features is
  scored on the test features: top-1 accuracy, or macro AP (classes without positives in the test
  split left out, see :mod:`mtmg.evaluation.metrics`);
- few-shot: ``k`` training tiles per class drawn with a seed (multi-label: ``k`` tiles among those
  where the class is positive, so a tile can serve several classes); validation and test stay whole;
- two encoders are compared on the same test tiles by :func:`paired_difference`: the difference of
  their scores with a 95 % paired-bootstrap interval over the test tiles (few-shot: the mean over draws
  in each resample), so a gap of one or two tiles is not read as a result.

The probe stage (:func:`mtmg.runs.probe.run_probe`) fits these on the four encoders of :data:`ENCODERS`;
:func:`probe_table` turns its rows into the table of the book and :func:`difference_table` its test
scores into the student's gain over its initial weights.
"""
from __future__ import annotations

import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mtmg.core.checkpoint import CorruptCheckpointError
from mtmg.core.config import ALL_SHOTS, PROBE_CS
from mtmg.evaluation import intervals, metrics

DEFAULT_CS = PROBE_CS
"""Inverse regularisation strengths tried on validation (the probe stage's default ``Cs``)."""
ALL = ALL_SHOTS
"""``shots`` value meaning the whole training split."""


@dataclass(frozen=True)
class Split:
    """Embeddings (N, D) of one split and their targets: (N,) class indices or (N, C) multi-hot rows."""

    features: np.ndarray
    targets: np.ndarray

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or len(self.features) != len(self.targets):
            raise ValueError(f"probe split: need (N, D) features and N targets, got {self.features.shape} "
                             f"and {self.targets.shape}")

    @classmethod
    def of(cls, features: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor) -> Split:
        """A split from tensors or arrays (float64 features)."""
        f = features.detach().float().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
        t = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
        return cls(f.astype(np.float64), t)

    def subset(self, indices: Sequence[int]) -> Split:
        idx = np.asarray(indices, dtype=np.int64)
        return Split(self.features[idx], self.targets[idx])


@dataclass(frozen=True)
class ProbeResult:
    """Test score of the probe with the C chosen on validation, and its (N_test, C) decision scores."""

    metric: str
    value: float
    C: float
    val_value: float
    n_train: int
    n_test: int
    test_scores: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros((0, 0)))


class _Standardiser:
    """L2 normalisation, then the training split's per-dimension mean and standard deviation."""

    def __init__(self, train: np.ndarray) -> None:
        x = _unit(train)
        self.mean = x.mean(axis=0)
        self.std = np.where(x.std(axis=0) > 1e-12, x.std(axis=0), 1.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (_unit(x) - self.mean) / self.std


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _classifier(C: float, multilabel: bool, seed: int, max_iter: int):
    from sklearn.linear_model import LogisticRegression  # imported here: scikit-learn takes seconds to import
    from sklearn.multiclass import OneVsRestClassifier

    lr = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    return OneVsRestClassifier(lr) if multilabel else lr


def _scores(model, x: np.ndarray, n_classes: int, multilabel: bool) -> np.ndarray:
    """(N, n_classes) decision scores; classes absent from the training targets get -inf (single-label)."""
    raw = model.decision_function(x)
    if multilabel:
        return raw.reshape(len(x), -1)
    raw = raw[:, None] if raw.ndim == 1 else raw
    if raw.shape[1] == 1:  # two classes seen: scikit-learn returns the score of the second
        raw = np.concatenate([-raw, raw], axis=1)
    out = np.full((len(x), n_classes), -np.inf)
    out[:, model.classes_] = raw
    return out


def linear_probe(train: Split, val: Split, test: Split, multilabel: bool, *, Cs: Sequence[float] = DEFAULT_CS,
                 seed: int = 0, max_iter: int = 1000) -> ProbeResult:
    """Fit one logistic regression per C on ``train``, keep the best on ``val``, score it on ``test``."""
    if not Cs:
        raise ValueError("linear_probe: give at least one regularisation value C")
    n_classes = val.targets.shape[1] if multilabel else int(max(train.targets.max(), val.targets.max(),
                                                                 test.targets.max())) + 1
    if not multilabel and len(np.unique(train.targets)) < 2:
        raise ValueError("linear_probe: the training split holds a single class; a probe needs at least two")
    scale = _Standardiser(train.features)
    xtr, xva, xte = scale(train.features), scale(val.features), scale(test.features)
    ytr = train.targets.astype(np.int64) if not multilabel else (train.targets > 0.5).astype(np.int64)
    from sklearn.exceptions import ConvergenceWarning  # imported here: scikit-learn takes seconds to import

    best = None
    for C in sorted(Cs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
            warnings.filterwarnings("ignore", message="Label not .* is present in all training examples")
            model = _classifier(C, multilabel, seed, max_iter).fit(xtr, ytr)
        v = metrics.headline_score(_scores(model, xva, n_classes, multilabel), val.targets, multilabel)
        if best is None or v > best[1] + 1e-12:
            best = (C, v, model)
    C, v, model = best
    scores = _scores(model, xte, n_classes, multilabel)
    return ProbeResult(metrics.PRIMARY_METRIC[multilabel], metrics.headline_score(scores, test.targets, multilabel),
                       float(C), float(v), len(train.targets), len(test.targets), scores)


def few_shot_indices(targets: np.ndarray, shots: int, seed: int) -> list[int]:
    """``shots`` training items per class drawn with ``seed`` (all items of a class that has fewer).

    ``targets``: (N,) class indices or (N, C) multi-hot rows (an item counts for every class it holds;
    an item drawn for one class is not drawn twice). Sorted indices.
    """
    if shots < 1:
        raise ValueError(f"few_shot_indices: shots must be >= 1, got {shots}")
    rng = np.random.default_rng(seed)
    positive = (targets > 0.5) if targets.ndim == 2 else (targets[:, None] == np.arange(targets.max() + 1))
    chosen: set[int] = set()
    for c in range(positive.shape[1]):
        members = np.flatnonzero(positive[:, c])
        already = [i for i in members if i in chosen]
        rest = np.array([i for i in members if i not in chosen], dtype=np.int64)
        need = max(0, shots - len(already))
        chosen.update(rng.permutation(rest)[:need].tolist())
    return sorted(chosen)


def few_shot_curve(train: Split, val: Split, test: Split, multilabel: bool, *, shots: Sequence[int] = (1, 2, 5, ALL),
                   seeds: Sequence[int] = (0, 1, 2), Cs: Sequence[float] = DEFAULT_CS) -> list[dict]:
    """:func:`linear_probe` with ``k`` training items per class for each ``k`` in ``shots`` (``ALL``: the
    whole split, one fit) and each seed; one row per fit (shots, seed, metric, value, C, val_value, n_train,
    n_test, test_scores: the fit's (N_test, C) decision scores)."""
    rows = []
    for k in shots:
        for seed in (seeds[:1] if k == ALL else seeds):
            part = train if k == ALL else train.subset(few_shot_indices(train.targets, k, seed))
            r = linear_probe(part, val, test, multilabel, Cs=Cs, seed=seed)
            rows.append({"shots": k, "seed": seed, "metric": r.metric, "value": r.value, "C": r.C,
                         "val_value": r.val_value, "n_train": r.n_train, "n_test": r.n_test,
                         "test_scores": r.test_scores})
    return rows


def paired_difference(scores_a: Sequence[np.ndarray], scores_b: Sequence[np.ndarray], targets: np.ndarray,
                      multilabel: bool, *, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Score of encoder ``a`` minus score of encoder ``b`` on the same test items, with a 95 % paired
    bootstrap interval: ``(difference, low, high)``.

    ``scores_a`` and ``scores_b``: the (N, C) test scores of one or more fits each (few-shot draws); each
    side's score is the mean over its fits (:func:`mtmg.evaluation.intervals.difference_interval`).
    """
    if not scores_a or not scores_b:
        raise ValueError("paired_difference: give at least one score array per encoder")
    n = len(targets)
    if any(len(s) != n for s in (*scores_a, *scores_b)):
        raise ValueError(f"paired_difference: every score array needs one row per test item ({n})")
    found = intervals.difference_interval(scores_a, scores_b, targets, multilabel, n_boot=n_boot, seed=seed)
    return found.value, found.low, found.high


# --- encoders of a profile --------------------------------------------------------------------------------

ENCODERS: dict[str, tuple[str, str]] = {
    "student": ("ms", "student (aligned) on MS"),
    "student_init": ("ms", "student before alignment on MS"),
    "clip_patched": ("rgb", "CLIP patched on RGB"),
    "clip_zeroshot": ("rgb", "CLIP zero-shot on RGB"),
}
"""Encoder name -> (view it reads, label in tables)."""
SCORES_FILE = "test_scores.npz"
DIFFERENCES_FILE = "differences.csv"


def scores_name(dataset: str, *parts: object) -> str:
    """The name of an array in ``test_scores.npz``: ``<dataset>/targets`` or
    ``<dataset>/<encoder>/<shots>/<seed>``."""
    return "/".join(str(p) for p in (dataset, *parts))


def load_test_scores(folder: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a probe folder's ``test_scores.npz`` (no pickled objects are read): ``<dataset>/targets``
    and ``<dataset>/<encoder>/<shots>/<seed>`` (shots 0: the whole training split)."""
    path = Path(folder) / SCORES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no probe test scores; run the probe stage (python -m mtmg probe) first")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # object arrays, truncated or foreign files
        raise CorruptCheckpointError(path, f"not an archive of numeric arrays ({' '.join(str(e).split())})",
                                     "run the probe stage again (python -m mtmg probe --force)") from None


def load_differences(folder: str | Path) -> pd.DataFrame:
    """The ``differences.csv`` the probe stage wrote into ``folder`` (:func:`difference_table`'s columns)."""
    path = Path(folder) / DIFFERENCES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no probe differences; run the probe stage (python -m mtmg probe) first")
    return pd.read_csv(path)


def difference_table(scores: str | Path | Mapping[str, np.ndarray], a: str = "student", b: str = "student_init",
                     *, n_boot: int = 1000) -> pd.DataFrame:
    """Encoder ``a``'s probe score minus encoder ``b``'s (points), per dataset and training tiles per class,
    with the 95 % paired-bootstrap interval over the test tiles (:func:`paired_difference`) and whether
    the interval excludes zero. ``scores``: a probe folder, or the arrays :func:`load_test_scores` reads."""
    scores = load_test_scores(scores) if isinstance(scores, (str, Path)) else scores
    fits: dict[tuple[str, str, int], list[np.ndarray]] = {}
    for name, array in scores.items():
        parts = name.split("/")
        if len(parts) == 4:
            fits.setdefault((parts[0], parts[1], int(parts[2])), []).append(array)
    rows = []
    for dataset in dict.fromkeys(name.split("/")[0] for name in scores):
        targets = scores[scores_name(dataset, "targets")]
        for k in sorted({k for (d, m, k) in fits if d == dataset and m == a}, key=lambda k: (k == ALL, k)):
            if (dataset, b, k) not in fits:
                continue
            diff, low, high = paired_difference(fits[dataset, a, k], fits[dataset, b, k], targets,
                                                targets.ndim == 2, n_boot=n_boot)
            rows.append({"dataset": dataset, "shots": "all" if k == ALL else f"{k} per class",
                         "difference": round(100 * diff, 2), "low": round(100 * low, 2), "high": round(100 * high, 2),
                         "n_test": len(targets), "clear": bool(low > 0 or high < 0)})
    return pd.DataFrame(rows, columns=["dataset", "shots", "difference", "low", "high", "n_test", "clear"])


def probe_table(results: pd.DataFrame) -> pd.DataFrame:
    """Test score (%) per dataset and encoder (rows) and training items per class (columns, mean over
    seeds); ``all`` is the whole training split."""
    rows = results.copy()
    rows["shots"] = ["all" if k == ALL else f"{k} per class" for k in rows["shots"]]
    rows["model"] = [ENCODERS.get(m, (None, m))[1] for m in rows["model"]]
    table = rows.pivot_table(index=["dataset", "model"], columns="shots", values="value", aggfunc="mean", sort=False)
    order = [c for c in [f"{k} per class" for k in sorted({k for k in results["shots"] if k != ALL})] + ["all"]
             if c in table.columns]
    return (100 * table[order]).round(2)

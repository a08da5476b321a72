"""Linear probing of frozen image embeddings: the evaluation of an encoder by the best linear classifier
on its features.

Protocol (after CLIP_benchmark's linear probe, with scikit-learn's logistic regression):

- features are the frozen encoders' embeddings, L2-normalised, then standardised with the mean and
  standard deviation of the training features;
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

:func:`run_probe` compares, on the same tiles of the profile's datasets, the aligned student on the
MS view, patched and zero-shot CLIP on the RGB composite and the student's initial weights (the
"before alignment" baseline); :func:`probe_table` turns its rows into the table of the book and
:func:`difference_table` its test scores into the student's gain over its initial weights.
"""
from __future__ import annotations

import dataclasses
import io
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtmg.core.config import DataSpec
from mtmg.evaluation import metrics

DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-3, 3, 7))
"""Inverse regularisation strengths tried on validation."""
ALL = 0
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


def _score(scores: np.ndarray, targets: np.ndarray, multilabel: bool) -> float:
    return (metrics.macro_average_precision(scores, targets) if multilabel
            else metrics.top1_accuracy(scores, targets))


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
    from sklearn.exceptions import ConvergenceWarning

    best = None
    for C in sorted(Cs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
            warnings.filterwarnings("ignore", message="Label not .* is present in all training examples")
            model = _classifier(C, multilabel, seed, max_iter).fit(xtr, ytr)
        v = _score(_scores(model, xva, n_classes, multilabel), val.targets, multilabel)
        if best is None or v > best[1] + 1e-12:
            best = (C, v, model)
    C, v, model = best
    scores = _scores(model, xte, n_classes, multilabel)
    return ProbeResult("macro_ap" if multilabel else "top1", float(_score(scores, test.targets, multilabel)),
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
    side's score is the mean over its fits. Every bootstrap resample draws N test items with replacement
    and scores both encoders on the same items (multi-label: macro AP over the classes with a positive in
    the resample, :func:`mtmg.evaluation.metrics.resampled_macro_average_precision`), so the interval reflects how few
    test items there are. Resamples are drawn in blocks of at most 2**23 draw counts (64 MiB).
    """
    if not scores_a or not scores_b:
        raise ValueError("paired_difference: give at least one score array per encoder")
    n = len(targets)
    if any(len(s) != n for s in (*scores_a, *scores_b)):
        raise ValueError(f"paired_difference: every score array needs one row per test item ({n})")
    if multilabel:
        def delta(counts: np.ndarray) -> np.ndarray:
            a, b = ([metrics.resampled_macro_average_precision(s, targets, counts) for s in side]
                    for side in (scores_a, scores_b))
            return np.mean(a, axis=0) - np.mean(b, axis=0)
    else:  # top-1: each item's hit rate over the fits, a's minus b's, weighted by the item's draws
        hits = (np.mean([np.argmax(s, axis=1) == targets for s in scores_a], axis=0)
                - np.mean([np.argmax(s, axis=1) == targets for s in scores_b], axis=0))

        def delta(counts: np.ndarray) -> np.ndarray:
            return counts @ hits / n

    diff = float(delta(np.ones((1, n)))[0])
    rng = np.random.default_rng(seed)
    boot, block = [], max(1, 2 ** 23 // n)
    for start in range(0, n_boot, block):
        rows = min(block, n_boot - start)
        drawn = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
        counts = np.bincount(drawn.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)
        boot.append(delta(counts))
    low, high = np.nanpercentile(np.concatenate(boot), [2.5, 97.5])
    return diff, float(low), float(high)


# --- encoders of a profile --------------------------------------------------------------------------------

ENCODERS: dict[str, tuple[str, str]] = {
    "student": ("ms", "student (aligned) on MS"),
    "student_init": ("ms", "student before alignment on MS"),
    "clip_patched": ("rgb", "CLIP patched on RGB"),
    "clip_zeroshot": ("rgb", "CLIP zero-shot on RGB"),
}
"""Encoder name -> (view it reads, label in tables)."""


@dataclass(frozen=True)
class ProbeConfig:
    """The probe stage of a profile (``configs/<profile>/probe.yaml``; without it: the alignment evaluation
    sets). ``max_items`` caps each split at a fixed random subset (``seed``) for paper-scale data."""

    datasets: tuple[DataSpec, ...] = ()
    shots: tuple[int, ...] = (1, 2, 5, ALL)
    seeds: tuple[int, ...] = (0, 1, 2)
    Cs: tuple[float, ...] = DEFAULT_CS
    max_items: int | None = None
    seed: int = 0
    bootstrap: int = 1000


PROBE_CONFIG_FILE = "probe.yaml"
SCORES_FILE = "test_scores.npz"
DIFFERENCES_FILE = "differences.csv"
FILES = ("results.csv", SCORES_FILE, DIFFERENCES_FILE)
"""The files a finished probe folder holds."""


def load_probe_config(prof: Any) -> ProbeConfig:
    """The profile's probe config (``prof.probe`` as :func:`mtmg.runs.profiles.load_profile` read it, else
    ``configs/<profile>/probe.yaml``; keys of :class:`ProbeConfig`; ``datasets`` default to the alignment
    evaluation sets), with the profile's data roots applied to datasets of the same name."""
    from mtmg.core.config import load_config
    from mtmg.runs.profiles import CONFIG_ROOT

    path = CONFIG_ROOT / prof.name / PROBE_CONFIG_FILE
    cfg = (prof.probe if getattr(prof, "probe", None) is not None
           else load_config(path, ProbeConfig) if path.is_file() else ProbeConfig())
    roots = {s.name: s for s in (*prof.align.eval_sets, prof.align.data)}
    datasets = tuple(dataclasses.replace(s, root=roots[s.name].root) if s.name in roots else s
                     for s in cfg.datasets) or tuple(prof.align.eval_sets)
    return dataclasses.replace(cfg, datasets=datasets)


def probe_key(cfg: ProbeConfig, prof: Any, patch_key: str, align_key: str) -> str:
    """Run-store key of the probe: its config, the MS view size, the stage 1 and 2 folders it reads, the data."""
    from mtmg.core import runstore

    settings = {"probe": dataclasses.asdict(cfg), "ms_size": prof.align.ms_size, "carve": prof.align.carve}
    return runstore.stage_key("probe", settings, upstream=(patch_key, align_key), data=cfg.datasets)


def initial_student(prof: Any, out_dim: int) -> torch.nn.Module:
    """The student as stage 2 built it before training: the configured weights and the projection drawn
    after ``torch.manual_seed(align.train.seed)``."""
    from mtmg.models.student import build_student

    torch.manual_seed(prof.align.train.seed)
    return build_student(prof.align.student, out_dim)


@torch.no_grad()
def embed_views(encoders: Mapping[str, torch.nn.Module], dataset: Any, *, device: torch.device,
                batch_size: int = 256, num_workers: int = 0) -> tuple[dict[str, Split], np.ndarray]:
    """One pass over a paired dataset: every encoder of :data:`ENCODERS` on its view (bf16 autocast on
    CUDA, embeddings returned in fp32)."""
    from torch.utils.data import DataLoader

    from mtmg.core.device import autocast

    outs: dict[str, list[torch.Tensor]] = {name: [] for name in encoders}
    targets = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        for name, encoder in encoders.items():
            with autocast(device):
                outs[name].append(encoder(batch[ENCODERS[name][0]].to(device)).float().cpu())
        targets.append(torch.as_tensor(batch["target"]))
    y = torch.cat(targets).numpy()
    return {name: Split.of(torch.cat(v), y) for name, v in outs.items()}, y


def run_probe(prof: Any, patch_dir: Path, align_dir: Path, out_dir: Path, cfg: ProbeConfig | None = None
              ) -> pd.DataFrame:
    """The probe stage: embed train, validation and test splits of every dataset of ``cfg`` with the four
    encoders (patched and zero-shot towers of ``patch_dir``, the student of ``align_dir`` and its initial
    weights) and run :func:`few_shot_curve` for each; writes ``results.csv`` (one row per fit) and
    ``test_scores.npz`` (every fit's test scores and each dataset's test targets, see :func:`load_test_scores`)
    and ``differences.csv`` (:func:`difference_table` with ``cfg.bootstrap`` resamples)."""
    from torch.utils.data import Subset

    from mtmg.core import checkpoint
    from mtmg.core.device import resolve_device
    from mtmg.data.tasks import held_out, ms_resize, training_split
    from mtmg.method.patching import load_patched
    from mtmg.models.clip import tower_copy
    from mtmg.models.student import evaluation_spec, read_band_metadata

    cfg = cfg or load_probe_config(prof)
    dev = resolve_device(prof.device)
    bundle, _ = load_patched(patch_dir, dev, prof.cache)
    patched = bundle.model.visual.eval()
    zeroshot = tower_copy(patched, checkpoint.load(patch_dir / "zeroshot.pt"))
    trained = checkpoint.load(align_dir / "student.pt")
    with warnings.catch_warnings():  # no pretrained student weights at all is a configuration, not a problem here
        warnings.simplefilter("ignore")
        init = initial_student(prof, trained["proj.weight"].shape[0])
    student = _loaded_like(init, trained)
    encoders = {"student": student.to(dev).eval(), "student_init": init.to(dev).eval(),
                "clip_patched": patched, "clip_zeroshot": zeroshot}
    bands = read_band_metadata(align_dir)
    ms_tf = ms_resize(prof.align.ms_size)
    frames, arrays = [], {}
    for spec in cfg.datasets:
        spec = evaluation_spec(spec, bands)
        val, test = held_out(spec, bundle.preprocess_val, prof.align.carve, ms_tf)
        if test is None:
            raise ValueError(f"probe dataset {spec.name}: needs a test split (test_split is null)")
        splits = {"train": training_split(spec, bundle.preprocess_val, prof.align.carve, ms_tf), "val": val,
                  "test": test}
        feats: dict[str, dict[str, Split]] = {}
        multilabel = bool(getattr(val, "multilabel", False))
        for split, data in splits.items():
            if cfg.max_items is not None and len(data) > cfg.max_items:
                keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.max_items]
                data = Subset(data, sorted(keep.tolist()))
            feats[split], _ = embed_views(encoders, data, device=dev, batch_size=prof.align.eval_batch_size,
                                          num_workers=prof.align.train.num_workers)
        arrays[_scores_name(spec.name, "targets")] = feats["test"]["student"].targets
        for name in encoders:
            rows = few_shot_curve(feats["train"][name], feats["val"][name], feats["test"][name], multilabel,
                                  shots=cfg.shots, seeds=cfg.seeds, Cs=cfg.Cs)
            arrays.update({_scores_name(spec.name, name, r["shots"], r["seed"]): r["test_scores"] for r in rows})
            frames.append(pd.DataFrame([{"dataset": spec.name, "model": name, "modality": ENCODERS[name][0],
                                         **{k: v for k, v in r.items() if k != "test_scores"}} for r in rows]))
    results = pd.concat(frames, ignore_index=True)
    checkpoint.atomic_write_text(Path(out_dir) / "results.csv", results.to_csv(index=False))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    checkpoint.atomic_write_bytes(Path(out_dir) / SCORES_FILE, buffer.getvalue())
    differences = difference_table(arrays, n_boot=cfg.bootstrap)
    checkpoint.atomic_write_text(Path(out_dir) / DIFFERENCES_FILE, differences.to_csv(index=False))
    checkpoint.atomic_write_text(Path(out_dir) / "probe.json", json.dumps(
        {"config": dataclasses.asdict(cfg), "patch_dir": str(patch_dir), "align_dir": str(align_dir)},
        indent=1, default=str) + "\n")
    return results


def _scores_name(dataset: str, *parts: object) -> str:
    return "/".join(str(p) for p in (dataset, *parts))


def load_test_scores(folder: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a probe folder's ``test_scores.npz`` (no pickled objects are read): ``<dataset>/targets``
    and ``<dataset>/<encoder>/<shots>/<seed>`` (shots 0: the whole training split)."""
    path = Path(folder) / SCORES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no probe test scores; run the probe stage (python -m mtmg probe) first")
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


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
        targets = scores[_scores_name(dataset, "targets")]
        for k in sorted({k for (d, m, k) in fits if d == dataset and m == a}, key=lambda k: (k == ALL, k)):
            if (dataset, b, k) not in fits:
                continue
            diff, low, high = paired_difference(fits[dataset, a, k], fits[dataset, b, k], targets,
                                                targets.ndim == 2, n_boot=n_boot)
            rows.append({"dataset": dataset, "shots": "all" if k == ALL else f"{k} per class",
                         "difference": round(100 * diff, 2), "low": round(100 * low, 2), "high": round(100 * high, 2),
                         "n_test": len(targets), "clear": bool(low > 0 or high < 0)})
    return pd.DataFrame(rows, columns=["dataset", "shots", "difference", "low", "high", "n_test", "clear"])


def _loaded_like(template: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    import copy

    model = copy.deepcopy(template)
    model.load_state_dict(state)
    return model


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

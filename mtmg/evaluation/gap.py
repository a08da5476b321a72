"""Modality-gap analysis after Liang et al. (2022), "Mind the Gap".

Every embedding set is an (N, D) torch tensor or numpy array. Embeddings are L2-normalised
before any measure, as in the reference code (Weixin-Liang/Modality-Gap). Definitions:

- gap vector: centroid(normalize(x)) - centroid(normalize(y)); gap magnitude: its L2 norm.
- cone statistic: mean cosine similarity over all pairs of distinct items of one set.
- shift by lambda along the unit gap direction u = gap / |gap|:
  x' = normalize(x - lambda/2 * u), y' = normalize(y + lambda/2 * u).
  lambda = |gap| moves the two centroids onto each other before the re-normalisation.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
import pandas as pd

from mtmg.evaluation.metrics import retrieval_recalls, top1_accuracy

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

Embeddings = Union[np.ndarray, "torch.Tensor"]

QUANTILES = (0.05, 0.25, 0.50, 0.75, 0.95)
MODALITY_PAIRS = (("text", "rgb"), ("text", "ms"), ("rgb", "ms"))


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of a tensor (any device or float dtype) or array-like."""
    if hasattr(x, "detach"):
        t = x.detach().cpu()
        return (t.double() if t.is_floating_point() else t).numpy()
    return np.asarray(x)


def as_matrix(x: Embeddings, name: str = "embeddings") -> np.ndarray:
    """Return a float64 (N, D) numpy copy of a tensor or array."""
    arr = np.array(_to_numpy(x), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(
            f"{name}: expected a non-empty 2-D (N, D) array of embeddings, got shape {arr.shape}; "
            "flatten per-template text embeddings with .reshape(-1, D)"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: embeddings contain NaN or inf values; check the encoder outputs")
    return arr


def l2_normalize(x: Embeddings, name: str = "embeddings") -> np.ndarray:
    """Rows of `x` scaled to unit L2 norm (float64 numpy)."""
    arr = as_matrix(x, name)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name}: {(norms == 0).sum()} rows have zero norm and cannot be normalised")
    return arr / norms


def _check_same_dim(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"embedding sets have different widths ({x.shape[1]} vs {y.shape[1]}); "
            "compare embeddings from the same joint space"
        )


def _check_paired(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape != y.shape:
        raise ValueError(
            f"paired sets need the same shape (item i of one set matches item i of the other), "
            f"got {x.shape} and {y.shape}"
        )


@dataclass(frozen=True)
class Gap:
    """Modality gap between two embedding sets.

    vector: centroid(x) - centroid(y) of the normalised sets; magnitude: |vector|.
    For paired sets also the mean distance and mean cosine between matching items.
    """

    vector: np.ndarray
    magnitude: float
    mean_paired_distance: float | None = None
    mean_paired_cosine: float | None = None


def gap_vector(x: Embeddings, y: Embeddings) -> np.ndarray:
    """centroid(normalize(x)) - centroid(normalize(y)), shape (D,)."""
    xn, yn = l2_normalize(x, "x"), l2_normalize(y, "y")
    _check_same_dim(xn, yn)
    return xn.mean(axis=0) - yn.mean(axis=0)


def gap_magnitude(x: Embeddings, y: Embeddings) -> float:
    """Euclidean distance between the centroids of the normalised sets."""
    return float(np.linalg.norm(gap_vector(x, y)))


def modality_gap(x: Embeddings, y: Embeddings, paired: bool = False) -> Gap:
    """Gap between two sets; `paired=True` (row i of x matches row i of y) adds paired stats."""
    vector = gap_vector(x, y)
    if not paired:
        return Gap(vector=vector, magnitude=float(np.linalg.norm(vector)))
    xn, yn = l2_normalize(x, "x"), l2_normalize(y, "y")
    _check_paired(xn, yn)
    return Gap(
        vector=vector,
        magnitude=float(np.linalg.norm(vector)),
        mean_paired_distance=float(np.linalg.norm(xn - yn, axis=1).mean()),
        mean_paired_cosine=float((xn * yn).sum(axis=1).mean()),
    )


def cone_statistic(x: Embeddings) -> float:
    """Mean pairwise cosine similarity within a set, diagonal excluded.

    Uses sum_{i != j} <x_i, x_j> = |sum_i x_i|^2 - N for unit rows, so memory stays O(N D).
    """
    xn = l2_normalize(x, "x")
    n = xn.shape[0]
    if n < 2:
        raise ValueError(f"cone statistic needs at least 2 embeddings, got {n}")
    total = xn.sum(axis=0)
    return float((total @ total - n) / (n * (n - 1)))


def paired_cosine(a: Embeddings, b: Embeddings) -> np.ndarray:
    """Cosine similarity between row i of `a` and row i of `b` (e.g. one image under two models)."""
    an, bn = l2_normalize(a, "a"), l2_normalize(b, "b")
    _check_paired(an, bn)
    return (an * bn).sum(axis=1)


def summarize(values: Sequence[float] | np.ndarray) -> pd.Series:
    """Mean, std and the 5/25/50/75/95 % quantiles of a 1-D sample."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("summarize: got an empty sample")
    stats = {"mean": v.mean(), "std": v.std(ddof=1) if v.size > 1 else 0.0}
    stats.update({f"q{round(q * 100):02d}": np.quantile(v, q) for q in QUANTILES})
    return pd.Series(stats, dtype=np.float64)


def shift_along_gap(
    x: Embeddings, y: Embeddings, lam: float, direction: Embeddings | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Move x by -lam/2 and y by +lam/2 along the unit gap direction, then re-normalise both.

    `direction` defaults to the gap x -> y of the given sets (centroid(x) - centroid(y)); pass one
    measured elsewhere (e.g. on a captioned set) to reuse it. It is scaled to unit length.
    """
    xn, yn = l2_normalize(x, "x"), l2_normalize(y, "y")
    _check_same_dim(xn, yn)
    u = _unit_direction(xn, yn, direction)
    return l2_normalize(xn - 0.5 * lam * u, "shifted x"), l2_normalize(yn + 0.5 * lam * u, "shifted y")


def _unit_direction(xn: np.ndarray, yn: np.ndarray, direction: Embeddings | None) -> np.ndarray:
    if direction is None:
        d = xn.mean(axis=0) - yn.mean(axis=0)
    else:
        d = as_matrix(_to_numpy(direction).reshape(1, -1), "direction")[0]
    if d.shape[0] != xn.shape[1]:
        raise ValueError(f"direction has {d.shape[0]} entries, embeddings have {xn.shape[1]}")
    norm = np.linalg.norm(d)
    if norm == 0:
        raise ValueError("the gap direction is zero (identical centroids); pass an explicit direction")
    return d / norm


def shift_experiment(
    x: Embeddings,
    y: Embeddings,
    lambdas: Sequence[float],
    *,
    labels: Sequence[int] | np.ndarray | None = None,
    paired: bool = False,
    ks: Sequence[int] = (1, 5, 10),
    direction: Embeddings | None = None,
    names: tuple[str, str] = ("x", "y"),
) -> pd.DataFrame:
    """Shift x and y towards each other by each lambda and score them (Liang et al., Table 1).

    labels: class index of each row of x, with y the class text embeddings (one row per class,
        in label order): adds zero-shot top-1 accuracy of argmax_c <x'_i, y'_c>.
    paired: row i of x matches row i of y: adds retrieval recall@k in both directions.
    Returns a long table: lambda, gap (centroid distance after the shift), gap_signed (that
    distance signed by the projection on the original direction), metric ("top1" or "recall"),
    direction ("x->y" with the given names), k, value. Lambdas are distances along the unit
    direction; `np.linspace(-1, 1, 9) * gap_magnitude(x, y)` spans the gap on both sides.
    """
    if labels is None and not paired:
        raise ValueError("shift_experiment: pass labels (zero-shot accuracy) and/or paired=True (retrieval)")
    xn, yn = l2_normalize(x, names[0]), l2_normalize(y, names[1])
    _check_same_dim(xn, yn)
    if paired:
        _check_paired(xn, yn)
    targets = None
    if labels is not None:
        targets = _to_numpy(labels).astype(np.int64)
        if targets.shape != (xn.shape[0],):
            raise ValueError(f"labels: expected shape ({xn.shape[0]},) to match {names[0]}, got {targets.shape}")
        if targets.min() < 0 or targets.max() >= yn.shape[0]:
            raise ValueError(f"labels must lie in [0, {yn.shape[0]}) (one {names[1]} row per class)")
    u = _unit_direction(xn, yn, direction)
    forward, backward = f"{names[0]}->{names[1]}", f"{names[1]}->{names[0]}"
    rows: list[dict[str, Any]] = []
    for lam in lambdas:
        xs, ys = shift_along_gap(xn, yn, float(lam), u)
        delta = xs.mean(axis=0) - ys.mean(axis=0)
        base = {
            "lambda": float(lam),
            "gap": float(np.linalg.norm(delta)),
            "gap_signed": float(np.linalg.norm(delta) * np.sign(delta @ u)),
        }
        if targets is not None:
            acc = top1_accuracy(xs @ ys.T, targets)
            rows.append({**base, "metric": "top1", "direction": forward, "k": 1, "value": float(acc)})
        if paired:
            recalls = retrieval_recalls(xs, ys, tuple(ks))
            for key, label in (("a->b", forward), ("b->a", backward)):
                for k in ks:
                    value = float(recalls[key][k])
                    rows.append({**base, "metric": "recall", "direction": label, "k": int(k), "value": value})
    return pd.DataFrame(rows, columns=["lambda", "gap", "gap_signed", "metric", "direction", "k", "value"])


EXACT_KNN_MAX = 4096
"""Below this many points UMAP searches neighbours exactly; :func:`reduce_2d` then hands it the search."""


def exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and Euclidean distances of the ``k`` nearest rows of every row of ``x`` (itself first),
    computed in float64 with NumPy. UMAP computes the same for small data with numba-compiled code whose
    compilation takes most of a first UMAP call in a fresh process."""
    x = np.asarray(x, dtype=np.float64)
    squared = (x * x).sum(1)
    dist = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * x @ x.T, 0.0))
    np.fill_diagonal(dist, 0.0)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


UMAP_UNCACHED_KERNELS = (
    ("umap.umap_", "smooth_knn_dist"),
    ("umap.umap_", "compute_membership_strengths"),
    ("umap.layouts", "clip"),
    ("umap.layouts", "_nb_optimize_layout_euclidean_single_epoch"),
)
"""The numba functions a single-threaded UMAP fit compiles that umap declares without ``cache=True``;
together about 11 s of compilation on 2 CPU cores in every new process."""


def import_umap():
    """``umap``, with numba's on-disk cache turned on for :data:`UMAP_UNCACHED_KERNELS` (the same switch
    as ``numba.njit(cache=True)``), so that their compilation is paid once per installation (``make install``
    runs :func:`compile_umap`) instead of in every process. Only the serial layout kernel is cached: the
    parallel variant shares its Python function, and hence its cache file name, and is never used here."""
    import umap  # imported here: umap and numba take seconds to import

    for module, name in UMAP_UNCACHED_KERNELS:
        kernel = getattr(importlib.import_module(module), name, None)
        if kernel is None or not hasattr(kernel, "enable_caching"):
            warnings.warn(f"umap {umap.__version__} has no numba function {module}.{name}: its compilation is "
                          "not cached (the layout is unaffected)", stacklevel=2)
            continue
        kernel.enable_caching()
    return umap


def compile_umap() -> None:
    """Fit UMAP once on a small random set, so that numba compiles and caches its kernels now."""
    rng = np.random.default_rng(0)
    reduce_2d({"a": rng.normal(size=(40, 8)), "b": rng.normal(size=(40, 8))}, method="umap", n_epochs=5)


def reduce_2d(
    embeddings: Mapping[str, Embeddings],
    labels: Mapping[str, Sequence[Any]] | None = None,
    *,
    method: Literal["umap", "pca"] = "umap",
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    n_epochs: int | None = None,
) -> pd.DataFrame:
    """2-D layout of all modalities, fitted once on their concatenation (normalised rows).

    embeddings: modality name -> (N_m, D); labels: modality name -> N_m class labels (optional
    per modality; missing labels are None). UMAP runs single-threaded with random_state=seed, so
    the layout is reproducible; n_epochs=None keeps UMAP's default. Returns columns x, y,
    modality, label.
    """
    if not embeddings:
        raise ValueError("reduce_2d: no embedding sets given")
    labels = labels or {}
    unknown = set(labels) - set(embeddings)
    if unknown:
        raise ValueError(f"reduce_2d: labels given for unknown modalities {sorted(unknown)}")
    blocks = {name: l2_normalize(e, name) for name, e in embeddings.items()}
    widths = {b.shape[1] for b in blocks.values()}
    if len(widths) != 1:
        raise ValueError(f"reduce_2d: all modalities need the same embedding width, got {sorted(widths)}")
    stacked = np.concatenate(list(blocks.values()), axis=0)
    if method == "pca":
        from sklearn.decomposition import PCA  # imported here: scikit-learn takes seconds to import

        coords = PCA(n_components=2, random_state=seed).fit_transform(stacked)
    elif method == "umap":
        umap = import_umap()

        k = min(n_neighbors, stacked.shape[0] - 1)
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=k,
            min_dist=min_dist,
            n_epochs=n_epochs,
            random_state=seed,
            n_jobs=1,
            precomputed_knn=(*exact_knn(stacked, k), None) if stacked.shape[0] < EXACT_KNN_MAX else (None, None, None),
        )
        with warnings.catch_warnings():
            # without a search index UMAP cannot place new points later; the layout never needs to
            warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
            coords = reducer.fit_transform(stacked)
    else:
        raise ValueError(f"reduce_2d: method must be 'umap' or 'pca', got {method!r}")
    modality, label = [], []
    for name, block in blocks.items():
        n = block.shape[0]
        lab = list(labels.get(name, [None] * n))
        if len(lab) != n:
            raise ValueError(f"reduce_2d: {len(lab)} labels for {n} '{name}' embeddings")
        modality += [name] * n
        label += lab
    return pd.DataFrame(
        {"x": coords[:, 0], "y": coords[:, 1], "modality": modality, "label": pd.Series(label, dtype=object)}
    )


def plot_reduction(layout: pd.DataFrame, title: str | None = None, point_size: float = 8.0) -> Figure:
    """Two panels of a `reduce_2d` layout: coloured by modality (left) and by class (right).

    Each modality has its own marker. Small sets (class prompts: under a tenth of the largest
    set) are drawn on top, enlarged and outlined so they stay visible.
    """
    from matplotlib.figure import Figure  # imported here: matplotlib takes a second to import

    missing = {"x", "y", "modality", "label"} - set(layout.columns)
    if missing:
        raise ValueError(f"plot_reduction: layout lacks columns {sorted(missing)}; build it with reduce_2d")
    counts = layout["modality"].value_counts(sort=False)
    modalities = list(dict.fromkeys(layout["modality"]))
    style = {}
    for i, m in enumerate(modalities):
        small = counts[m] < 0.1 * counts.max()
        style[m] = {
            "marker": "o^sDvP*X"[i % 8],
            "s": point_size * (5 if small else 1),
            "edgecolors": "black" if small else "none",
            "linewidths": 0.6,
            "zorder": 2 + (counts[m] < counts).sum(),  # fewer points -> drawn higher
        }
    fig = Figure(figsize=(12, 5.5), layout="constrained")
    by_modality, by_class = fig.subplots(1, 2)
    for i, m in enumerate(modalities):
        part = layout[layout["modality"] == m]
        by_modality.scatter(part["x"], part["y"], color=f"C{i % 10}", label=m, **style[m])
    by_modality.set_title("by modality")
    by_modality.legend(fontsize="small")

    labelled = layout[layout["label"].notna()]
    classes = list(dict.fromkeys(labelled["label"]))
    colors = _class_colors(len(classes))
    for m in modalities:
        part = layout[layout["label"].isna() & (layout["modality"] == m)]
        if len(part):
            by_class.scatter(part["x"], part["y"], color="lightgray", **style[m])
    for i, c in enumerate(classes):
        legend_label: str | None = str(c)
        for m in modalities:
            part = labelled[(labelled["label"] == c) & (labelled["modality"] == m)]
            if len(part):
                by_class.scatter(part["x"], part["y"], color=colors[i], label=legend_label, **style[m])
                legend_label = None
    by_class.set_title("by class (marker = modality, gray = no label)")
    if classes:
        by_class.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    for ax in (by_modality, by_class):
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return fig


def _class_colors(n: int) -> list[Any]:
    from matplotlib import colormaps  # imported here: matplotlib takes a second to import

    name = "tab10" if n <= 10 else "tab20"
    if n <= 20:
        return [colormaps[name](i) for i in range(n)]
    return [colormaps["turbo"](i / max(n - 1, 1)) for i in range(n)]


def gap_summary(models: Mapping[str, Mapping[str, Embeddings]], paired_images: bool = True) -> pd.DataFrame:
    """Gap magnitudes and cone statistics per model.

    models: model name -> {"text": class prompt embeddings, "rgb": image embeddings, "ms": MS image
    embeddings (optional)}. Columns gap_text_rgb, gap_text_ms, gap_rgb_ms, cone_text, cone_rgb,
    cone_ms and, with `paired_images` (rgb and ms rows are the same tiles), cos_rgb_ms, the mean
    cosine between the two views of each tile. Absent modalities give NaN. Index: model.
    """
    rows = []
    for model, sets in models.items():
        unknown = set(sets) - {"text", "rgb", "ms"}
        if unknown or "text" not in sets or "rgb" not in sets:
            raise ValueError(
                f"gap_summary: model '{model}' needs keys 'text' and 'rgb' (and optionally 'ms'), "
                f"got {sorted(sets)}"
            )
        row: dict[str, Any] = {"model": model}
        for a, b in MODALITY_PAIRS:
            present = a in sets and b in sets
            row[f"gap_{a}_{b}"] = gap_magnitude(sets[a], sets[b]) if present else np.nan
        for m in ("text", "rgb", "ms"):
            row[f"cone_{m}"] = cone_statistic(sets[m]) if m in sets else np.nan
        if paired_images:
            row["cos_rgb_ms"] = float(paired_cosine(sets["rgb"], sets["ms"]).mean()) if "ms" in sets else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")

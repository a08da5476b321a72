"""Figures of the book's chapters (besides :func:`mtmg.evaluation.gap.plot_reduction`).

Every function returns a new :class:`matplotlib.figure.Figure` that no pyplot state holds, so a
notebook shows it exactly once (as the value of a cell) and nothing leaks between figures. Every
figure has a title and labelled axes; image grids label their rows and columns instead of pixels.
"""
from __future__ import annotations

import base64
import functools
import io
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
from matplotlib import colormaps, rc_context
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from PIL import Image

from mtmg.book.report import PAPER_GAINS
from mtmg.core import checkpoint, paths
from mtmg.data.sentinel2 import RGB_WHITE_POINT, SSL4EO_BANDS, band_index, ndvi, rgb_composite
from mtmg.evaluation.probe import ALL, ENCODERS

DPI = 200
#: Widest figure in inches: the book's text column is about 8 inches, so fonts keep their size on the page.
PAGE_WIDTH = 8.0
CORRECT, WRONG = "#1a9850", "#d73027"
#: Font sizes (points) chosen to stay readable when a figure fills the page width.
BOOK_STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
              "ytick.labelsize": 10, "legend.fontsize": 10, "figure.titlesize": 13,
              "legend.title_fontsize": 10}
#: One colour per EuroSAT class in every chapter: tab10 with its grey (Residential) replaced by near-black,
#: so that grey only ever means "no label".
EUROSAT_COLOURS = {
    "AnnualCrop": "#1f77b4", "Forest": "#ff7f0e", "HerbaceousVegetation": "#2ca02c", "Highway": "#d62728",
    "Industrial": "#9467bd", "Pasture": "#8c564b", "PermanentCrop": "#e377c2", "Residential": "#1a1a1a",
    "River": "#bcbd22", "SeaLake": "#17becf"}
NO_LABEL = "#c8c8c8"
#: One colour per model (and for the text prompts) in every chapter and in the two-stage diagram
#: (after Paul Tol's colour-blind-safe schemes, away from the class colours); see :func:`model_colour`.
MODEL_COLOURS = {"text": "#EE3377", "zero-shot CLIP": "#004488", "patched CLIP": "#DDAA33",
                 "CLIP at α = 0.5": "#F2DC9B", "fine-tuned CLIP": "#994455", "student": "#009988",
                 "student before training": "#888888"}
#: Colours of the two kinds of dataset (fixed, not model colours).
ROLE_COLOURS = {"remote sensing": "#77AADD", "supported": "#CCCCCC"}
#: Plain names of the centroid gaps of :func:`mtmg.book.report.gap_table`.
GAP_LABELS = {"gap_text_rgb": "text ↔ RGB", "gap_text_ms": "text ↔ MS", "gap_rgb_ms": "RGB ↔ MS"}
_MODEL_RULES = ((r"before|init", "student before training"), (r"student", "student"), (r"text|prompt", "text"),
                (r"\bms\b", "student"), (r"fine-tuned|α ?= ?1\b", "fine-tuned CLIP"),
                (r"authors|α ?= ?0\.5", "CLIP at α = 0.5"), (r"patched|teacher|selected", "patched CLIP"),
                (r"zero-shot|α ?= ?0\b|clip", "zero-shot CLIP"))


def model_colour(label: str) -> str:
    """The colour of the model a label names ("student (aligned) on MS", "RGB, patched CLIP", "fine-tuned
    (α=1)", "text (class prompts)" ...): the same model has the same colour in every figure."""
    name = str(label).lower()
    for pattern, model in _MODEL_RULES:
        if re.search(pattern, name):
            return MODEL_COLOURS[model]
    raise KeyError(f"no model colour for {label!r}; name one of {list(MODEL_COLOURS)} in the label")


def book_style(make: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure under :data:`BOOK_STYLE` (the style applies to the artists it creates only)."""
    @functools.wraps(make)
    def wrapped(*args: Any, **kwargs: Any) -> Figure:
        with rc_context(BOOK_STYLE):
            return make(*args, **kwargs)
    return wrapped


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure at the book's resolution, at most :data:`PAGE_WIDTH` wide, not
    registered with pyplot."""
    return Figure(figsize=(min(width, PAGE_WIDTH), height), dpi=DPI, layout="constrained")


def class_colour(name: str, index: int = 0, n: int = 10) -> Any:
    """The colour of a class: fixed for EuroSAT class names, from :func:`_class_colours` otherwise."""
    return EUROSAT_COLOURS.get(str(name), _class_colours(max(n, index + 1))[index])


# --- tile views ------------------------------------------------------------------------------------------

def false_colour(array13: np.ndarray, level: str = "L1C") -> np.ndarray:
    """uint8 (H, W, 3) false-colour composite B08, B04, B03 (vegetation red), scaled like the RGB composite
    but with twice the white point for the brighter near infrared."""
    x = np.asarray(array13, dtype=np.float64)
    white = RGB_WHITE_POINT[level]
    scale = np.array([2 * white, white, white])[:, None, None]
    bands = x[[band_index("B08"), band_index("B04"), band_index("B03")]] * (255.0 / scale)
    return np.clip(bands, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def _image_axis(ax: Any, image: np.ndarray, title: str | None = None, **kw: Any) -> Any:
    shown = ax.imshow(image, **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize="small")
    return shown


@book_style
def tile_views(tiles: Sequence[Any], title: str = "Sentinel-2 tiles in three views") -> Figure:
    """One column per tile (objects with ``array13``, ``classname``, ``level``): RGB composite,
    false colour (B08, B04, B03) and NDVI rows."""
    if not tiles:
        raise ValueError("tile_views: no tiles given")
    per_row = min(5, len(tiles))
    blocks = -(-len(tiles) // per_row)
    fig = new_figure(PAGE_WIDTH, 4.9 * blocks + 0.4)
    axes = fig.subplots(3 * blocks, per_row + 1, squeeze=False, width_ratios=[1] * per_row + [0.08])
    shown = None
    for j, tile in enumerate(tiles):
        b, c = divmod(j, per_row)
        _image_axis(axes[3 * b, c], rgb_composite(tile.array13, tile.level), _wrap(tile.classname))
        _image_axis(axes[3 * b + 1, c], false_colour(tile.array13, tile.level))
        shown = _image_axis(axes[3 * b + 2, c], ndvi(tile.array13), cmap="RdYlGn", vmin=-0.5, vmax=0.9)
    for j in range(len(tiles), blocks * per_row):
        b, c = divmod(j, per_row)
        for r in range(3):
            axes[3 * b + r, c].set_axis_off()
    for b in range(blocks):
        for i, label in enumerate(("RGB", "false colour", "NDVI")):
            axes[3 * b + i, 0].set_ylabel(label)
        axes[3 * b, -1].set_axis_off()
        axes[3 * b + 1, -1].set_axis_off()
        fig.colorbar(shown, cax=axes[3 * b + 2, -1], label="NDVI")
    fig.suptitle(title)
    return fig


def _wrap(name: str) -> str:
    """Class names such as HerbaceousVegetation split before their second capital, to fit a tile."""
    for i in range(1, len(name)):
        if name[i].isupper() and len(name) > 12:
            return name[:i] + "\n" + name[i:]
    return name


@book_style
def class_spectra(spectra: pd.DataFrame, title: str = "Mean reflectance per band and class") -> Figure:
    """Mean reflectance of each band (columns, SSL4EO order) per class (rows); RGB bands shaded."""
    fig = new_figure(8, 4.2)
    ax = fig.subplots()
    x = np.arange(spectra.shape[1])
    for i, (name, row) in enumerate(spectra.iterrows()):
        ax.plot(x, row.to_numpy(), marker="o", ms=3, color=class_colour(name, i, len(spectra)), label=str(name))
    for band in ("B02", "B03", "B04"):
        if band in spectra.columns:
            k = list(spectra.columns).index(band)
            ax.axvspan(k - 0.4, k + 0.4, color="0.9", zorder=0)
    ax.set_xticks(x, list(spectra.columns), rotation=45)
    ax.set_xlabel("Sentinel-2 band (shaded: the three bands CLIP sees)")
    ax.set_ylabel("mean reflectance (x / 10000)")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.28), ncols=4)
    return fig


def _class_colours(n: int) -> list[Any]:
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / max(n - 1, 1)) for i in range(n)]


# --- chapter 1 -------------------------------------------------------------------------------------------

@book_style
def zeroshot_scores(table: pd.DataFrame, title: str = "Zero-shot CLIP: remote sensing vs its supported task") -> Figure:
    """Bars of ``report.zeroshot_table``: one per dataset, coloured by role, chance marked."""
    fig = new_figure(max(5.0, 1.3 * len(table) + 2), 4)
    ax = fig.subplots()
    colours = ROLE_COLOURS
    x = np.arange(len(table))
    ax.bar(x, table["score (%)"], color=[colours[r] for r in table["role"]])
    for i, (score, chance) in enumerate(zip(table["score (%)"], table["chance (%)"])):
        ax.text(i, score + 1, f"{score:.1f}", ha="center", fontsize="small")
        if chance is not None and not pd.isna(chance):
            ax.hlines(chance, i - 0.4, i + 0.4, colors="black", linestyles="--")
    ax.set_xticks(x, [f"{d}\n({m})" for d, m in zip(table["dataset"], table["metric"])], fontsize="small")
    ax.set_ylim(0, 105)
    ax.set_xlabel("dataset (metric)")
    ax.set_ylabel("score (%)")
    ax.set_title(title)
    handles = [Patch(color=c, label=r) for r, c in colours.items() if r in set(table["role"])]
    handles.append(Line2D([], [], color="black", linestyle="--", label="chance"))
    ax.legend(handles=handles, fontsize="small")
    return fig


@book_style
def per_class_scores(classes: Sequence[str], values: Sequence[float | None], title: str,
                     xlabel: str = "accuracy (%)", chance: float | None = None) -> Figure:
    """Horizontal bars of per-class scores (fractions), worst at the top."""
    vals = np.array([np.nan if v is None else 100 * v for v in values], dtype=float)
    order = np.argsort(np.nan_to_num(vals, nan=-1), kind="stable")[::-1]
    fig = new_figure(6.5, 0.35 * len(classes) + 1.4)
    ax = fig.subplots()
    y = np.arange(len(classes))
    below = [chance is not None and v < 100 * chance for v in np.nan_to_num(vals[order])]
    bars = ax.barh(y, vals[order], color=[WRONG if b else MODEL_COLOURS["zero-shot CLIP"] for b in below])
    ax.bar_label(bars, fmt="%.0f", fontsize="small", padding=2)
    ax.set_yticks(y, [classes[i] for i in order], fontsize="small")
    for label, is_below in zip(ax.get_yticklabels(), below):  # also visible where a bar has zero length
        if is_below:
            label.set_color(WRONG)
    if chance is not None:
        line = ax.axvline(100 * chance, color="black", linestyle="--", label=f"chance ({100 * chance:.0f} %)")
        handles = [line] + ([Patch(color=WRONG, label="below chance")] if any(below) else [])  # red only if shown
        ax.legend(handles=handles, ncols=len(handles), fontsize="small", loc="upper center",
                  bbox_to_anchor=(0.5, -0.12 - 1.2 / len(classes)),
                  frameon=False)
    ax.set_xlim(0, 108)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("class")
    ax.set_title(title)
    return fig


@book_style
def confusion(cm: Any, classes: Sequence[str], title: str) -> Figure:
    """Confusion matrix with counts; rows true class, columns predicted class, colour = row fraction."""
    cm = np.asarray(cm)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig = new_figure(0.55 * n + 3, 0.5 * n + 2)
    ax = fig.subplots()
    shown = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize="small",
                        color="white" if rows[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize="small")
    ax.set_yticks(range(n), classes, fontsize="small")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(shown, ax=ax, shrink=0.8, label="fraction of the true class")
    return fig


# --- chapter 2 -------------------------------------------------------------------------------------------

@book_style
def alpha_sweep(scores: pd.DataFrame, alpha: float, paper_alpha: float = 0.5, labels: Mapping[str, str] | None = None,
                title: str = "PAINT: interpolating zero-shot and fine-tuned weights") -> Figure:
    """Score of every task against α, one panel per split, with the mean, the selected α and the authors' α."""
    splits = [s for s in ("val", "test") if s in set(scores["split"])]
    fig = new_figure(5.2 * len(splits) + 1, 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(splits), sharey=True))
    labels = labels or {}
    for ax, split in zip(axes, splits):
        part = scores[scores["split"] == split]
        table = part.pivot_table(index="alpha", columns="task", values="value", aggfunc="first", sort=False)
        for i, task in enumerate(table.columns):
            ax.plot(table.index, 100 * table[task], marker="o", ms=4, color=f"C{i}", label=labels.get(task, task))
        ax.plot(table.index, 100 * table.mean(axis=1), color="black", linestyle=":", label="mean of the tasks")
        ax.axvline(alpha, color=MODEL_COLOURS["patched CLIP"], linestyle="--", lw=2, label=f"selected α = {alpha:g}")
        if abs(paper_alpha - alpha) > 1e-9:
            ax.axvline(paper_alpha, color="0.5", linestyle="-.", label=f"α = {paper_alpha:g} (authors' code)")
        ax.set_xlabel("α (0 = zero-shot, 1 = fine-tuned)")
        ax.set_title({"val": "validation (α is chosen here)", "test": "test (reported)"}[split])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score (%)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(3, len(names)))
    fig.suptitle(title)
    return fig


@book_style
def before_after(table: pd.DataFrame, title: str = "Before and after patching (test)") -> Figure:
    """Grouped bars of ``report.before_after``: one group per task, one bar per α column."""
    cols = [c for c in table.columns if "(points)" not in c]
    fig = new_figure(max(5.5, 2.2 * len(table) + 2), 4)
    ax = fig.subplots()
    width = 0.8 / len(cols)
    x = np.arange(len(table))
    for i, col in enumerate(cols):
        bars = ax.bar(x + (i - (len(cols) - 1) / 2) * width, table[col], width, label=col, color=model_colour(col),
                      edgecolor="white")
        ax.bar_label(bars, fmt="%.0f", fontsize="small")
    ax.set_xticks(x, table.index)
    ax.set_ylim(0, 110)
    ax.set_xlabel("task")
    ax.set_ylabel("score (%)")
    ax.set_title(title)
    ax.legend(fontsize="small", ncols=2, loc="upper right")
    return fig


@book_style
def training_curves(log: pd.DataFrame, columns: Sequence[str] = ("loss",), title: str = "Training curve",
                    smooth: int | None = None) -> Figure:
    """Losses from a :func:`mtmg.method.training.fit` CSV log against the step (moving average over ``smooth``
    steps drawn on top of the raw values), learning rate in a second panel."""
    fig = new_figure(9, 3.6)
    ax, ax_lr = fig.subplots(1, 2, width_ratios=[2, 1])
    smooth = smooth or max(1, len(log) // 25)
    for i, col in enumerate(columns):
        if col not in log:
            raise KeyError(f"training log has no column {col!r}; columns: {list(log.columns)}")
        ax.plot(log["step"], log[col], color=f"C{i}", alpha=0.3, lw=0.8)
        ax.plot(log["step"], log[col].rolling(smooth, min_periods=1).mean(), color=f"C{i}", label=col)
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (log scale)")
    ax.set_title(f"{title}: losses")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    ax_lr.plot(log["step"], log["lr"], color="0.3")
    ax_lr.set_xlabel("optimiser step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title("schedule (warm-up, cosine)")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    return fig


# --- chapter 3 -------------------------------------------------------------------------------------------

@book_style
def model_scores(table: pd.DataFrame, title: str = "Zero-shot classification: student on MS, CLIP on RGB",
                 ylabel: str = "score (%)") -> Figure:
    """Bars of ``report.alignment_scores``: one group per dataset, one bar per model."""
    fig = new_figure(max(6.0, 2.5 * table.shape[1] + 3), 4)
    ax = fig.subplots()
    n = len(table)
    width = 0.8 / n
    x = np.arange(table.shape[1])
    for i, (model, row) in enumerate(table.iterrows()):
        bars = ax.bar(x + (i - (n - 1) / 2) * width, row.to_numpy(), width, label=model, color=model_colour(model))
        ax.bar_label(bars, fmt="%.1f", fontsize="small")
    ax.set_xticks(x, table.columns)
    ax.set_ylim(0, 110)
    ax.set_xlabel("dataset (test split)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left")
    return fig


@book_style
def recall_curves(curves: pd.DataFrame, points: pd.DataFrame | None = None,
                  title: str = "RGB↔MS retrieval (same tiles)") -> Figure:
    """Recall@k against k per direction (``report.retrieval_curve``) with the chance level k/N.

    ``points``: optional recall@k of other models (columns model, direction, k, recall) as markers.
    """
    directions = list(dict.fromkeys(curves["direction"]))
    fig = new_figure(5 * len(directions) + 1, 4)
    axes = np.atleast_1d(fig.subplots(1, len(directions), sharey=True))
    names = {"ms->rgb": "MS query → RGB gallery", "rgb->ms": "RGB query → MS gallery"}
    for ax, direction in zip(axes, directions):
        part = curves[curves["direction"] == direction]
        ax.plot(part["k"], 100 * part["recall"], color=model_colour("student"), label="aligned student")
        ax.plot(part["k"], 100 * part["chance"], color="black", linestyle="--", label="chance (k / N)")
        if points is not None:
            for model, group in points[points["direction"] == direction].groupby("model", sort=False):
                ax.plot(group["k"], 100 * group["recall"], marker="s", linestyle="", color=model_colour(model),
                        label=model)
        ax.set_xscale("log")
        ax.set_xlabel("k (log scale)")
        ax.set_title(names.get(direction, direction))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall@k (%)")
    axes[-1].legend(fontsize="small", loc="lower right")
    fig.suptitle(title)
    return fig


@book_style
def retrieval_examples(examples: Sequence[Any], tiles: Mapping[str, Any], classnames: Sequence[str],
                       title: str = "MS queries (false colour) and their top RGB matches") -> Figure:
    """One row per query: the MS tile in false colour, then its top-k RGB composites framed green when
    the class matches the query's and red otherwise; the query's own tile is marked "(self)"."""
    if not examples:
        raise ValueError("retrieval_examples: no examples given")
    k = len(examples[0].hits)
    fig = new_figure(1.45 * (k + 1) + 0.5, 1.7 * len(examples) + 0.6)
    axes = fig.subplots(len(examples), k + 1, squeeze=False)
    for r, ex in enumerate(examples):
        query = tiles[ex.query]
        _image_axis(axes[r, 0], false_colour(query.array13, query.level), f"query: {classnames[ex.query_label]}")
        axes[r, 0].set_ylabel(f"rank of own\nRGB: {ex.positive_rank + 1}", fontsize="small")
        for c, (hit, label, sim) in enumerate(zip(ex.hits, ex.hit_labels, ex.similarities), start=1):
            tile = tiles[hit]
            ax = axes[r, c]
            own = " (self)" if hit == ex.query else ""
            _image_axis(ax, rgb_composite(tile.array13, tile.level), f"{classnames[label]}{own}\ncos {sim:.2f}")
            colour = CORRECT if label == ex.query_label else WRONG
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
    for c in range(k + 1):
        axes[-1, c].set_xlabel("MS query" if c == 0 else f"RGB hit {c}", fontsize="small")
    fig.suptitle(title + " (green: same class, red: other class)")
    return fig


# --- chapter 4 -------------------------------------------------------------------------------------------

@book_style
def reduction(layout: pd.DataFrame, method: str = "UMAP", title: str = "Text, RGB and MS embeddings",
              class_names: Mapping[str, str] | None = None) -> Figure:
    """Two panels of a ``reduce_2d`` layout: coloured by set (left) and by class (right, marker = set).

    ``class_names`` maps the layout's labels (prompt names) to the class names used elsewhere in the
    book; classes keep their :data:`EUROSAT_COLOURS`, and grey is used only for points without a label.
    """
    missing = {"x", "y", "modality", "label"} - set(layout.columns)
    if missing:
        raise ValueError(f"reduction: layout lacks columns {sorted(missing)}; "
                         "build it with mtmg.evaluation.gap.reduce_2d")
    names = dict(class_names or {})
    label = layout["label"].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) or v == ""
                                else names.get(str(v), str(v)))
    sets = list(dict.fromkeys(layout["modality"]))
    counts = layout["modality"].value_counts()
    markers = dict(zip(sets, "o^DvP*X"))  # squares are kept for the class swatches of the legend
    fig = new_figure(PAGE_WIDTH, 7.6)
    by_set, by_class = fig.subplots(2, 1)
    for m in sets:
        part = layout[layout["modality"] == m]
        small = counts[m] < 0.1 * counts.max()
        by_set.scatter(part["x"], part["y"], s=60 if small else 16, marker=markers[m], color=model_colour(m),
                       edgecolors="black" if small else "none", linewidths=0.6, label=m, zorder=3 if small else 2)
    by_set.set_title("coloured by set")
    by_set.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", title="set")
    classes = [c for c in dict.fromkeys(label) if c is not None]
    unlabelled = label.isna()
    if unlabelled.any():
        part = layout[unlabelled]
        by_class.scatter(part["x"], part["y"], s=16, color=NO_LABEL, marker="o", label="no label", zorder=1)
    for i, c in enumerate(classes):
        for m in sets:
            part = layout[(label == c) & (layout["modality"] == m)]
            if len(part):
                small = counts[m] < 0.1 * counts.max()
                by_class.scatter(part["x"], part["y"], s=60 if small else 16, marker=markers[m],
                                 color=class_colour(c, i, len(classes)), edgecolors="black" if small else "none",
                                 linewidths=0.6, zorder=3 if small else 2)
    handles = [Patch(color=class_colour(c, i, len(classes)), label=c) for i, c in enumerate(classes)]
    handles += [Line2D([], [], linestyle="", marker=markers[m], markersize=7, markerfacecolor="none",
                       markeredgecolor="black", label=m) for m in sets]
    by_class.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small",
                    title="class (colour), set (marker)")
    by_class.set_title("coloured by class")
    for ax in (by_set, by_class):
        ax.set_xlabel(f"{method} 1")
        ax.set_ylabel(f"{method} 2")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title} ({method}, fitted jointly)")
    return fig


def gap_coordinates(sets: Mapping[str, Any], start: str, end: str) -> pd.DataFrame:
    """Each unit-normalised embedding's coordinate along the gap direction from the centroid of
    ``sets[start]`` to that of ``sets[end]``, scaled so that the two centroids project to 0 and 1.

    Returns columns ``set`` and ``coordinate``, one row per embedding of every set.
    """
    def unit(x: Any) -> np.ndarray:
        x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    units = {name: unit(x) for name, x in sets.items()}
    a, b = units[start].mean(axis=0), units[end].mean(axis=0)
    direction = b - a
    length = float(direction @ direction)
    if length == 0:
        raise ValueError(f"gap_coordinates: the centroids of {start!r} and {end!r} coincide; there is no gap direction")
    rows = [pd.DataFrame({"set": name, "coordinate": (x - a) @ direction / length}) for name, x in units.items()]
    return pd.concat(rows, ignore_index=True)


@book_style
def gap_axis(coords: pd.DataFrame, start: str, end: str,
             title: str = "Every embedding's position along the gap direction") -> Figure:
    """One row of points per set at its :func:`gap_coordinates` value (0: centroid of ``start``, 1: of ``end``)."""
    sets = list(dict.fromkeys(coords["set"]))
    fig = new_figure(PAGE_WIDTH, 0.75 * len(sets) + 1.6)
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    for i, name in enumerate(sets):
        x = coords.loc[coords["set"] == name, "coordinate"].to_numpy()
        ax.scatter(x, i + rng.uniform(-0.18, 0.18, len(x)), s=14, color=model_colour(name), alpha=0.8)
        ax.plot([np.median(x)] * 2, [i - 0.3, i + 0.3], color="black", lw=2)
    for value, _name in ((0, start), (1, end)):
        ax.axvline(value, color="0.5", linestyle="--", lw=1)
    ax.set_yticks(range(len(sets)), sets)
    ax.invert_yaxis()
    ax.set_xlabel(f"coordinate along the gap direction (0 = centroid of {start}, 1 = centroid of {end})")
    ax.set_title(title + " (black bar: median)")
    ax.grid(axis="x", alpha=0.3)
    return fig


@book_style
def gap_bars(gaps: pd.DataFrame, title: str = "Centroid gaps between modalities") -> Figure:
    """Grouped bars of the ``gap_*`` columns of ``mtmg.evaluation.gap.gap_summary`` per model (NaN bars left out)."""
    cols = [c for c in ("gap_text_rgb", "gap_text_ms", "gap_rgb_ms") if c in gaps]
    fig = new_figure(8, 4)
    ax = fig.subplots()
    width = 0.8 / len(cols)
    x = np.arange(len(gaps))
    for i, col in enumerate(cols):
        values = gaps[col].to_numpy(dtype=float)
        bars = ax.bar(x + (i - (len(cols) - 1) / 2) * width, np.nan_to_num(values), width,
                      label=GAP_LABELS.get(col, col), color=("0.25", "0.55", "0.8")[i % 3], edgecolor="black",
                      linewidth=0.5)
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.2f}" for v in values], fontsize="small")
    ax.set_xticks(x, gaps.index, fontsize="small")
    ax.set_xlabel("model")
    ax.set_ylabel("‖centroid difference‖\n(unit-normalised embeddings)")
    ax.set_ylim(0, 1.15 * max(1e-9, float(np.nanmax(gaps[cols].to_numpy(dtype=float)))))
    ax.set_title(title)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=len(cols))  # never over a bar
    return fig


@book_style
def cosine_histogram(values: np.ndarray, title: str = "The same images under zero-shot and patched CLIP",
                     xlabel: str = "cosine similarity of an image's two embeddings") -> Figure:
    """Histogram of paired cosine similarities with the median marked."""
    values = np.asarray(values, dtype=float)
    fig = new_figure(6, 3.6)
    ax = fig.subplots()
    # equal up to rounding (e.g. the selected alpha is 0): a visible range instead of too narrow bins
    span = None if np.ptp(values) > 1e-9 else (values.min() - 1e-3, values.max() + 1e-3)
    ax.hist(values, bins=min(30, max(5, len(values) // 3)), range=span, color="C0", edgecolor="white")
    ax.axvline(np.median(values), color="C3", linestyle="--", label=f"median {np.median(values):.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("number of images")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig


@book_style
def shift_curves(shift: pd.DataFrame, title: str = "Closing the gap by shifting embeddings") -> Figure:
    """Zero-shot accuracy against the signed remaining gap after a shift (``mtmg.evaluation.gap.shift_experiment``)."""
    top1 = shift[shift["metric"] == "top1"].sort_values("gap_signed")
    fig = new_figure(6, 3.8)
    ax = fig.subplots()
    ax.plot(top1["gap_signed"], 100 * top1["value"], marker="o", color=MODEL_COLOURS["patched CLIP"])
    original = top1.iloc[(top1["lambda"].abs()).argmin()]
    ax.axvline(original["gap_signed"], color="0.5", linestyle="--", label="original embeddings (λ = 0)")
    ax.set_xlabel("signed centroid gap after the shift")
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


# --- chapter 5 -------------------------------------------------------------------------------------------

@book_style
def gains_comparison(gains: pd.DataFrame, profile: str, title: str = "Gain from patching per dataset") -> Figure:
    """This run's gains (``report.gains_table``) beside the paper's, as two panels (different setups)."""
    fig = new_figure(11, 4)
    ours, theirs = fig.subplots(1, 2)
    bars = ours.bar(np.arange(len(gains)), gains["gain (points)"],
                    color=[ROLE_COLOURS[r] for r in gains["role"]])
    ours.bar_label(bars, fmt="%+.1f", fontsize="small")
    ours.margins(y=0.15)
    ours.set_xticks(np.arange(len(gains)), [d.replace(" (", "\n(") for d in gains["dataset"]], fontsize="small")
    ours.axhline(0, color="black", lw=0.8)
    ours.set_xlabel("dataset")
    ours.set_ylabel("patched − zero-shot (points)")
    ours.set_title(f"this run (profile {profile})")
    ref = pd.DataFrame([vars(r) for r in PAPER_GAINS])
    theirs.bar_label(theirs.bar(np.arange(len(ref)), ref["value"], color="0.5"), fmt="%+.2f", fontsize="small")
    theirs.margins(y=0.1)
    theirs.set_xticks(np.arange(len(ref)), list(ref["dataset"]), fontsize="small", rotation=30, ha="right",
                      rotation_mode="anchor")
    theirs.set_xlabel("dataset")
    theirs.set_ylabel("reported gain (mAP or accuracy points)")
    theirs.set_title("Zavras et al., abstract (full data)")
    fig.suptitle(title + " — not the same setup: compare directions, not sizes")
    return fig


@book_style
def bands_used(title: str = "What each model reads") -> Figure:
    """The 13 Sentinel-2 bands (SSL4EO order) marked by which model reads them."""
    fig = new_figure(8, 1.9)
    ax = fig.subplots()
    x = np.arange(len(SSL4EO_BANDS))
    for row, (model, bands) in enumerate((("zero-shot CLIP", ("B02", "B03", "B04")), ("student", SSL4EO_BANDS))):
        ax.scatter(x, np.full(len(x), row), s=160, marker="s",
                   c=[MODEL_COLOURS[model] if b in bands else "0.9" for b in SSL4EO_BANDS], edgecolors="0.6")
    ax.set_xticks(x, list(SSL4EO_BANDS))
    ax.set_yticks([0, 1], ["CLIP (RGB composite)", "student (MS view)"])
    ax.set_ylim(-0.7, 1.7)
    ax.set_xlabel("Sentinel-2 band")
    ax.set_ylabel("model")
    ax.set_title(title)
    return fig


# --- interactive chapter-4 map ---------------------------------------------------------------------------

def thumbnail_uri(image: np.ndarray, size: int = 64) -> str:
    """A ``data:`` URI of a uint8 (H, W, 3) image as a small JPEG, for tooltips that work offline."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((size, size), Image.NEAREST).save(
        buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def interactive_map(layout: pd.DataFrame, thumbnails: Sequence[str | None],
                    class_names: Mapping[str, str] | None = None,
                    title: str = "Text, RGB and MS embeddings (hover a point)") -> str:
    """Self-contained HTML (BokehJS inlined, thumbnails as data URIs) of a ``reduce_2d`` layout: colour =
    class, marker = set; hovering a point shows its tile, class and set. Works with no network."""
    from bokeh.embed import components  # imported here: bokeh takes seconds, and only this figure needs it
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure
    from bokeh.resources import Resources

    if len(thumbnails) != len(layout):
        raise ValueError(f"interactive_map: {len(thumbnails)} thumbnails for {len(layout)} points")
    names = dict(class_names or {})
    labels = [None if v is None or v == "" or (isinstance(v, float) and np.isnan(v)) else names.get(str(v), str(v))
              for v in layout["label"]]
    classes = [c for c in dict.fromkeys(labels) if c is not None]
    colour = {c: to_hex(class_colour(c, i, len(classes))) for i, c in enumerate(classes)}
    shapes = ("circle", "triangle", "square", "diamond", "inverted_triangle")
    markers = dict(zip(dict.fromkeys(layout["modality"]), shapes))
    plot = figure(width=760, height=560, title=title, tools="pan,wheel_zoom,box_zoom,reset",
                  x_axis_label="UMAP 1", y_axis_label="UMAP 2", sizing_mode="scale_width")
    blank = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
    for m, marker in markers.items():
        rows = np.flatnonzero((layout["modality"] == m).to_numpy())
        source = ColumnDataSource({
            "x": layout["x"].to_numpy()[rows], "y": layout["y"].to_numpy()[rows],
            "cls": [labels[r] or "no label" for r in rows], "set": [m] * len(rows),
            "thumb": [thumbnails[r] or blank for r in rows],
            "colour": [colour.get(labels[r], NO_LABEL) for r in rows]})
        plot.scatter("x", "y", source=source, marker=marker, size=13 if len(rows) < 20 else 8, color="colour",
                     line_color="black" if len(rows) < 20 else None, alpha=0.85, legend_label=m)
    plot.add_tools(HoverTool(tooltips="""
        <div><img src="@thumb" width="64" height="64" style="image-rendering: pixelated" alt="tile"></div>
        <div><b>@cls</b></div><div>@set</div>"""))
    plot.legend.click_policy = "hide"
    plot.legend.ncols = 2
    plot.add_layout(plot.legend[0], "below")  # under the points: inside, on a phone, it hid a third of them
    plot.xaxis.major_label_text_font_size = plot.yaxis.major_label_text_font_size = "0pt"
    script, div = components(plot)
    bokeh_js = Resources(mode="inline", components=["bokeh"]).render_js()  # BokehJS core only (1.3 MB)
    return f'<div class="mtmg-interactive-map">{bokeh_js}{script}{div}</div>'


def layout_thumbnails(layout: pd.DataFrame, tiles: Sequence[Any]) -> list[str | None]:
    """Tooltip images for the rows of a chapter-4 layout: none for text rows, the RGB composite for RGB
    sets and the false-colour view for MS sets. Every image set must list ``tiles`` in the same order."""
    uris_rgb = [thumbnail_uri(rgb_composite(t.array13, t.level)) for t in tiles]
    uris_ms = [thumbnail_uri(false_colour(t.array13, t.level)) for t in tiles]
    out: list[str | None] = []
    for name in dict.fromkeys(layout["modality"]):
        n = int((layout["modality"] == name).sum())
        if str(name).lower().startswith("text"):
            out += [None] * n
        elif n != len(tiles):
            raise ValueError(f"layout_thumbnails: set {name!r} has {n} rows but {len(tiles)} tiles were given")
        else:
            out += uris_ms if "MS" in str(name) else uris_rgb
    if list(layout["modality"]) != [m for m in dict.fromkeys(layout["modality"])
                                    for _ in range(int((layout["modality"] == m).sum()))]:
        raise ValueError("layout_thumbnails: the layout's rows must come in blocks, one block per set")
    return out


@book_style
def probe_curves(results: pd.DataFrame, title: str = "Linear probe: test score against training tiles per class"
                 ) -> Figure:
    """Few-shot curves of :func:`mtmg.runs.probe.run_probe` results: one panel per dataset, one line per
    encoder (mean over draws, the draws as points); ``all`` is the whole training split."""
    datasets = list(dict.fromkeys(results["dataset"]))
    fig = new_figure(5.5 * len(datasets), 4)
    axes = np.atleast_1d(fig.subplots(1, len(datasets)))
    for ax, dataset in zip(axes, datasets):
        part = results[results["dataset"] == dataset]
        shots = sorted(k for k in set(part["shots"]) if k != ALL) + ([ALL] if (part["shots"] == ALL).any() else [])
        x = {k: i for i, k in enumerate(shots)}
        for model, (_, label) in ENCODERS.items():
            rows = part[part["model"] == model]
            if rows.empty:
                continue
            mean = rows.groupby("shots")["value"].mean()
            ax.plot([x[k] for k in shots], [100 * mean[k] for k in shots], marker="o", color=model_colour(label),
                    label=label)
            ax.scatter([x[k] for k in rows["shots"]], 100 * rows["value"], color=model_colour(label), s=10, alpha=0.4)
        ax.set_xticks(range(len(shots)), ["all" if k == ALL else str(k) for k in shots])
        ax.set_xlabel("training tiles per class")
        ax.set_ylabel(f"test {'macro AP' if part['metric'].iloc[0] == 'macro_ap' else 'top-1 accuracy'} (%)")
        ax.set_title(dataset)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize="small")
    fig.suptitle(title)
    return fig


# --- the method in one picture ---------------------------------------------------------------------------

#: Where the book keeps the two-stage diagram (written by :func:`write_two_stage_diagram`).
DIAGRAM_FILE = "book/two_stages.svg"


def _svg_box(x: float, y: float, w: float, h: float, lines: Sequence[str], colour: str) -> str:
    step = 17
    top = y + h / 2 - step * (len(lines) - 1) / 2 + 5
    spans = "".join(f'<tspan x="{x + w / 2:g}" y="{top + i * step:g}">{escape(t)}</tspan>' for i, t in enumerate(lines))
    return (f'<rect x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" rx="6" fill="{colour}" fill-opacity="0.14" '
            f'stroke="{colour}" stroke-width="2"/><text text-anchor="middle">{spans}</text>')


def _svg_arrow(x1: float, y1: float, x2: float, y2: float, dashed: bool = False) -> str:
    dash = ' stroke-dasharray="5 4"' if dashed else ""
    return (f'<line x1="{x1:g}" y1="{y1:g}" x2="{x2:g}" y2="{y2:g}" stroke="#333333" stroke-width="1.6"{dash} '
            'marker-end="url(#head)"/>')


def two_stage_diagram() -> str:
    """The method in one vector picture (SVG text, in :data:`MODEL_COLOURS`): stage 1 fine-tunes CLIP's image
    tower through the frozen text head and interpolates it (PAINT); stage 2 distils the patched tower, shown
    RGB composites, into a 13-band student through the same frozen head."""
    c = MODEL_COLOURS
    data, loss = "#555555", "#555555"
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 900 440" width="900" height="440" role="img" '
        'font-family="DejaVu Sans, Arial, sans-serif" font-size="14" fill="#1a1a1a">',
        '<title>The two stages of the method</title>',
        '<desc>Stage 1, PAINT patching: the RGB composite goes through CLIP\'s image tower and the frozen zero-shot '
        'head built by the frozen text tower from the class prompts; the tower is fine-tuned with cross-entropy and '
        'interpolated with its zero-shot weights, giving the patched teacher. Stage 2, distillation: the frozen '
        'patched tower embeds the RGB composite, a student embeds the 13-band view of the same tile, and the '
        'student is trained to match the teacher\'s embedding plus a small classification term through the same '
        'frozen head.</desc>',
        '<defs><marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#333333"/></marker></defs>',
        '<rect x="1" y="1" width="898" height="438" fill="white"/>',
        # stage 1
        '<text x="222" y="26" text-anchor="middle" font-size="15" font-weight="bold">'
        'Stage 1 · PAINT, patching with interpolation (ch. 2)</text>',
        _svg_box(20, 44, 190, 44, ["RGB composite", "(B04, B03, B02)"], data),
        _svg_box(235, 44, 190, 44, ["class prompts", "“a satellite photo of …”"], c["text"]),
        _svg_box(20, 118, 190, 44, ["CLIP image tower θ", "(trained)"], c["zero-shot CLIP"]),
        _svg_box(235, 118, 190, 44, ["CLIP text tower", "(frozen)"], c["text"]),
        _svg_box(20, 192, 405, 44, ["zero-shot head h (frozen): logit scale ×", "cosine with each class vector"],
                 c["text"]),
        _svg_box(20, 266, 405, 44, ["cross-entropy with the label y", "→ fine-tuned weights θ_ft"], loss),
        _svg_box(20, 340, 405, 60, ["θ_α = (1 − α) θ_zs + α θ_ft,", "α chosen on validation data",
                                    "= patched CLIP (the teacher)"], c["patched CLIP"]),
        _svg_arrow(115, 88, 115, 116), _svg_arrow(330, 88, 330, 116), _svg_arrow(115, 162, 115, 190),
        _svg_arrow(330, 162, 330, 190), _svg_arrow(222, 236, 222, 264), _svg_arrow(222, 310, 222, 338),
        '<line x1="450" y1="14" x2="450" y2="426" stroke="#bbbbbb" stroke-width="1"/>',
        # stage 2
        '<text x="675" y="26" text-anchor="middle" font-size="15" font-weight="bold">'
        'Stage 2 · cross-modal distillation (ch. 3)</text>',
        _svg_box(470, 44, 200, 44, ["RGB composite", "of a tile"], data),
        _svg_box(690, 44, 195, 44, ["13-band MS view", "of the same tile"], data),
        _svg_box(470, 118, 200, 44, ["patched image tower θ_α", "(teacher, frozen)"], c["patched CLIP"]),
        _svg_box(690, 118, 195, 44, ["student s", "(trained)"], c["student"]),
        _svg_box(470, 192, 415, 44, ["feature loss ‖s − t‖² / D", "(target t: the teacher's raw embedding)"], loss),
        _svg_box(690, 266, 195, 44, ["head h from stage 1", "(frozen)"], c["text"]),
        _svg_box(470, 266, 200, 44, ["+ w_cls × cross-entropy", "(h(s), y), w_cls = 0.05"], loss),
        _svg_box(470, 340, 415, 60, ["a 13-band encoder whose embeddings", "live in CLIP's space: zero-shot with",
                                     "CLIP's text head, RGB↔MS retrieval"], c["student"]),
        _svg_arrow(570, 88, 570, 116), _svg_arrow(787, 88, 787, 116), _svg_arrow(570, 162, 570, 190),
        _svg_arrow(787, 162, 787, 190), _svg_arrow(787, 236, 787, 264), _svg_arrow(688, 288, 672, 288),
        _svg_arrow(677, 310, 677, 338),
        _svg_arrow(425, 370, 468, 140, dashed=True),
        '</svg>',
    ]
    return "\n".join(parts) + "\n"


def write_two_stage_diagram(path: str | None = None) -> str:
    """Write :func:`two_stage_diagram` to ``path`` (default: :data:`DIAGRAM_FILE` in the project); returns the path."""
    target = path or str(paths.PROJECT_ROOT / DIAGRAM_FILE)
    checkpoint.atomic_write_text(target, two_stage_diagram())
    return target

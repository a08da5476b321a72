"""Figures of the book's chapters (besides :func:`mtmg.gap.plot_reduction`).

Every function returns a new :class:`matplotlib.figure.Figure` that no pyplot state holds, so a
notebook shows it exactly once (as the value of a cell) and nothing leaks between figures. Every
figure has a title and labelled axes; image grids label their rows and columns instead of pixels.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mtmg.sentinel2 import RGB_WHITE_POINT, SSL4EO_BANDS, band_index, ndvi, rgb_composite

DPI = 100
CORRECT, WRONG = "#1a9850", "#d73027"


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure at the book's resolution, not registered with pyplot."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


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


def tile_views(tiles: Sequence[Any], title: str = "Sentinel-2 tiles in three views") -> Figure:
    """One column per tile (objects with ``array13``, ``classname``, ``level``): RGB composite,
    false colour (B08, B04, B03) and NDVI rows."""
    if not tiles:
        raise ValueError("tile_views: no tiles given")
    n = len(tiles)
    fig = new_figure(1.35 * n + 1.2, 4.6)
    axes = fig.subplots(3, n, squeeze=False)
    shown = None
    for j, tile in enumerate(tiles):
        _image_axis(axes[0, j], rgb_composite(tile.array13, tile.level), tile.classname)
        _image_axis(axes[1, j], false_colour(tile.array13, tile.level))
        shown = _image_axis(axes[2, j], ndvi(tile.array13), cmap="RdYlGn", vmin=-0.5, vmax=0.9)
    for i, label in enumerate(("RGB\n(B04, B03, B02)", "false colour\n(B08, B04, B03)", "NDVI")):
        axes[i, 0].set_ylabel(label, fontsize="small")
    fig.colorbar(shown, ax=axes[2, :].tolist(), shrink=0.9, label="NDVI")
    fig.suptitle(title)
    return fig


def class_spectra(spectra: pd.DataFrame, title: str = "Mean reflectance per band and class") -> Figure:
    """Mean reflectance of each band (columns, SSL4EO order) per class (rows); RGB bands shaded."""
    fig = new_figure(8, 4.2)
    ax = fig.subplots()
    x = np.arange(spectra.shape[1])
    colours = _class_colours(len(spectra))
    for i, (name, row) in enumerate(spectra.iterrows()):
        ax.plot(x, row.to_numpy(), marker="o", ms=3, color=colours[i], label=str(name))
    for band in ("B02", "B03", "B04"):
        if band in spectra.columns:
            k = list(spectra.columns).index(band)
            ax.axvspan(k - 0.4, k + 0.4, color="0.9", zorder=0)
    ax.set_xticks(x, list(spectra.columns), rotation=45)
    ax.set_xlabel("Sentinel-2 band (shaded: the three bands CLIP sees)")
    ax.set_ylabel("mean reflectance (x / 10000)")
    ax.set_title(title)
    ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def _class_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / max(n - 1, 1)) for i in range(n)]


# --- chapter 1 -------------------------------------------------------------------------------------------

def zeroshot_scores(table: pd.DataFrame, title: str = "Zero-shot CLIP: remote sensing vs its supported task") -> Figure:
    """Bars of ``report.zeroshot_table``: one per dataset, coloured by role, chance marked."""
    fig = new_figure(max(5.0, 1.3 * len(table) + 2), 4)
    ax = fig.subplots()
    colours = {"remote sensing": "C0", "supported": "C1"}
    x = np.arange(len(table))
    ax.bar(x, table["score (%)"], color=[colours.get(r, "C2") for r in table["role"]])
    for i, (score, chance) in enumerate(zip(table["score (%)"], table["chance (%)"])):
        ax.text(i, score + 1, f"{score:.1f}", ha="center", fontsize="small")
        if chance is not None and not pd.isna(chance):
            ax.hlines(chance, i - 0.4, i + 0.4, colors="black", linestyles="--")
    ax.set_xticks(x, [f"{d}\n({m})" for d, m in zip(table["dataset"], table["metric"])], fontsize="small")
    ax.set_ylim(0, 105)
    ax.set_xlabel("dataset (metric)")
    ax.set_ylabel("score (%)")
    ax.set_title(title)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=r) for r, c in colours.items() if r in set(table["role"])]
    handles.append(Line2D([], [], color="black", linestyle="--", label="chance"))
    ax.legend(handles=handles, fontsize="small")
    return fig


def per_class_scores(classes: Sequence[str], values: Sequence[float | None], title: str,
                     xlabel: str = "accuracy (%)", chance: float | None = None) -> Figure:
    """Horizontal bars of per-class scores (fractions), worst at the top."""
    vals = np.array([np.nan if v is None else 100 * v for v in values], dtype=float)
    order = np.argsort(np.nan_to_num(vals, nan=-1), kind="stable")[::-1]
    fig = new_figure(6.5, 0.35 * len(classes) + 1.4)
    ax = fig.subplots()
    y = np.arange(len(classes))
    bars = ax.barh(y, vals[order], color=["C3" if chance is not None and v < 100 * chance else "C0"
                                          for v in np.nan_to_num(vals[order])])
    ax.bar_label(bars, fmt="%.0f", fontsize="x-small", padding=2)
    ax.set_yticks(y, [classes[i] for i in order], fontsize="small")
    if chance is not None:
        ax.axvline(100 * chance, color="black", linestyle="--", label=f"chance ({100 * chance:.0f} %)")
        ax.legend(fontsize="small", loc="lower right")
    ax.set_xlim(0, 108)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("class")
    ax.set_title(title)
    return fig


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
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize="x-small",
                        color="white" if rows[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize="small")
    ax.set_yticks(range(n), classes, fontsize="small")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(shown, ax=ax, shrink=0.8, label="fraction of the true class")
    return fig


# --- chapter 2 -------------------------------------------------------------------------------------------

def alpha_sweep(scores: pd.DataFrame, alpha: float, paper_alpha: float = 0.5, labels: Mapping[str, str] | None = None,
                title: str = "PAINT: interpolating zero-shot and fine-tuned weights") -> Figure:
    """Score of every task against α, one panel per split, with the mean, the selected and the paper's α."""
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
        ax.axvline(alpha, color="C3", linestyle="--", label=f"selected α = {alpha:g}")
        if abs(paper_alpha - alpha) > 1e-9:
            ax.axvline(paper_alpha, color="0.5", linestyle="-.", label=f"paper's α = {paper_alpha:g}")
        ax.set_xlabel("α (0 = zero-shot, 1 = fine-tuned)")
        ax.set_title({"val": "validation (α is chosen here)", "test": "test (reported)"}[split])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score (%)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(5, len(names)), fontsize="small")
    fig.suptitle(title)
    return fig


def before_after(table: pd.DataFrame, title: str = "Before and after patching (test)") -> Figure:
    """Grouped bars of ``report.before_after``: one group per task, one bar per α column."""
    cols = [c for c in table.columns if "(points)" not in c]
    fig = new_figure(max(5.5, 2.2 * len(table) + 2), 4)
    ax = fig.subplots()
    width = 0.8 / len(cols)
    x = np.arange(len(table))
    for i, col in enumerate(cols):
        bars = ax.bar(x + (i - (len(cols) - 1) / 2) * width, table[col], width, label=col, color=f"C{i}")
        ax.bar_label(bars, fmt="%.0f", fontsize="x-small")
    ax.set_xticks(x, table.index)
    ax.set_ylim(0, 110)
    ax.set_xlabel("task")
    ax.set_ylabel("score (%)")
    ax.set_title(title)
    ax.legend(fontsize="small", ncols=2, loc="upper right")
    return fig


def training_curves(log: pd.DataFrame, columns: Sequence[str] = ("loss",), title: str = "Training curve",
                    smooth: int | None = None) -> Figure:
    """Losses from a :func:`mtmg.training.fit` CSV log against the step (moving average over ``smooth``
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

def model_scores(table: pd.DataFrame, title: str = "Zero-shot classification: student on MS, CLIP on RGB",
                 ylabel: str = "score (%)") -> Figure:
    """Bars of ``report.alignment_scores``: one group per dataset, one bar per model."""
    fig = new_figure(max(6.0, 2.5 * table.shape[1] + 3), 4)
    ax = fig.subplots()
    n = len(table)
    width = 0.8 / n
    x = np.arange(table.shape[1])
    for i, (model, row) in enumerate(table.iterrows()):
        bars = ax.bar(x + (i - (n - 1) / 2) * width, row.to_numpy(), width, label=model, color=f"C{i}")
        ax.bar_label(bars, fmt="%.1f", fontsize="x-small")
    ax.set_xticks(x, table.columns)
    ax.set_ylim(0, 110)
    ax.set_xlabel("dataset (test split)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left")
    return fig


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
        ax.plot(part["k"], 100 * part["recall"], color="C0", label="aligned student")
        ax.plot(part["k"], 100 * part["chance"], color="black", linestyle="--", label="chance (k / N)")
        if points is not None:
            for i, (model, group) in enumerate(points[points["direction"] == direction].groupby("model", sort=False)):
                ax.plot(group["k"], 100 * group["recall"], marker="s", linestyle="", color=f"C{i + 1}", label=model)
        ax.set_xscale("log")
        ax.set_xlabel("k (log scale)")
        ax.set_title(names.get(direction, direction))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall@k (%)")
    axes[-1].legend(fontsize="small", loc="lower right")
    fig.suptitle(title)
    return fig


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
        axes[r, 0].set_ylabel(f"rank of own\nRGB: {ex.positive_rank + 1}", fontsize="x-small")
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

def reduction(layout: pd.DataFrame, method: str = "UMAP", title: str = "Text, RGB and MS embeddings") -> Figure:
    """:func:`mtmg.gap.plot_reduction` of a ``reduce_2d`` layout with its axes named after the method."""
    from mtmg.gap import plot_reduction

    fig = plot_reduction(layout, title=f"{title} ({method}, fitted jointly)")
    fig.set_dpi(DPI)
    for ax in fig.axes[:2]:
        ax.set_xlabel(f"{method} 1")
        ax.set_ylabel(f"{method} 2")
    return fig


def gap_bars(gaps: pd.DataFrame, title: str = "Centroid gaps between modalities") -> Figure:
    """Grouped bars of the ``gap_*`` columns of ``mtmg.gap.gap_summary`` per model (NaN bars left out)."""
    cols = [c for c in ("gap_text_rgb", "gap_text_ms", "gap_rgb_ms") if c in gaps]
    fig = new_figure(8, 4)
    ax = fig.subplots()
    width = 0.8 / len(cols)
    x = np.arange(len(gaps))
    for i, col in enumerate(cols):
        values = gaps[col].to_numpy(dtype=float)
        bars = ax.bar(x + (i - (len(cols) - 1) / 2) * width, np.nan_to_num(values), width,
                      label=col.removeprefix("gap_").replace("_", " ↔ "), color=f"C{i}")
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.2f}" for v in values], fontsize="x-small")
    ax.set_xticks(x, gaps.index, fontsize="small")
    ax.set_xlabel("model")
    ax.set_ylabel("‖centroid difference‖ (unit-normalised embeddings)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig


def cosine_histogram(values: np.ndarray, title: str = "The same images under zero-shot and patched CLIP",
                     xlabel: str = "cosine similarity of an image's two embeddings") -> Figure:
    """Histogram of paired cosine similarities with the median marked."""
    values = np.asarray(values, dtype=float)
    fig = new_figure(6, 3.6)
    ax = fig.subplots()
    ax.hist(values, bins=min(30, max(5, len(values) // 3)), color="C0", edgecolor="white")
    ax.axvline(np.median(values), color="C3", linestyle="--", label=f"median {np.median(values):.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("number of images")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig


def shift_curves(shift: pd.DataFrame, title: str = "Closing the gap by shifting embeddings") -> Figure:
    """Zero-shot accuracy against the signed remaining gap after a shift (``mtmg.gap.shift_experiment``)."""
    top1 = shift[shift["metric"] == "top1"].sort_values("gap_signed")
    fig = new_figure(6, 3.8)
    ax = fig.subplots()
    ax.plot(top1["gap_signed"], 100 * top1["value"], marker="o", color="C0")
    original = top1.iloc[(top1["lambda"].abs()).argmin()]
    ax.axvline(original["gap_signed"], color="0.5", linestyle="--", label="original embeddings (λ = 0)")
    ax.set_xlabel("signed centroid gap after the shift")
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


# --- chapter 5 -------------------------------------------------------------------------------------------

def gains_comparison(gains: pd.DataFrame, profile: str, title: str = "Gain from patching per dataset") -> Figure:
    """This run's gains (``report.gains_table``) beside the paper's, as two panels (different setups)."""
    fig = new_figure(11, 4)
    ours, theirs = fig.subplots(1, 2)
    bars = ours.bar(np.arange(len(gains)), gains["gain (points)"],
                    color=["C0" if r == "remote sensing" else "C1" for r in gains["role"]])
    ours.bar_label(bars, fmt="%+.1f", fontsize="small")
    ours.margins(y=0.15)
    ours.set_xticks(np.arange(len(gains)), [d.replace(" (", "\n(") for d in gains["dataset"]], fontsize="small")
    ours.axhline(0, color="black", lw=0.8)
    ours.set_xlabel("dataset")
    ours.set_ylabel("patched − zero-shot (points)")
    ours.set_title(f"this run (profile {profile})")
    from mtmg.report import PAPER_GAINS

    ref = pd.DataFrame([vars(r) for r in PAPER_GAINS])
    theirs.bar_label(theirs.bar(np.arange(len(ref)), ref["value"], color="0.5"), fmt="%+.2f", fontsize="small")
    theirs.set_xticks(np.arange(len(ref)), [d.replace("-", "-\n", 1) for d in ref["dataset"]], fontsize="small")
    theirs.set_xlabel("dataset")
    theirs.set_ylabel("reported gain (mAP or accuracy points)")
    theirs.set_title("Zavras et al., abstract (ViT-B-32, full data)")
    fig.suptitle(title + " — not the same setup: compare directions, not sizes")
    return fig


def bands_used(title: str = "What each model reads") -> Figure:
    """The 13 Sentinel-2 bands (SSL4EO order) marked by which model reads them."""
    fig = new_figure(8, 1.9)
    ax = fig.subplots()
    x = np.arange(len(SSL4EO_BANDS))
    for row, (name, bands) in enumerate((("CLIP (RGB composite)", ("B02", "B03", "B04")),
                                         ("student (MS view)", SSL4EO_BANDS))):
        ax.scatter(x, np.full(len(x), row), s=160, marker="s",
                   c=["C0" if b in bands else "0.9" for b in SSL4EO_BANDS], edgecolors="0.6")
    ax.set_xticks(x, list(SSL4EO_BANDS))
    ax.set_yticks([0, 1], ["CLIP (RGB composite)", "student (MS view)"])
    ax.set_ylim(-0.7, 1.7)
    ax.set_xlabel("Sentinel-2 band")
    ax.set_ylabel("model")
    ax.set_title(title)
    return fig

"""Figures of chapter 6, *Your own scene*: the scene in true colour, class maps, agreement, confidence, search
results. Classes keep the book's colours (:func:`mtmg.book.figures.class_colour`); grey marks skipped windows.
Axes are in km from the scene's top-left corner; a map pixel is one window (the stride's cell).

``emb`` is a classified :class:`mtmg.mapping.scenemap.SceneEmbedding` (the book does not import
:mod:`mtmg.mapping`, which sits beside it; the chapter passes the objects in).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mtmg.book.figures import CORRECT, NO_LABEL, WRONG, book_style, class_colour, new_figure
from mtmg.data.sentinel2 import RGB_BANDS, rgb_composite

SceneEmbedding = Any

ENCODER_LABELS = {"student": "student on 13 bands (MS)", "patched": "patched CLIP on RGB",
                  "zeroshot": "zero-shot CLIP on RGB"}


def overview(emb: SceneEmbedding, max_side: int = 1024) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The scene's RGB composite (its level's white point), every k-th pixel so that the longer side is at most
    ``max_side`` (read strip by strip, RGB bands only), and its extent in km for ``imshow``."""
    with emb.open() as scene:
        step = max(1, -(-max(scene.height, scene.width) // max_side))
        strips = []
        for y in range(0, scene.height, 256 * step):
            array, _ = scene.read(y, 0, min(256 * step, scene.height - y), scene.width, bands=RGB_BANDS)
            strips.append(array[:, ::step, ::step])
        km = scene.transform.a / 1000
        extent = (0.0, scene.width * km, scene.height * km, 0.0)
    return rgb_composite(np.concatenate(strips, axis=1), emb.level), extent


def _map_extent(emb: SceneEmbedding) -> tuple[float, float, float, float]:
    rows, cols = emb.shape
    cell = emb.stride * emb.transform.a / 1000
    return (0.0, cols * cell, rows * cell, 0.0)


def _km_axes(ax, title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("km east")
    ax.set_ylabel("km south")


def _grid(emb: SceneEmbedding, column: str, fill: object) -> np.ndarray:
    rows, cols = emb.shape
    out = np.full((rows, cols), fill, dtype=object)
    out[emb.windows["row"].to_numpy(), emb.windows["col"].to_numpy()] = emb.windows[column].to_numpy()
    return out


def where(emb: SceneEmbedding) -> str:
    """One line: the scene's centre in degrees, its size and CRS."""
    lon, lat = emb.windows["lon"].mean(), emb.windows["lat"].mean()
    rows, cols = emb.shape
    return (f"centre {abs(lat):.3f}°{'N' if lat >= 0 else 'S'} {abs(lon):.3f}°{'E' if lon >= 0 else 'W'}, "
            f"{rows} x {cols} windows of {emb.window * emb.transform.a:g} m")


@book_style
def true_colour(emb: SceneEmbedding, image: np.ndarray, extent: Sequence[float], title: str | None = None) -> Figure:
    """The scene in true colour, with where it is in the title."""
    fig = new_figure(5.6, 5.6)
    ax = fig.add_subplot()
    ax.imshow(image, extent=tuple(extent))
    _km_axes(ax, title or f"{emb.path.name}: true colour, {emb.level}\n{where(emb)}")
    return fig


def _class_image(emb: SceneEmbedding, encoder: str) -> tuple[np.ndarray, list[str]]:
    classes = list(emb.prompts.classes)
    grid = _grid(emb, f"{encoder}_class", None)
    colours = {c: to_rgb(class_colour(c, i, len(classes))) for i, c in enumerate(classes)}
    image = np.array([[colours.get(v, to_rgb(NO_LABEL)) for v in row] for row in grid])
    return image, [c for c in classes if (grid == c).any()]


@book_style
def class_maps(emb: SceneEmbedding, encoders: Sequence[str] = ("student", "patched"),
               names: dict[str, str] | None = None) -> Figure:
    """The class maps of ``encoders`` side by side, with one legend of the classes that occur (``names``: the
    label of each class, default the class name), grey for skipped windows."""
    fig = new_figure(8.0, 4.4)
    axes = fig.subplots(1, len(encoders), sharey=True, squeeze=False)[0]
    seen: list[str] = []
    for ax, enc in zip(axes, encoders):
        image, present = _class_image(emb, enc)
        ax.imshow(image, extent=_map_extent(emb), interpolation="nearest")
        _km_axes(ax, ENCODER_LABELS.get(enc, enc))
        seen += [c for c in present if c not in seen]
    classes = list(emb.prompts.classes)
    handles = [Patch(color=class_colour(c, classes.index(c), len(classes)), label=(names or {}).get(c, c))
               for c in classes if c in seen]
    if emb.kept.shape[0] < len(emb.windows):
        handles.append(Patch(color=NO_LABEL, label="skipped (mostly nodata)"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=3)
    return fig


def agreement_rate(emb: SceneEmbedding, a: str = "student", b: str = "patched") -> tuple[int, int]:
    """(windows where ``a`` and ``b`` give the same class, mapped windows)."""
    kept = emb.kept
    return int((kept[f"{a}_class"] == kept[f"{b}_class"]).sum()), len(kept)


@book_style
def agreement(emb: SceneEmbedding, a: str = "student", b: str = "patched") -> Figure:
    """Where two encoders give the same class (green) and where not (red)."""
    same = _grid(emb, f"{a}_class", None) == _grid(emb, f"{b}_class", None)
    skipped = _grid(emb, "skipped", True).astype(bool)
    image = np.where(same[..., None], to_rgb(CORRECT), to_rgb(WRONG))
    image[skipped] = to_rgb(NO_LABEL)
    agree, n = agreement_rate(emb, a, b)
    fig = new_figure(5.0, 5.0)
    ax = fig.add_subplot()
    ax.imshow(image, extent=_map_extent(emb), interpolation="nearest")
    _km_axes(ax, f"{ENCODER_LABELS.get(a, a)} vs\n{ENCODER_LABELS.get(b, b)}: same class on {agree} of {n}")
    fig.legend(handles=[Patch(color=CORRECT, label="same class"), Patch(color=WRONG, label="different class"),
                        Patch(color=NO_LABEL, label="skipped")], loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncols=3)
    return fig


@book_style
def confidence(emb: SceneEmbedding, encoder: str = "student") -> Figure:
    """The probability of each window's class (softmax over the classes) and its margin to the runner-up."""
    fig = new_figure(8.0, 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, column, label in ((axes[0], "prob", "probability of the class"),
                              (axes[1], "margin", "margin to the runner-up")):
        grid = _grid(emb, f"{encoder}_{column}", np.nan).astype(float)
        shown = ax.imshow(grid, extent=_map_extent(emb), interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
        _km_axes(ax, label)
        fig.colorbar(shown, ax=ax, shrink=0.8)
    fig.suptitle(f"How sure the {ENCODER_LABELS.get(encoder, encoder)} is (blank: skipped)")
    return fig


@book_style
def search_results(results: Mapping[str, pd.DataFrame], images: Mapping[str, Sequence[np.ndarray]],
                   query: str) -> Figure:
    """The top windows of a query for each encoder (one row each): ``images[encoder]`` are their RGB
    thumbnails (:func:`mtmg.mapping.outputs.thumbnails`), titled with rank and score."""
    k = max(len(t) for t in results.values())
    fig = new_figure(8.0, 1.7 * len(results) + 0.6)
    axes = fig.subplots(len(results), k, squeeze=False)
    for r, (enc, top) in enumerate(results.items()):
        for c in range(k):
            ax = axes[r, c]
            ax.set_axis_off()
            if c < len(top):
                ax.imshow(images[enc][c])
                ax.set_title(f"#{int(top['rank'].iloc[c])}: {top['score'].iloc[c]:.2f}", fontsize=9)
        axes[r, 0].text(-0.08, 0.5, ENCODER_LABELS.get(enc, enc).replace(" on ", "\non "), rotation=90,
                        transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=9)
    fig.suptitle(f'"{query}": the closest windows (cosine similarity)')
    return fig

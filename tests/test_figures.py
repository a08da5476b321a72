"""Book figures: page-width sizes, readable fonts, one colour per EuroSAT class, and the chapter-4 views."""
import numpy as np
import pandas as pd
import pytest

from mtmg.book import figures


def _texts(fig):
    return [t for ax in fig.axes for t in ax.texts + [ax.title, ax.xaxis.label, ax.yaxis.label]
            + ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]


def test_figures_fit_the_page_at_high_resolution_with_readable_fonts():
    fig = figures.confusion(np.arange(100).reshape(10, 10), [f"class {i}" for i in range(10)], "t")
    assert fig.get_figwidth() <= figures.PAGE_WIDTH and fig.dpi >= 150
    assert min(t.get_fontsize() for t in _texts(fig)) >= 9


def test_residential_is_not_grey_and_grey_means_no_label():
    colours = figures.EUROSAT_COLOURS
    assert len(set(colours.values())) == 10
    assert "#7f7f7f" not in colours.values() and figures.NO_LABEL not in colours.values()


def _layout():
    rng = np.random.default_rng(0)
    rows = [("text (class prompts)", "forest"), ("text (class prompts)", "residential buildings")]
    rows += [("RGB, patched CLIP", c) for c in ("forest", "residential buildings", "forest")]
    rows += [("MS, student", c) for c in ("forest", "residential buildings", "")]
    return pd.DataFrame({"x": rng.normal(size=len(rows)), "y": rng.normal(size=len(rows)),
                         "modality": [m for m, _ in rows], "label": [c for _, c in rows]})


def test_reduction_legend_uses_class_names_and_their_colours():
    names = {"forest": "Forest", "residential buildings": "Residential"}
    fig = figures.reduction(_layout(), "UMAP", class_names=names)
    legend = fig.axes[1].get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert "Forest" in labels and "Residential" in labels and "residential buildings" not in labels
    from matplotlib.colors import to_hex

    handle = legend.legend_handles[labels.index("Residential")]
    assert to_hex(handle.get_facecolor()) == figures.EUROSAT_COLOURS["Residential"]
    # sets are told by their marker only: no set is drawn as a square, the shape of the class swatches
    assert all(h.get_marker() != "s" for h in legend.legend_handles if hasattr(h, "get_marker"))
    set_legend = fig.axes[0].get_legend()
    by_set = {t.get_text(): h for t, h in zip(set_legend.get_texts(), set_legend.legend_handles)}
    assert to_hex(by_set["MS, student"].get_facecolor()[0]) == figures.MODEL_COLOURS["student"].lower()


def test_gap_coordinates_put_the_two_centroids_at_zero_and_one():
    rng = np.random.default_rng(1)
    text = rng.normal(size=(10, 8)) + np.eye(8)[0] * 5
    images = rng.normal(size=(30, 8)) + np.eye(8)[1] * 5
    coords = figures.gap_coordinates({"text": text, "images": images}, "text", "images")
    unit = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in (("text", text), ("images", images))}
    a, b = unit["text"].mean(0), unit["images"].mean(0)
    # the coordinate of each centroid itself is 0 and 1; the mean coordinate of a set is its centroid's
    assert coords[coords["set"] == "text"]["coordinate"].mean() == pytest.approx(0.0, abs=1e-9)
    assert coords[coords["set"] == "images"]["coordinate"].mean() == pytest.approx(1.0, abs=1e-9)
    assert ((b - a) @ (b - a)) > 0
    with pytest.raises(ValueError, match="coincide"):
        figures.gap_coordinates({"a": text, "b": text}, "a", "b")


class _Tile:
    def __init__(self, value):
        self.array13 = np.full((13, 8, 8), value, dtype=np.float32)
        self.level = "L1C"


def test_interactive_map_is_self_contained_with_a_thumbnail_per_image_point():
    layout = _layout().iloc[:5]
    tiles = [_Tile(500), _Tile(1500), _Tile(2500)]
    thumbs = figures.layout_thumbnails(layout, tiles)
    assert thumbs[:2] == [None, None] and all(t.startswith("data:image/jpeg;base64,") for t in thumbs[2:])
    html = figures.interactive_map(layout, thumbs, {"forest": "Forest"})
    assert "<script src=" not in html and "cdn.bokeh.org" not in html.split("Bokeh")[0]
    assert thumbs[2] in html and "Forest" in html
    with pytest.raises(ValueError, match="rows"):
        figures.layout_thumbnails(layout, tiles[:2])

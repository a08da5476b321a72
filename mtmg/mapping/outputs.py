"""The files of a scene map and a search, each written atomically (:mod:`mtmg.core.checkpoint`).

* ``<encoder>_classes.tif``: uint8, one pixel per window (the scene's CRS, its transform scaled by the
  stride), class indices with a colour table (the caller's colours: the command line and the book pass
  the book's EuroSAT palette, :func:`mtmg.book.figures.class_colour`), the class names in the tags
  (``CLASS_<i>``, ``classes``), 255 for skipped windows;
* ``<encoder>_probs.tif``: float32, one band per class (band descriptions: the classes), NaN for skipped windows;
* ``windows.csv`` and ``windows.geojson`` (WGS 84 polygons): one row / feature per window with its extent in
  the scene's CRS, its centre (lon, lat), ``valid_fraction`` and ``<encoder>_class``, ``<encoder>_prob``;
* a search: ``<name>.geojson`` with the top windows (rank, score) and ``<name>/rank<NN>_r<row>_c<col>.png``
  thumbnails of their RGB composites.
"""
from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from matplotlib.colors import to_rgba
from PIL import Image
from rasterio.io import MemoryFile
from rasterio.warp import transform_geom

from mtmg.core.checkpoint import atomic_write_bytes, atomic_write_text
from mtmg.core.errors import ArgumentError
from mtmg.data.sentinel2 import rgb_composite
from mtmg.mapping.scenemap import SceneEmbedding

NODATA_CLASS = 255
ColourOf = Callable[[str, int, int], object]
WINDOW_COLUMNS = ("row", "col", "x_min", "y_min", "x_max", "y_max", "lon", "lat", "valid_fraction")


def _rgba(colour: object) -> tuple[int, int, int, int]:
    return tuple(int(round(255 * v)) for v in to_rgba(colour))


def _geotiff(bands: np.ndarray, emb: SceneEmbedding, *, nodata: float, descriptions: Sequence[str] = (),
             tags: dict | None = None, colormap: dict | None = None) -> bytes:
    count, height, width = bands.shape
    profile = {"driver": "GTiff", "height": height, "width": width, "count": count, "dtype": bands.dtype.name,
               "crs": emb.crs, "transform": emb.map_transform, "nodata": nodata, "compress": "deflate"}
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(bands)
            for i, d in enumerate(descriptions, start=1):
                dst.set_band_description(i, d)
            if tags:
                dst.update_tags(**tags)
            if colormap:
                dst.write_colormap(1, colormap)
        return mem.read()


def _grid(emb: SceneEmbedding, values: np.ndarray, fill: float, dtype: str) -> np.ndarray:
    """Per-kept-window values (N, ...) laid out as (..., rows, cols) with ``fill`` for skipped windows."""
    rows, cols = emb.shape
    extra = values.shape[1:]
    out = np.full((rows, cols, *extra), fill, dtype=dtype)
    kept = emb.kept
    out[kept["row"].to_numpy(), kept["col"].to_numpy()] = values
    return np.moveaxis(out, (0, 1), (-2, -1)) if extra else out[None]


def write_class_map(emb: SceneEmbedding, encoder: str, out: Path, colours: ColourOf) -> tuple[Path, Path]:
    """``<encoder>_classes.tif`` and ``<encoder>_probs.tif`` in ``out``; ``colours(class, index, n)`` is any
    matplotlib colour (the book's: :func:`mtmg.book.figures.class_colour`)."""
    classes = list(emb.prompts.classes)
    if len(classes) >= NODATA_CLASS:
        raise ArgumentError(f"{len(classes)} classes: a class map holds at most {NODATA_CLASS - 1}")
    probs = emb.probs[encoder]
    index = probs.argmax(axis=1).astype(np.uint8) if len(probs) else np.zeros(0, np.uint8)
    colormap = {i: _rgba(colours(c, i, len(classes))) for i, c in enumerate(classes)}
    colormap[NODATA_CLASS] = (0, 0, 0, 0)
    tags = {f"CLASS_{i}": c for i, c in enumerate(classes)}
    tags.update(classes=json.dumps(classes), prompts=json.dumps(list(emb.prompts.names)),
                templates=json.dumps(list(emb.prompts.templates)), encoder=encoder, level=emb.level,
                window_px=str(emb.window), stride_px=str(emb.stride))
    classes_path = out / f"{encoder}_classes.tif"
    atomic_write_bytes(classes_path, _geotiff(_grid(emb, index, NODATA_CLASS, "uint8"), emb, nodata=NODATA_CLASS,
                                              descriptions=[f"{encoder} class"], tags=tags, colormap=colormap))
    probs_path = out / f"{encoder}_probs.tif"
    atomic_write_bytes(probs_path, _geotiff(_grid(emb, probs, np.nan, "float32"), emb, nodata=float("nan"),
                                            descriptions=classes, tags={"encoder": encoder}))
    return classes_path, probs_path


def window_table(emb: SceneEmbedding) -> pd.DataFrame:
    """The columns of ``windows.csv``: the window, its extent and centre, and each encoder's class and prob."""
    cols = list(WINDOW_COLUMNS) + [f"{n}_{what}" for n in emb.probs for what in ("class", "prob")]
    return emb.windows[cols]


def _polygon(row: pd.Series) -> dict:
    ring = [(row.x_min, row.y_min), (row.x_max, row.y_min), (row.x_max, row.y_max), (row.x_min, row.y_max),
            (row.x_min, row.y_min)]
    return {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}


def _json_value(value: object) -> object:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value


def geojson(emb: SceneEmbedding, table: pd.DataFrame) -> str:
    """A GeoJSON FeatureCollection (WGS 84) of the windows in ``table`` with its columns as properties."""
    features = []
    for _, row in table.iterrows():
        geom = transform_geom(emb.crs, "EPSG:4326", _polygon(row))
        features.append({"type": "Feature", "geometry": geom,
                         "properties": {k: _json_value(v) for k, v in row.items()}})
    return json.dumps({"type": "FeatureCollection", "features": features}, indent=1) + "\n"


def write_map(emb: SceneEmbedding, out: str | Path, colours: ColourOf) -> list[Path]:
    """Every file of a classified scene (see the module docstring) into ``out``, the class maps coloured by
    ``colours(class, index, n)``; returns their paths."""
    out = Path(out)
    written = []
    for name in emb.probs:
        written += write_class_map(emb, name, out, colours)
    table = window_table(emb)
    written.append(atomic_write_text(out / "windows.csv", table.to_csv(index=False)))
    written.append(atomic_write_text(out / "windows.geojson", geojson(emb, table)))
    return written


def slug(text: str) -> str:
    """A file-name form of a query: lower case, words joined by ``-``, at most 40 characters."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "query"


def thumbnail(emb: SceneEmbedding, row: pd.Series, scene=None) -> np.ndarray:
    """The RGB composite (uint8 H x W x 3, the scene's level) of one window of ``emb``."""
    y = int(row["row"]) * emb.stride
    x = int(row["col"]) * emb.stride
    if scene is None:
        with emb.open() as sc:
            array, _ = sc.read(y, x, emb.window, emb.window)
    else:
        array, _ = scene.read(y, x, emb.window, emb.window)
    return rgb_composite(array, emb.level)


def thumbnails(emb: SceneEmbedding, top: pd.DataFrame) -> list[np.ndarray]:
    """:func:`thumbnail` of every window of ``top``, reading the scene once."""
    with emb.open() as scene:
        return [thumbnail(emb, row, scene) for _, row in top.iterrows()]


def write_search(emb: SceneEmbedding, top: pd.DataFrame, out: str | Path, name: str) -> list[Path]:
    """``<name>.geojson`` (the top windows with rank and score) and one PNG thumbnail per window under
    ``<name>/`` in ``out``."""
    out = Path(out)
    cols = ["rank", "score", *WINDOW_COLUMNS]
    written = [atomic_write_text(out / f"{name}.geojson", geojson(emb, top[cols]))]
    for (_, row), image in zip(top.iterrows(), thumbnails(emb, top)):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        path = out / name / f"rank{int(row['rank']):02d}_r{int(row['row'])}_c{int(row['col'])}.png"
        written.append(atomic_write_bytes(path, buf.getvalue()))
    return written


def read_class_map(path: str | Path) -> tuple[np.ndarray, list[str], rasterio.Affine, object]:
    """(class indices, class names, transform, CRS) of a ``<encoder>_classes.tif``."""
    with rasterio.open(path) as src:
        return src.read(1), json.loads(src.tags()["classes"]), src.transform, src.crs

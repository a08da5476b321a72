"""Reading a whole Sentinel-2 scene onto one 10 m grid, window by window.

A scene is one of:

* a folder of per-band files at their native resolution (``.tif``, ``.tiff`` or ``.jp2`` whose names hold
  the band, ``B01`` ... ``B12``, ``B8A``; an L2A product's ``R10m/R20m/R60m`` subfolders, where a band at
  several resolutions is read from its finest file); other files (masks, previews, ``TCI``, ``SCL``) are
  ignored;
* one multi-band GeoTIFF whose band descriptions name the bands, or any multi-band GeoTIFF with an
  explicit ``bands`` order;
* a ``.SAFE`` product folder (its ``GRANULE/*/IMG_DATA`` is read).

Grid: the 10 m grid of the finest band (a 10 m grid over its extent when it is coarser). Every other band is
resampled onto it with GDAL's **bilinear** resampling (a ``WarpedVRT``), as BigEarthNet's 20 m and 60 m bands
are (:mod:`mtmg.data.datasets.bigearthnet`); bands already on the grid are read as they are. Pixels are read
strip by strip (:meth:`Scene.read`), so memory stays bounded on a full 10,980 x 10,980 tile (most of it is
GDAL's block cache, 5 % of RAM by default; the ``GDAL_CACHEMAX`` environment variable caps it, see
``benchmarks/RESULTS.md``).

Values follow the project's convention, reflectance x 10,000 as uint16 in SSL4EO band order
(:mod:`mtmg.data.sentinel2`): the product's radiometric offset (``BOA_ADD_OFFSET`` of L2A, ``RADIO_ADD_OFFSET``
of L1C, both -1000 from processing baseline 04.00 on) is added when the product metadata
(``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml``) gives it. A pixel is nodata when any band but B10 holds the file's
nodata value (0, Sentinel-2's ``NO_DATA``, when the file states none) or lies outside that band's extent;
B10 (cirrus) is left out of the test because clear-sky TOA cirrus is legitimately 0. The level (L1C or L2A)
comes from the ``level`` option, else the product's names or metadata, else the bands (no B10: L2A).
A missing B10 is filled with zeros, with a warning; any other missing band is an error.

Windows (:func:`window_grid`): squares of the model's input size on the 10 m grid, every ``stride`` pixels,
starting at the top-left corner. Edge windows: a window must lie wholly inside the scene, so a strip at the
right and bottom edges narrower than one window is not covered (at most ``size - 1`` pixels); windows whose
valid (not nodata) fraction is below ``min_valid`` are skipped.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from tqdm import tqdm

from mtmg.core.errors import ArgumentError, DataError
from mtmg.data.datasets.errors import CorruptFileError
from mtmg.data.sentinel2 import SSL4EO_BANDS, Level, ndvi, ndwi

GRID_M = 10.0
"""Pixel size of the grid every band is read onto (metres)."""
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")
S2_NODATA = 0
UNTESTED_FOR_NODATA = ("B10",)
FILLABLE = ("B10",)
RESAMPLING = Resampling.bilinear
_BAND_RE = re.compile(r"(?:^|[_\-.\s])(B(?:0[1-9]|1[0-2]|8A))(?=$|[_\-.\s])", re.IGNORECASE)
_RES_DIR_RE = re.compile(r"^R(10|20|60)m$")
_BASELINE_RE = re.compile(r"_N(\d{2})(\d{2})_")


class SceneError(DataError, ValueError):
    """A scene that cannot be read; the message starts with the path and says how to fix it."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)


class NotASceneError(SceneError):
    """The path holds no Sentinel-2 band files."""


class MissingBandError(SceneError):
    """A band the student needs is missing and cannot be filled."""


class SceneGridError(SceneError):
    """The bands are in different CRSs, have no common extent, or are not in a metric CRS."""


class SceneTooSmallError(SceneError):
    """The scene is smaller than one window."""


@dataclass(frozen=True)
class BandSource:
    """Where one band lives: a raster file and its 1-based band index."""

    path: Path
    index: int = 1


def band_of(name: str) -> str | None:
    """The Sentinel-2 band a file or band description names (``T18SVG_..._B8A_20m.jp2`` -> ``B8A``), or None."""
    found = _BAND_RE.findall(Path(name).stem if Path(name).suffix.lower() in RASTER_SUFFIXES else name)
    names = {f.upper() for f in found}
    return names.pop() if len(names) == 1 else None


def _open(path: Path) -> rasterio.DatasetReader:
    try:
        return rasterio.open(path)
    except RasterioError as e:
        raise CorruptFileError(path, f"cannot be read as a raster (truncated or corrupt?): {e}") from e


def _image_root(path: Path) -> Path:
    """``IMG_DATA`` of a ``.SAFE`` product (its only granule), else ``path``."""
    if not path.name.upper().endswith(".SAFE"):
        return path
    found = sorted(p for p in path.glob("GRANULE/*/IMG_DATA") if p.is_dir())
    if not found:
        raise NotASceneError(path, "a .SAFE folder without GRANULE/<granule>/IMG_DATA; is the product complete? "
                                   "Download it again or point at the band files")
    if len(found) > 1:
        raise NotASceneError(path, f"holds {len(found)} granules; point at one of {[str(p) for p in found]}")
    return found[0]


def _resolution_hint(path: Path) -> float | None:
    for part in (path.parent.name, path.stem):
        m = _RES_DIR_RE.match(part) or re.search(r"_(10|20|60)m$", part)
        if m:
            return float(m.group(1))
    return None


def find_band_files(folder: Path) -> dict[str, Path]:
    """Band -> file of a folder of per-band rasters (searched recursively, quality masks ``MSK_*`` and
    ``QI_DATA`` left out); a band present at several resolutions (an L2A product's ``R10m/R20m/R60m``) keeps
    its finest file."""
    candidates: dict[str, list[tuple[float, Path]]] = {}
    for path in sorted(folder.rglob("*")):
        if (path.suffix.lower() not in RASTER_SUFFIXES or not path.is_file() or path.name.upper().startswith("MSK_")
                or "QI_DATA" in path.relative_to(folder).parts):
            continue
        band = band_of(path.name)
        if band is None:
            continue
        res = _resolution_hint(path)
        if res is None:
            with _open(path) as src:
                res = float(abs(src.res[0]))
        candidates.setdefault(band, []).append((res, path))
    out = {}
    for band, found in candidates.items():
        found.sort()
        if len(found) > 1 and found[0][0] == found[1][0]:
            raise NotASceneError(folder, f"two files for band {band} at {found[0][0]:g} m: {found[0][1]} and "
                                         f"{found[1][1]}; keep one of them")
        out[band] = found[0][1]
    return out


def _stacked_sources(path: Path, bands: Sequence[str] | None) -> dict[str, BandSource]:
    with _open(path) as src:
        count, descriptions = src.count, src.descriptions
    if bands is not None:
        bands = [b.strip().upper() for b in bands]
        unknown = [b for b in bands if b not in SSL4EO_BANDS]
        if unknown or len(set(bands)) != len(bands):
            raise ArgumentError(f"band order {list(bands)}: expected distinct names from {list(SSL4EO_BANDS)}")
        if len(bands) != count:
            raise ArgumentError(f"band order names {len(bands)} bands but {path} has {count}; name one band per "
                                "raster band, in the file's order")
        return {b: BandSource(path, i + 1) for i, b in enumerate(bands)}
    named = [band_of(d) if d else None for d in descriptions]
    if count == 1:
        band = band_of(path.name)
        if band is not None:
            return {band: BandSource(path, 1)}
    if all(named) and len(set(named)) == len(named):
        return {b: BandSource(path, i + 1) for i, b in enumerate(named)}
    raise NotASceneError(path, f"{count} raster band(s) whose descriptions {list(descriptions)} do not name distinct "
                               "Sentinel-2 bands; give the band order (command line: --bands B02,B03,...), or use a "
                               "folder of per-band files")


def _metadata_file(path: Path) -> Path | None:
    """The product's ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml`` in the scene folder or one of its parents."""
    start = path if path.is_dir() else path.parent
    for folder in (start, *list(start.parents)[:4]):
        found = sorted(folder.glob("MTD_MSIL*.xml"))
        if found:
            return found[0]
    return None


def read_offsets(xml: Path) -> dict[str, int]:
    """Band -> radiometric offset (``BOA_ADD_OFFSET`` / ``RADIO_ADD_OFFSET``) of a product metadata file; {}
    when it gives none (processing baselines before 04.00)."""
    text = xml.read_text(errors="replace")
    pairs = re.findall(r"<(?:BOA|RADIO)_ADD_OFFSET\s+band_id=\"(\d+)\"\s*>\s*(-?\d+)\s*<", text)
    return {SSL4EO_BANDS[int(i)]: int(v) for i, v in pairs if int(i) < len(SSL4EO_BANDS)}


def _level_from_names(*texts: str) -> Level | None:
    joined = " ".join(texts).upper()
    if "MSIL2A" in joined or "L2A" in re.split(r"[^A-Z0-9]", joined):
        return "L2A"
    if "MSIL1C" in joined or "L1C" in re.split(r"[^A-Z0-9]", joined):
        return "L1C"
    return None


@dataclass
class Scene:
    """An open scene: its band sources, level, offsets and 10 m grid. Use as a context manager (or call
    :meth:`close`); :meth:`read` returns a block of all 13 bands and its validity mask."""

    path: Path
    sources: dict[str, BandSource]
    level: Level
    level_source: str
    crs: rasterio.crs.CRS
    transform: Affine
    height: int
    width: int
    offsets: dict[str, int] = field(default_factory=dict)
    filled: tuple[str, ...] = ()
    zeroed: tuple[str, ...] = ()
    _readers: dict[str, tuple] = field(default_factory=dict, repr=False)

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every open file."""
        for handles in self._readers.values():
            for h in reversed(handles):
                h.close()
        self._readers.clear()

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the grid in the scene's CRS."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return left, bottom, right, top

    def _reader(self, band: str) -> tuple[rasterio.io.DatasetReaderBase, int, float | None]:
        if band not in self._readers:
            src = self.sources[band]
            ds = _open(src.path)
            handles: tuple = (ds,)
            nodata = ds.nodatavals[src.index - 1]
            nodata = S2_NODATA if nodata is None else nodata
            on_grid = (ds.crs == self.crs and ds.transform == self.transform
                       and (ds.height, ds.width) == (self.height, self.width))
            if not on_grid:
                vrt = WarpedVRT(ds, crs=self.crs, transform=self.transform, width=self.width, height=self.height,
                                resampling=RESAMPLING, src_nodata=nodata, nodata=nodata)
                handles = (ds, vrt)
            self._readers[band] = handles
        handles = self._readers[band]
        nodata = handles[-1].nodatavals[self.sources[band].index - 1]
        return handles[-1], self.sources[band].index, S2_NODATA if nodata is None else nodata

    def read(self, row: int, col: int, height: int, width: int, bands: Sequence[str] = SSL4EO_BANDS
             ) -> tuple[np.ndarray, np.ndarray]:
        """Pixels ``[row:row+height, col:col+width]`` of the grid: a ``(13, height, width)`` uint16 array in
        SSL4EO order (offset applied, nodata pixels 0, filled and zeroed bands 0) and a boolean validity mask.
        Only ``bands`` are read (the others stay 0 and do not take part in the validity mask)."""
        window = Window(col, row, width, height)
        out = np.zeros((len(SSL4EO_BANDS), height, width), dtype=np.uint16)
        valid = np.ones((height, width), dtype=bool)
        for i, band in enumerate(SSL4EO_BANDS):
            if band not in self.sources or band not in bands:
                continue
            reader, index, nodata = self._reader(band)
            try:
                raw = reader.read(index, window=window)
            except RasterioError as e:
                raise CorruptFileError(self.sources[band].path, f"cannot be read (truncated or corrupt?): {e}") from e
            if band not in UNTESTED_FOR_NODATA:
                valid &= raw != nodata
            if band in self.zeroed:
                continue
            value = raw.astype(np.int32) + self.offsets.get(band, 0)
            out[i] = np.clip(value, 0, np.iinfo(np.uint16).max).astype(np.uint16)
        out[:, ~valid] = 0
        return out, valid


def open_scene(path: str | Path, *, level: Level | None = None, bands: Sequence[str] | None = None,
               student_bands: Mapping | None = None) -> Scene:
    """Open a scene (see the module docstring for the layouts) onto its 10 m grid.

    ``level`` overrides the product level; ``bands`` is the band order of a multi-band GeoTIFF without band
    descriptions; ``student_bands`` is the student's band record (:func:`mtmg.data.sentinel2.read_band_metadata`):
    a band its training data lacked (``zero_filled``) is read as zeros, as for BigEarthNet, and a missing B10
    is filled with zeros with a warning that says whether the student saw a real B10.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise NotASceneError(path, "not found; give a folder of Sentinel-2 band files, a .SAFE folder or a "
                                   "multi-band GeoTIFF")
    if level is not None and level not in ("L1C", "L2A"):
        raise ArgumentError(f"level {level!r}: expected L1C or L2A")
    if path.is_dir():
        root = _image_root(path)
        if bands is not None:
            raise ArgumentError("a band order is for one multi-band GeoTIFF; a folder's files name their bands")
        files = find_band_files(root)
        if not files:
            raise NotASceneError(path, "not a Sentinel-2 scene: no .tif/.tiff/.jp2 file whose name holds a band "
                                       "(B01 ... B12, B8A); give a folder of band files, a .SAFE folder or a "
                                       "multi-band GeoTIFF")
        sources = {b: BandSource(p) for b, p in files.items()}
    elif path.suffix.lower() in RASTER_SUFFIXES:
        sources = _stacked_sources(path, bands)
    else:
        raise NotASceneError(path, "not a Sentinel-2 scene: expected a folder, a .SAFE folder or a GeoTIFF/JP2")

    missing = [b for b in SSL4EO_BANDS if b not in sources and b not in FILLABLE]
    if missing:
        raise MissingBandError(path, f"bands {missing} are missing (found {sorted(sources)}); only B10 can be "
                                     "filled. Add the band files, or give the band order of a multi-band GeoTIFF")
    xml = _metadata_file(path)
    names = [str(path.resolve())] + [str(s.path) for s in sources.values()] + ([xml.name] if xml else [])
    detected = _level_from_names(*names) or (
        "L2A" if any(_RES_DIR_RE.match(s.path.parent.name) for s in sources.values()) else None)
    if level is not None:
        chosen, how = level, "given"
    elif detected is not None:
        chosen, how = detected, "from the product's names"
    else:
        chosen, how = ("L1C", "assumed: B10 present") if "B10" in sources else ("L2A", "assumed: no B10")
    offsets = read_offsets(xml) if xml is not None else {}
    baseline = _BASELINE_RE.search(" ".join(names))
    if xml is None and baseline and int(baseline.group(1)) >= 4:
        warnings.warn(f"{path}: the product name says processing baseline {baseline.group(1)}.{baseline.group(2)} "
                      "(from 04.00 on, values carry an offset of -1000) but no MTD_MSIL*.xml was found to give "
                      "the offset; values are read without it. Keep the metadata file with the bands",
                      stacklevel=2)
    crs, transform, height, width = _grid(path, sources)
    record = dict(student_bands or {})
    zeroed = tuple(b for b in record.get("zero_filled", ()) if b in SSL4EO_BANDS and b in sources)
    filled = tuple(b for b in FILLABLE if b not in sources)
    if filled:
        trained_without = "B10" in record.get("zero_filled", ())
        why = ("as the student's band record says (its training data had no B10 either)" if trained_without else
               "the student was trained with a real B10, so its predictions may shift a little")
        warnings.warn(f"{path}: no B10 (L2A products do not have it); filled with zeros, {why}", stacklevel=2)
    return Scene(path, sources, chosen, how, crs, transform, height, width, offsets, filled, zeroed)


def _grid(path: Path, sources: Mapping[str, BandSource]) -> tuple[rasterio.crs.CRS, Affine, int, int]:
    """The 10 m grid of the finest band, after checking that all bands share a CRS and overlap it."""
    info = {}
    for band, src in sources.items():
        with _open(src.path) as ds:
            info[band] = (ds.crs, ds.transform, ds.height, ds.width, ds.bounds)
    crss = {band: v[0] for band, v in info.items()}
    if any(c is None for c in crss.values()):
        raise SceneGridError(path, f"bands {[b for b, c in crss.items() if c is None]} have no CRS; Sentinel-2 "
                                   "files are georeferenced, check the files")
    first = next(iter(crss.values()))
    if any(c != first for c in crss.values()):
        listing = ", ".join(f"{b}: {c}" for b, c in sorted(crss.items()))
        raise SceneGridError(path, f"the bands are in different CRSs ({listing}); give the bands of one product "
                                   "(one MGRS tile)")
    if not first.is_projected:
        raise SceneGridError(path, f"CRS {first} is not projected; reproject the bands to UTM (metres)")
    ref = min(info, key=lambda b: (abs(info[b][1].a), SSL4EO_BANDS.index(b)))
    crs, transform, height, width, bounds = info[ref]
    if abs(transform.a) != GRID_M or abs(transform.e) != GRID_M or transform.b or transform.d:
        transform = Affine(GRID_M, 0, bounds.left, 0, -GRID_M, bounds.top)
        height = int(round((bounds.top - bounds.bottom) / GRID_M))
        width = int(round((bounds.right - bounds.left) / GRID_M))
    left, top = max(v[4].left for v in info.values()), min(v[4].top for v in info.values())
    right, bottom = min(v[4].right for v in info.values()), max(v[4].bottom for v in info.values())
    if right <= left or top <= bottom:
        raise SceneGridError(path, "the bands have no common extent; give the bands of one product (one MGRS "
                                   "tile, one date)")
    return crs, transform, height, width


@dataclass(frozen=True)
class SceneWindow:
    """One window: its place in the window grid (``row``, ``col``), its top-left pixel (``y``, ``x``) and
    size on the 10 m grid, and the fraction of its pixels that are not nodata."""

    row: int
    col: int
    y: int
    x: int
    size: int
    valid_fraction: float


def window_grid(scene: Scene, size: int, stride: int | None = None) -> tuple[int, int]:
    """(rows, columns) of windows of ``size`` pixels every ``stride`` pixels (default: ``size``)."""
    stride = stride or size
    if size < 1 or stride < 1:
        raise ArgumentError(f"window size {size} and stride {stride} must be at least 1 pixel")
    if scene.height < size or scene.width < size:
        raise SceneTooSmallError(scene.path, f"{scene.height} x {scene.width} px at {GRID_M:g} m is smaller than "
                                             f"one window of {size} x {size} px ({size * GRID_M:g} m); give a "
                                             "larger scene")
    return (scene.height - size) // stride + 1, (scene.width - size) // stride + 1


def iter_windows(scene: Scene, size: int, stride: int | None = None, *, min_valid: float = 0.5,
                 progress: bool = False) -> Iterator[tuple[SceneWindow, np.ndarray | None, np.ndarray | None]]:
    """Every window in row-major order with its ``(13, size, size)`` array and validity mask; a window whose
    valid fraction is below ``min_valid`` comes with ``None`` for both (skipped). Reads one strip of windows
    at a time."""
    stride = stride or size
    rows, cols = window_grid(scene, size, stride)
    for r in tqdm(range(rows), desc="reading windows", unit="row", disable=not progress, leave=False):
        y = r * stride
        strip, valid = scene.read(y, 0, size, scene.width)
        for c in range(cols):
            x = c * stride
            v = valid[:, x:x + size]
            fraction = float(v.mean())
            win = SceneWindow(r, c, y, x, size, fraction)
            if fraction < min_valid:
                yield win, None, None
            else:
                yield win, strip[:, :, x:x + size], v


def index_fractions(array13: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """Share of a window's valid pixels with NDWI > 0 (water, McFeeters) and with NDVI > 0.5 (dense vegetation),
    from the bands alone (:func:`mtmg.data.sentinel2.ndwi`, :func:`~mtmg.data.sentinel2.ndvi`)."""
    mask = np.ones(array13.shape[1:], dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    n = int(mask.sum())
    if n == 0:
        return {"water_fraction": float("nan"), "vegetation_fraction": float("nan")}
    return {"water_fraction": float((ndwi(array13)[mask] > 0).sum() / n),
            "vegetation_fraction": float((ndvi(array13)[mask] > 0.5).sum() / n)}

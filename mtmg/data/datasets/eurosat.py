"""EuroSAT: 13-band L1C GeoTIFFs (``eurosat_ms``, paired RGB/MS) and the RGB JPEG release (``eurosat_rgb``).

Layouts accepted under ``root``:

* flat class folders ``<Class>/<Class>_<n>.tif`` (the shipped sample ``data/eurosat_ms_sample``),
* torchgeo's ``ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/``, or ``EuroSAT_MS/<Class>/``;
  for RGB: ``<Class>/``, ``2750/<Class>/`` or ``EuroSAT_RGB/<Class>/`` with ``.jpg`` files.

Splits are torchgeo's ``eurosat-{train,val,test}.txt`` in ``root`` (one file name per line; ``.jpg`` and
``.tif`` names are matched by stem), or ``split_file=``. For the shipped sample the fixed split in
``data/splits/eurosat_ms_sample-{split}.txt`` is used (10/5/5 tiles per class, see
``data/splits/README.md``). ``split="all"`` takes every file. Files in the GeoTIFF are ordered B01..B12
then B8A; samples are reordered to SSL4EO order by :func:`mtmg.data.sentinel2.to_ssl4eo`.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from mtmg.core.paths import DATA_DIR, SPLITS_DIR
from mtmg.data.sentinel2 import EUROSAT_FILE_BANDS, to_ssl4eo

from .base import Loaded, MultispectralDataset, OnError, Record, RGBDataset, Transform
from .errors import MissingFileError, ShapeError
from .layout import (
    SPLITS,
    check_split,
    find_split_file,
    first_dir,
    is_shipped_sample,
    read_lines,
    require_root,
    scan_class_folders,
)
from .raster import read_image, read_raster

EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
)
TILE_SIZE = (64, 64)
MS_SUBDIRS = ("", "ds/images/remote_sensing/otherDatasets/sentinel_2/tif", "EuroSAT_MS", "EuroSATallBands")
RGB_SUBDIRS = ("", "2750", "EuroSAT_RGB")
SHIPPED_MS_SAMPLE = DATA_DIR / "eurosat_ms_sample"
SAMPLE_SPLIT_SALT = "mtmg/eurosat_ms_sample/v1"
SAMPLE_SPLIT_SIZES = {"train": 10, "val": 5, "test": 5}
HOWTO_MS = ("Get it with torchgeo: torchgeo.datasets.EuroSAT(root, split=..., download=True, checksum=True) "
            "(or pass download=True here), or from https://github.com/phelber/EuroSAT (EuroSAT_MS.zip).")
HOWTO_RGB = "Download EuroSAT.zip (RGB JPEGs) from https://github.com/phelber/EuroSAT and extract it into root."


def _split_stems(root: Path, split: str, split_file: str | Path | None, sample: Path | None,
                 what: str, howto: str) -> set[str] | None:
    if split == "all":
        return None
    check_split(split)
    candidates = [Path(split_file) if split_file is not None else None, root / f"eurosat-{split}.txt"]
    if sample is not None and split_file is None and is_shipped_sample(root, sample):
        candidates.append(SPLITS_DIR / f"{sample.name}-{split}.txt")
    path = find_split_file(candidates, split, what,
                           "Expected torchgeo's eurosat-{train,val,test}.txt in the root. " + howto)
    return {Path(name).stem for name in read_lines(path)}


def _records(image_dir: Path, ext: str, stems: set[str] | None) -> tuple[list[Record], list[Exception]]:
    found, problems = scan_class_folders(image_dir, EUROSAT_CLASSES, (ext,), check_prefix=True)
    if stems is None:
        stems = set(found)
    for stem in sorted(stems - set(found)):
        problems.append(MissingFileError(image_dir / stem.rsplit("_", 1)[0] / f"{stem}{ext}",
                                         "listed in the split file but not found in any class folder"))
    records = [Record(stem, {"image": path}, label) for stem, (label, path) in found.items() if stem in stems]
    return records, problems


class EuroSATMS(MultispectralDataset):
    """EuroSAT-MS: paired RGB composite (L1C, /3558) and 13-band MS view, 10 single-label classes.

    ``cache=True`` keeps decoded tiles in memory (per process) so that epochs do not re-read GeoTIFFs.
    """

    classes = list(EUROSAT_CLASSES)
    multilabel = False
    prompt_key = "eurosat"
    level = "L1C"

    def __init__(self, root: str | Path, split: str = "train", rgb_transform: Transform = None,
                 ms_transform: Transform = None, *, split_file: str | Path | None = None,
                 on_error: OnError = "raise", cache: bool = False, download: bool = False) -> None:
        super().__init__(rgb_transform, ms_transform, on_error, cache)
        root = Path(root)
        if download:
            from torchgeo.datasets import EuroSAT  # imported here: only a download needs it

            EuroSAT(root=str(root), split=split if split in SPLITS else "train", download=True, checksum=True)
        what = "EuroSAT-MS class folders of 13-band GeoTIFFs (<Class>/<Class>_<n>.tif)"
        root = require_root(root, what, HOWTO_MS)
        image_dir = _image_dir(root, MS_SUBDIRS, what, HOWTO_MS)
        stems = _split_stems(root, split, split_file, SHIPPED_MS_SAMPLE, "EuroSAT-MS", HOWTO_MS)
        self._index(*_records(image_dir, ".tif", stems))

    def _load(self, record: Record) -> Loaded:
        path = record.files["image"]
        array = read_raster(path, bands=len(EUROSAT_FILE_BANDS), dtype="uint16", shape=TILE_SIZE)
        return Loaded(to_ssl4eo(array, EUROSAT_FILE_BANDS), record.target, {})


class EuroSATRGB(RGBDataset):
    """EuroSAT RGB JPEGs (64 x 64), 10 single-label classes; items have no ``"ms"`` key."""

    classes = list(EUROSAT_CLASSES)
    multilabel = False
    prompt_key = "eurosat"

    def __init__(self, root: str | Path, split: str = "train", rgb_transform: Transform = None, *,
                 split_file: str | Path | None = None, on_error: OnError = "raise", cache: bool = False) -> None:
        super().__init__(rgb_transform, on_error, cache)
        what = "EuroSAT RGB class folders of JPEGs (<Class>/<Class>_<n>.jpg)"
        root = require_root(Path(root), what, HOWTO_RGB)
        image_dir = _image_dir(root, RGB_SUBDIRS, what, HOWTO_RGB)
        stems = _split_stems(root, split, split_file, None, "EuroSAT RGB", HOWTO_RGB)
        self._index(*_records(image_dir, ".jpg", stems))

    def _load(self, record: Record):
        image = read_image(record.files["image"])
        if image.size != TILE_SIZE:
            raise ShapeError(record.files["image"], f"is {image.size[0]}x{image.size[1]} px, expected 64x64")
        return image


def _image_dir(root: Path, subdirs: Iterable[str], what: str, howto: str) -> Path:
    """The first layout variant under ``root`` that contains at least one EuroSAT class folder."""
    for sub in subdirs:
        if any((root / sub / c).is_dir() for c in EUROSAT_CLASSES):
            return root / sub
    return first_dir(root, [f"{s}/<Class>" if s else "<Class>" for s in subdirs], what, howto)


def sample_split(names: Iterable[str], sizes: dict[str, int] = SAMPLE_SPLIT_SIZES,
                 salt: str = SAMPLE_SPLIT_SALT) -> dict[str, list[str]]:
    """Deterministic per-class split of EuroSAT file names.

    Within each class (the name before the last ``_``) the names are sorted by
    ``sha256(salt + "/" + name)`` and cut into consecutive blocks of ``sizes`` (train, val, test).
    """
    by_class: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_class[name.rsplit("_", 1)[0]].append(name)
    out: dict[str, list[str]] = {split: [] for split in sizes}
    for cls in sorted(by_class):
        ordered = sorted(by_class[cls], key=lambda n: hashlib.sha256(f"{salt}/{n}".encode()).hexdigest())
        if len(ordered) != sum(sizes.values()):
            raise ValueError(f"class {cls} has {len(ordered)} files, the split needs {sum(sizes.values())}")
        start = 0
        for split, size in sizes.items():
            out[split].extend(ordered[start:start + size])
            start += size
    return {split: sorted(v) for split, v in out.items()}


def write_sample_splits(root: Path = SHIPPED_MS_SAMPLE, out_dir: Path = SPLITS_DIR) -> list[Path]:
    """Regenerate ``data/splits/eurosat_ms_sample-{split}.txt`` from the tiles in ``root``."""
    names = sorted(p.name for p in Path(root).glob("*/*.tif"))
    written = []
    for split, files in sample_split(names).items():
        path = Path(out_dir) / f"{Path(root).name}-{split}.txt"
        path.write_text("".join(f"{f}\n" for f in files))
        written.append(path)
    return written

"""SEN12MS: 13-band L1C Sentinel-2 patches (256 x 256) with multi-label simplified IGBP targets.

Layout (as torchgeo's ``SEN12MS``): ``root/ROIs<season>/s2_<scene>/ROIs<season>_s2_<scene>_p<n>.tif``
(13 bands, uint16, already in SSL4EO order) and the MODIS land cover patch
``root/ROIs<season>/lc_<scene>/ROIs<season>_lc_<scene>_p<n>.tif`` (4 bands; band 1 is IGBP, 1-17).
Splits: ``root/{split}_list.txt`` (S2 file names, as in github.com/schmitt-muc/SEN12MS ``splits/``;
the release has ``train_list.txt``, ``val_list.txt`` and ``test_list.txt``), or ``split_file=``.

Targets follow the SEN12MS classification baseline (Schmitt et al. / schmitt-muc/SEN12MS
``classification/dataset.py``): the 17 IGBP classes are merged into the 10-class *simplified IGBP*
scheme (:data:`IGBP_TO_SIMPLIFIED`: forests 1-5 -> Forest, 6-7 -> Shrubland, 8-9 -> Savanna,
10 Grassland, 11 Wetlands, 12 and 14 -> Croplands, 13 Urban/Built-up, 15 Snow/Ice, 16 Barren, 17 Water),
and a class is positive when it covers at least ``threshold`` (0.1) of the patch. The baseline reads these
fractions from its pickled label file; here they are computed from the land-cover patch itself, over
pixels with a valid IGBP code (1-17). All 10 classes are kept (Savanna included); classes without
positives in a split are for the metric to handle.

Two options decide how the patches are fed, because the models are trained elsewhere:

- ``b10``: ``"real"`` keeps the cirrus band B10 as recorded; ``"zero"`` sets it to 0, as in training data
  without B10 (BigEarthNet is L2A, where B10 does not exist and is zero-filled) and as the reference code
  does. Stage 2 picks ``"zero"`` for a student trained without B10 unless the spec says otherwise
  (:func:`mtmg.data.sentinel2.evaluation_spec`).
- ``composite``: the white point of the RGB composite; ``"L1C"`` (default) scales B04, B03, B02 by
  255 / 3558 as for every L1C product (the physically right choice: SEN12MS is L1C), ``"L2A"`` by
  255 / 2000 as the reference code does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mtmg.data.sentinel2 import RGB_WHITE_POINT, SEN12MS_S2_BANDS, band_index, to_ssl4eo

from .base import Loaded, MultispectralDataset, OnError, Record, Transform
from .errors import LabelError, MissingFileError
from .layout import check_split, find_split_file, read_lines, require_root
from .raster import read_raster

SEN12MS_CLASSES: list[str] = [
    "Forest", "Shrubland", "Savanna", "Grassland", "Wetlands",
    "Croplands", "Urban/Built-up", "Snow/Ice", "Barren", "Water",
]
IGBP_TO_SIMPLIFIED: dict[int, int] = {
    1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 1, 7: 1, 8: 2, 9: 2, 10: 3,
    11: 4, 12: 5, 13: 6, 14: 5, 15: 7, 16: 8, 17: 9,
}
PATCH_SIZE = (256, 256)
B10_CHOICES = ("real", "zero")
HOWTO = ("Download the ROIs*_s2 and ROIs*_lc archives from https://dataserv.ub.tum.de/s/m1474000 and the split "
         "lists from https://github.com/schmitt-muc/SEN12MS/tree/master/splits (see torchgeo.datasets.SEN12MS).")


def simplified_igbp_fractions(igbp: np.ndarray, path: Path) -> np.ndarray:
    """Fraction of valid pixels in each of the 10 simplified IGBP classes."""
    valid = igbp[(igbp >= 1) & (igbp <= 17)].astype(np.int64)
    if valid.size == 0:
        raise LabelError(path, "land-cover band 1 has no valid IGBP code (1-17)")
    lut = np.zeros(18, dtype=np.int64)
    for code, cls in IGBP_TO_SIMPLIFIED.items():
        lut[code] = cls
    return np.bincount(lut[valid], minlength=len(SEN12MS_CLASSES)) / valid.size


class SEN12MS(MultispectralDataset):
    """SEN12MS S2 patches with 10-class simplified IGBP multi-hot targets."""

    classes = SEN12MS_CLASSES
    multilabel = True
    prompt_key = "sen12ms"
    level = "L1C"

    def __init__(self, root: str | Path, split: str = "test", rgb_transform: Transform = None,
                 ms_transform: Transform = None, *, threshold: float = 0.1, split_file: str | Path | None = None,
                 b10: str = "real", composite: str = "L1C", on_error: OnError = "raise", cache: bool = False) -> None:
        super().__init__(rgb_transform, ms_transform, on_error, cache)
        check_split(split)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if b10 not in B10_CHOICES:
            raise ValueError(f"SEN12MS b10={b10!r}: use 'real' (the recorded band) or 'zero' (as in training data "
                             "without B10)")
        if composite not in RGB_WHITE_POINT:
            raise ValueError(f"SEN12MS composite={composite!r}: use 'L1C' (255/3558) or 'L2A' (255/2000, the "
                             "reference code's)")
        self.threshold = threshold
        self.b10 = b10
        self.level = composite
        what = "SEN12MS season folders (ROIs1158_spring/s2_<n>/..., lc_<n>/...) and <split>_list.txt"
        root = require_root(Path(root), what, HOWTO)
        split_path = find_split_file([Path(split_file) if split_file else None, root / f"{split}_list.txt"],
                                     split, "SEN12MS", HOWTO + " Without a val list, use "
                                     "mtmg.data.datasets.carve_validation on the train split.")
        records, problems = [], []
        for name in read_lines(split_path):
            parts = Path(name).stem.split("_")
            if len(parts) != 5 or parts[2] != "s2":
                problems.append(LabelError(split_path, f"entry {name!r} is not an S2 patch name like "
                                                       "ROIs1158_spring_s2_1_p30.tif"))
                continue
            season, scene = "_".join(parts[:2]), parts[3]
            lc_name = "_".join([*parts[:2], "lc", *parts[3:]]) + ".tif"
            files = {"s2": root / season / f"s2_{scene}" / Path(name).name,
                     "lc": root / season / f"lc_{scene}" / lc_name}
            missing = [p for p in files.values() if not p.is_file()]
            if missing:
                problems.append(MissingFileError(missing[0], f"listed in {split_path.name} but not found"))
                continue
            records.append(Record(Path(name).stem, files))
        self._index(records, problems)

    def _load(self, record: Record) -> Loaded:
        s2 = read_raster(record.files["s2"], bands=13, dtype="uint16", shape=PATCH_SIZE)
        lc = read_raster(record.files["lc"], bands=4, dtype="uint16", shape=PATCH_SIZE)
        fractions = simplified_igbp_fractions(lc[0], record.files["lc"])
        target = tuple(int(i) for i in np.flatnonzero(fractions >= self.threshold))
        array13 = to_ssl4eo(s2, SEN12MS_S2_BANDS)
        if self.b10 == "zero":
            array13[band_index("B10")] = 0
        return Loaded(array13, target, {})

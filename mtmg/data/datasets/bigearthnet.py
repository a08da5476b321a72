"""BigEarthNet: v1 (43 CORINE classes, converted to 19 or 5) and v2 / reBEN (19 classes).

Bands: 12 L2A GeoTIFFs per patch at native size (10 m: 120 px; 20 m: 60 px; 60 m: 20 px), each
resampled to 120 x 120 with GDAL's bilinear resampling on reading (as torchgeo does), rounded back to
uint16, reordered to SSL4EO order with B10 zero-filled. The RGB composite uses the L2A white point (2000).
With ``s1=True`` a sample also has ``"s1"``: float32 ``(2, 120, 120)``, VV and VH backscatter in dB.

v1 layout (``bigearthnet5/19/43``): ``root/BigEarthNet-v1.0/<patch>/<patch>_B??.tif`` and
``<patch>_labels_metadata.json`` (torchgeo's layout; the shipped sample uses ``BigEarthNet-S2-Example``),
S1 in ``root/BigEarthNet-S1-v1.0`` (or ``BigEarthNet-S1-Example``). Splits are torchgeo's
``bigearthnet-{train,val,test}.csv`` (lines ``s2_patch,s1_patch``); the shipped sample uses the committed
``data/splits/bigearthnet_v1_sample-{split}.csv`` (see ``data/splits/README.md``).
Labels: 43 -> 19 classes with torchgeo's ``BigEarthNet.label_converter``; 43 -> 5 classes by CORINE level 1
(:data:`LEVEL1_CLASSES`): codes 1xx artificial surfaces, 2xx agricultural areas, 3xx forest and
semi-natural areas, 4xx wetlands, 5xx water bodies. A v1 patch whose classes all lack a 19-class
counterpart (e.g. only "Road and rail networks") has an all-zero 19-class target, as in torchgeo.

v2 layout (``bigearthnet_v2``): ``root/BigEarthNet-S2/<tile>/<patch>/<patch>_B??.tif``, S1 in
``root/BigEarthNet-S1/<tile>/<patch>/``, labels and splits from ``metadata.parquet`` (columns
``patch_id``, ``labels``, ``split``, ``s1_name``) or, for the shipped sample, ``v2_metadata_labels.json``
(looked up in ``root`` and its parent).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchgeo.datasets.bigearthnet import BigEarthNet as _TGBigEarthNet

from mtmg.core.paths import DATA_DIR, SPLITS_DIR
from mtmg.data.sentinel2 import BAND_RESOLUTION_M, BIGEARTHNET_S2_BANDS, to_ssl4eo

from .base import Loaded, MultispectralDataset, OnError, Record, Transform
from .errors import DatasetNotFoundError, LabelError, MissingFileError
from .layout import (
    check_split,
    find_split_file,
    first_dir,
    is_shipped_sample,
    read_json,
    read_lines,
    require_root,
)
from .raster import read_raster

CLASSES_43: list[str] = list(_TGBigEarthNet.class_sets[43])
CLASSES_19: list[str] = list(_TGBigEarthNet.class_sets[19])
LABEL_CONVERTER_43_TO_19: dict[int, int] = dict(_TGBigEarthNet.label_converter)
LEVEL1_CLASSES: list[str] = [
    "Artificial surfaces", "Agricultural areas", "Forest and semi natural areas", "Wetlands", "Water bodies",
]
LABEL_CONVERTER_43_TO_5: dict[int, int] = {
    i: level for level, (lo, hi) in enumerate([(0, 11), (11, 22), (22, 33), (33, 38), (38, 43)])
    for i in range(lo, hi)
}
"""CORINE level 1 of each of the 43 classes (their order follows the CLC codes 111 ... 523)."""

PATCH_SIZE = 120
S2_DIRS_V1 = ("BigEarthNet-v1.0", "BigEarthNet-S2-v1.0", "BigEarthNet-S2-Example")
S1_DIRS_V1 = ("BigEarthNet-S1-v1.0", "BigEarthNet-S1-Example")
SHIPPED_V1_SAMPLE = DATA_DIR / "bigearthnet_sample" / "v1"
V2_SPLITS = {"train": "train", "val": "validation", "test": "test"}
HOWTO_V1 = ("Get it with torchgeo: torchgeo.datasets.BigEarthNet(root, split=..., bands='all', download=True) "
            "(or pass download=True here; about 66 GB), or from https://bigearth.net.")
HOWTO_V2 = ("Get it with torchgeo: torchgeo.datasets.BigEarthNetV2(root, split=..., download=True) "
            "(or pass download=True here), or from https://bigearth.net (reBEN).")


def native_size(band: str) -> tuple[int, int]:
    """Size in pixels of a BigEarthNet band file at its native resolution."""
    side = PATCH_SIZE * 10 // BAND_RESOLUTION_M[band]
    return side, side


def read_s2_patch(folder: Path, patch: str) -> np.ndarray:
    """The 12 band files of a patch, resampled to 120 x 120, as a (13, 120, 120) uint16 SSL4EO array."""
    bands = [
        read_raster(folder / f"{patch}_{band}.tif", bands=1, dtype="uint16", shape=native_size(band),
                    out_shape=(PATCH_SIZE, PATCH_SIZE))[0]
        for band in BIGEARTHNET_S2_BANDS
    ]
    return to_ssl4eo(np.stack(bands), BIGEARTHNET_S2_BANDS)


def read_s1_patch(folder: Path, patch: str) -> torch.Tensor:
    """VV and VH backscatter (dB) of a Sentinel-1 patch as float32 (2, 120, 120)."""
    bands = [read_raster(folder / f"{patch}_{pol}.tif", bands=1, dtype="float32",
                         shape=(PATCH_SIZE, PATCH_SIZE))[0] for pol in ("VV", "VH")]
    return torch.from_numpy(np.stack(bands))


def convert_labels(indices43: list[int], num_classes: int) -> tuple[int, ...]:
    """43-class indices converted to the 43-, 19- or 5-class nomenclature (sorted, unique)."""
    if num_classes == 43:
        return tuple(sorted(set(indices43)))
    table = {19: LABEL_CONVERTER_43_TO_19, 5: LABEL_CONVERTER_43_TO_5}[num_classes]
    return tuple(sorted({table[i] for i in indices43 if i in table}))


def _is_name_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def names_to_indices(names: list[str], classes: list[str], path: Path) -> list[int]:
    """Class indices of label names; unknown names are a LabelError naming ``path``."""
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise LabelError(path, f"unknown class names {unknown}; expected names from {len(classes)}-class "
                               f"BigEarthNet nomenclature")
    return [classes.index(n) for n in names]


class BigEarthNet(MultispectralDataset):
    """BigEarthNet v1 S2 patches with 43-, 19- or 5-class multi-hot targets."""

    multilabel = True
    level = "L2A"

    def __init__(self, root: str | Path, split: str = "train", rgb_transform: Transform = None,
                 ms_transform: Transform = None, *, num_classes: int = 19, s1: bool = False,
                 split_file: str | Path | None = None, on_error: OnError = "raise", cache: bool = False,
                 download: bool = False) -> None:
        super().__init__(rgb_transform, ms_transform, on_error, cache)
        if num_classes not in (5, 19, 43):
            raise ValueError(f"num_classes must be 5, 19 or 43, got {num_classes}")
        check_split(split)
        self.num_classes = num_classes
        self.classes = {43: CLASSES_43, 19: CLASSES_19, 5: LEVEL1_CLASSES}[num_classes]
        self.prompt_key = f"bigearthnet{num_classes}"
        self.s1 = s1
        root = Path(root)
        if download:
            _TGBigEarthNet(root=str(root), split=split, bands="all" if s1 else "s2", download=True, checksum=True)
        what = "BigEarthNet v1 patch folders (BigEarthNet-v1.0/<patch>/<patch>_B??.tif)"
        root = require_root(root, what, HOWTO_V1)
        s2_dir = first_dir(root, S2_DIRS_V1, what, HOWTO_V1)
        s1_dir = first_dir(root, S1_DIRS_V1, "BigEarthNet v1 Sentinel-1 folders", HOWTO_V1) if s1 else None
        sample_csv = SPLITS_DIR / f"bigearthnet_v1_sample-{split}.csv" \
            if split_file is None and is_shipped_sample(root, SHIPPED_V1_SAMPLE) else None
        csv = find_split_file([Path(split_file) if split_file else None, root / f"bigearthnet-{split}.csv",
                               sample_csv], split, "BigEarthNet v1",
                              "Expected torchgeo's bigearthnet-{train,val,test}.csv (s2_patch,s1_patch) in root.")
        records, problems = [], []
        for line in read_lines(csv):
            s2_name, _, s1_name = (part.strip() for part in line.partition(","))
            files = {"s2": s2_dir / s2_name}
            if s1_dir is not None:
                if not s1_name:
                    problems.append(LabelError(csv, f"line {line!r} names no Sentinel-1 patch; s1=True needs "
                                                    "'s2_patch,s1_patch' lines"))
                    continue
                files["s1"] = s1_dir / s1_name
            missing = [p for p in files.values() if not p.is_dir()]
            if missing:
                problems.append(MissingFileError(missing[0], f"patch folder listed in {csv.name} not found"))
                continue
            records.append(Record(s2_name, files))
        self._index(records, problems)

    def _load(self, record: Record) -> Loaded:
        folder = record.files["s2"]
        label_file = folder / f"{record.id}_labels_metadata.json"
        if not label_file.is_file():
            raise MissingFileError(label_file, "label file not found; every v1 patch folder has one")
        content = read_json(label_file, 'an object with a "labels" list of class names')
        names = content.get("labels") if isinstance(content, dict) else None
        if not _is_name_list(names):
            raise LabelError(label_file, f'"labels" is {json.dumps(names)[:80]}; expected a JSON object with a '
                                         '"labels" list of class names, e.g. {"labels": ["Pastures"]}')
        target = convert_labels(names_to_indices(names, CLASSES_43, label_file), self.num_classes)
        extras = {"s1": read_s1_patch(record.files["s1"], record.files["s1"].name)} if self.s1 else {}
        return Loaded(read_s2_patch(folder, record.id), target, extras)


def load_v2_metadata(path: Path) -> pd.DataFrame:
    """reBEN metadata (``metadata.parquet``, or the shipped sample's JSON) as a DataFrame."""
    path = Path(path)
    if path.suffix == ".parquet":
        try:
            df = pd.read_parquet(path)
        except (OSError, ValueError, ImportError) as e:
            raise LabelError(path, f"cannot be read as a parquet table ({e}); download metadata.parquet again") from e
    else:
        content = read_json(path, "an object with a 'v2_patches' mapping of patch_id -> row")
        rows = content.get("v2_patches") if isinstance(content, dict) else None
        if not isinstance(rows, dict) or not all(isinstance(r, dict) for r in rows.values()):
            raise LabelError(path, "expected a JSON object with a 'v2_patches' mapping of patch_id -> row")
        df = pd.DataFrame(list(rows.values()))
    missing = {"patch_id", "labels", "split"} - set(df.columns)
    if missing:
        raise LabelError(path, f"metadata lacks columns {sorted(missing)}")
    return df


class BigEarthNetV2(MultispectralDataset):
    """BigEarthNet v2 (reBEN) S2 patches with 19-class multi-hot targets from the metadata table."""

    classes = CLASSES_19
    multilabel = True
    prompt_key = "bigearthnet19"
    level = "L2A"

    def __init__(self, root: str | Path, split: str = "train", rgb_transform: Transform = None,
                 ms_transform: Transform = None, *, metadata: str | Path | None = None, s1: bool = False,
                 on_error: OnError = "raise", cache: bool = False, download: bool = False) -> None:
        super().__init__(rgb_transform, ms_transform, on_error, cache)
        check_split(split)
        self.s1 = s1
        root = Path(root)
        if download:
            from torchgeo.datasets import BigEarthNetV2 as _TGBigEarthNetV2  # imported here: only a download needs it

            _TGBigEarthNetV2(root=str(root), split=split, download=True, checksum=True)
        what = "BigEarthNet v2 folders (BigEarthNet-S2/<tile>/<patch>/<patch>_B??.tif)"
        root = require_root(root, what, HOWTO_V2)
        s2_dir = first_dir(root, ["BigEarthNet-S2"], what, HOWTO_V2)
        s1_dir = first_dir(root, ["BigEarthNet-S1"], "BigEarthNet v2 Sentinel-1 folders", HOWTO_V2) if s1 else None
        candidates = [Path(metadata)] if metadata else [
            root / "metadata.parquet", root / "v2_metadata_labels.json", root.parent / "v2_metadata_labels.json"]
        meta_path = next((p for p in candidates if p.is_file()), None)
        if meta_path is None:
            raise DatasetNotFoundError(f"no BigEarthNet v2 metadata (looked for {', '.join(map(str, candidates))}). "
                                       + HOWTO_V2)
        table = load_v2_metadata(meta_path)
        table = table[table["split"] == V2_SPLITS[split]]
        records, problems = [], []
        for row in table.itertuples(index=False):
            patch = str(row.patch_id)
            labels = list(row.labels) if isinstance(row.labels, (list, tuple, np.ndarray)) else row.labels
            if not _is_name_list(labels):
                problems.append(LabelError(meta_path, f"row {patch}: labels are {labels!r}; expected a list of "
                                                      "class names"))
                continue
            try:
                target = tuple(sorted(set(names_to_indices(labels, CLASSES_19, meta_path))))
            except LabelError as e:
                problems.append(LabelError(meta_path, f"row {patch}: {str(e).split(': ', 1)[1]}"))
                continue
            files = {"s2": s2_dir / "_".join(patch.split("_")[:-2]) / patch}
            if s1_dir is not None:
                s1_name = str(row.s1_name)
                files["s1"] = s1_dir / "_".join(s1_name.split("_")[:-3]) / s1_name
            missing = [p for p in files.values() if not p.is_dir()]
            if missing:
                problems.append(MissingFileError(missing[0], f"patch folder listed in {meta_path.name} not found"))
                continue
            records.append(Record(patch, files, target))
        self._index(records, problems)

    def _load(self, record: Record) -> Loaded:
        extras = {"s1": read_s1_patch(record.files["s1"], record.files["s1"].name)} if self.s1 else {}
        return Loaded(read_s2_patch(record.files["s2"], record.id), record.target, extras)

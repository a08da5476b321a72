"""EuroSAT readers on the shipped tiles, the fixed sample split, and every bad-input case."""
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import Affine

from mtmg.core.paths import DATA_DIR
from mtmg.data import prompts
from mtmg.data.datasets import (
    BandCountError,
    CorruptFileError,
    DatasetNotFoundError,
    DTypeError,
    LabelError,
    MissingFileError,
    NonFiniteError,
    ShapeError,
    UnknownClassError,
    get_dataset,
)
from mtmg.data.datasets import eurosat as eurosat_module
from mtmg.data.datasets.eurosat import EUROSAT_CLASSES, sample_split
from mtmg.data.sentinel2 import EUROSAT_FILE_BANDS, ms_view, rgb_composite, to_ssl4eo

MS = DATA_DIR / "eurosat_ms_sample"
SPLITS = DATA_DIR / "splits"


def _split_names(split: str) -> list[str]:
    return (SPLITS / f"eurosat_ms_sample-{split}.txt").read_text().split()


def test_committed_split_files_are_disjoint_cover_the_sample_and_are_10_5_5():
    names = {s: _split_names(s) for s in ("train", "val", "test")}
    sets = {s: set(v) for s, v in names.items()}
    assert all(len(v) == len(sets[s]) for s, v in names.items()), "duplicate names in a split file"
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    tiles = {p.name for p in MS.glob("*/*.tif")}
    assert len(tiles) == 200 and set().union(*sets.values()) == tiles
    for split, size in (("train", 10), ("val", 5), ("test", 5)):
        per_class = Counter(n.rsplit("_", 1)[0] for n in names[split])
        assert per_class == {c: size for c in EUROSAT_CLASSES}, split


def test_committed_split_files_equal_the_documented_rule():
    regenerated = sample_split(sorted(p.name for p in MS.glob("*/*.tif")))
    for split, files in regenerated.items():
        assert files == _split_names(split)
    assert sample_split(sorted(p.name for p in MS.glob("*/*.tif")), salt="other") != regenerated


@pytest.mark.parametrize("split,n", [("train", 100), ("val", 50), ("test", 50)])
def test_eurosat_ms_sample_splits(split, n):
    ds = get_dataset("eurosat_ms", MS, split)
    assert len(ds) == n
    assert {r.id + ".tif" for r in ds.records} == set(_split_names(split))
    assert ds.classes == list(EUROSAT_CLASSES) and not ds.multilabel and ds.prompt_key == "eurosat"
    assert Counter(ds.target(i) for i in range(len(ds))) == {i: n // 10 for i in range(10)}


def test_eurosat_ms_sample_dict_matches_the_file():
    ds = get_dataset("eurosat_ms", MS, "test")
    i = 7
    sample = ds[i]
    assert set(sample) == {"rgb", "ms", "target", "id"}
    cls = EUROSAT_CLASSES[sample["target"]]
    path = MS / cls / f"{sample['id']}.tif"
    assert path.is_file() and sample["id"].startswith(cls + "_")
    with rasterio.open(path) as f:
        array13 = to_ssl4eo(f.read(), EUROSAT_FILE_BANDS)
    torch.testing.assert_close(sample["ms"], ms_view(array13), rtol=0, atol=0)
    assert sample["ms"].dtype == torch.float32 and sample["ms"].shape == (13, 64, 64)
    assert sample["rgb"].dtype == torch.uint8 and sample["rgb"].shape == (3, 64, 64)
    np.testing.assert_array_equal(sample["rgb"].numpy().transpose(1, 2, 0), rgb_composite(array13, "L1C"))


def test_transforms_get_a_pil_image_and_the_ms_tensor():
    seen = {}

    def rgb_t(img):
        seen["rgb"] = img
        return "rgb-out"

    def ms_t(x):
        seen["ms"] = x
        return x * 2

    ds = get_dataset("eurosat_ms", MS, "val", rgb_transform=rgb_t, ms_transform=ms_t)
    sample = ds[0]
    assert isinstance(seen["rgb"], Image.Image) and seen["rgb"].size == (64, 64) and seen["rgb"].mode == "RGB"
    assert sample["rgb"] == "rgb-out"
    torch.testing.assert_close(sample["ms"], (2 * seen["ms"]).clamp(0, 1))  # the MS view is clamped after its transform


def test_cache_reads_each_tile_once(monkeypatch):
    calls = Counter()
    real = eurosat_module.read_raster

    def counting(path, **kw):
        calls[Path(path).name] += 1
        return real(path, **kw)

    monkeypatch.setattr(eurosat_module, "read_raster", counting)
    ds = get_dataset("eurosat_ms", MS, "val", cache=True)
    first = [ds[i]["ms"] for i in range(len(ds))]
    second = [ds[i]["ms"] for i in range(len(ds))]
    assert len(calls) == 50 and set(calls.values()) == {1}
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    calls.clear()
    uncached = get_dataset("eurosat_ms", MS, "val")
    uncached[0], uncached[0]
    assert sum(calls.values()) == 2


def test_prompt_names_follow_label_order():
    readable = dict(zip(EUROSAT_CLASSES, prompts.classnames("eurosat")))
    assert readable == {
        "AnnualCrop": "annual crop land", "Forest": "forest", "HerbaceousVegetation": "brushland or shrubland",
        "Highway": "highway or road", "Industrial": "industrial buildings or commercial buildings",
        "Pasture": "pasture land", "PermanentCrop": "permanent crop land",
        "Residential": "residential buildings or homes or apartments", "River": "river", "SeaLake": "lake or sea",
    }
    ds = get_dataset("eurosat_ms", MS, "test")
    names, templates = prompts.for_dataset(ds)
    assert names == prompts.CLASSNAMES["eurosat"] and len(templates) == 3
    assert all(t.startswith("a centered satellite photo of") and "{c}" in t for t in templates)


def test_eurosat_rgb_reads_the_original_jpegs():
    ds = get_dataset("eurosat_rgb", DATA_DIR / "eurosat_rgb_sample", "all")
    assert [r.id for r in ds.records] == ["AnnualCrop_1", "Pasture_300", "SeaLake_3000"]
    assert [ds[i]["target"] for i in range(3)] == [0, 5, 9]
    sample = ds[1]
    assert "ms" not in sample and sample["rgb"].shape == (3, 64, 64)
    jpg = np.asarray(Image.open(DATA_DIR / "eurosat_rgb_sample/Pasture/Pasture_300.jpg").convert("RGB"))
    np.testing.assert_array_equal(sample["rgb"].numpy().transpose(1, 2, 0), jpg)
    with pytest.raises(ValueError, match="RGB-only"):
        get_dataset("eurosat_rgb", DATA_DIR / "eurosat_rgb_sample", "all", ms_transform=lambda x: x)


# ---------------------------------------------------------------- constructed layouts and bad input

def _copy_tiles(root: Path, names: list[str]) -> None:
    for name in names:
        cls = name.rsplit("_", 1)[0]
        (root / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(MS / cls / name, root / cls / name)


@pytest.fixture
def small_root(tmp_path):
    names = ["AnnualCrop_1.tif", "Forest_1.tif", "SeaLake_3000.tif"]
    _copy_tiles(tmp_path, names)
    (tmp_path / "eurosat-test.txt").write_text("".join(n.replace(".tif", ".jpg") + "\n" for n in names))
    return tmp_path


def _write_tif(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1],
                       count=array.shape[0], dtype=array.dtype, transform=Affine(10, 0, 0, 0, -10, 0)) as f:
        f.write(array)


def test_torchgeo_layout_and_jpg_names_in_split_file(small_root, tmp_path_factory):
    ds = get_dataset("eurosat_ms", small_root, "test")
    assert len(ds) == 3 and {ds.target(i) for i in range(3)} == {0, 1, 9}
    tg_root = tmp_path_factory.mktemp("tg")
    shutil.copytree(small_root, tg_root / "ds/images/remote_sensing/otherDatasets/sentinel_2/tif",
                    ignore=shutil.ignore_patterns("*.txt"))
    shutil.copy(small_root / "eurosat-test.txt", tg_root / "eurosat-test.txt")
    tg = get_dataset("eurosat_ms", tg_root, "test")
    assert [r.id for r in tg.records] == [r.id for r in ds.records]
    torch.testing.assert_close(tg[2]["ms"], ds[2]["ms"], rtol=0, atol=0)


def test_missing_root_and_split_file_say_how_to_get_the_data(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="download=True"):
        get_dataset("eurosat_ms", tmp_path / "nowhere", "train")
    with pytest.raises(DatasetNotFoundError, match="<Class>"):
        get_dataset("eurosat_ms", tmp_path, "train")
    _copy_tiles(tmp_path, ["AnnualCrop_1.tif"])
    with pytest.raises(DatasetNotFoundError, match="eurosat-train.txt"):
        get_dataset("eurosat_ms", tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split"):
        get_dataset("eurosat_ms", MS, "validation")


def test_file_listed_in_split_but_missing(small_root):
    with (small_root / "eurosat-test.txt").open("a") as f:
        f.write("River_77.tif\n")
    with pytest.raises(MissingFileError, match="River_77"):
        get_dataset("eurosat_ms", small_root, "test")
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = get_dataset("eurosat_ms", small_root, "test", on_error="skip")
    assert len(ds) == 3 and len(ds.skipped) == 1 and ds.skipped[0].path.name == "River_77.tif"


def _bad_tile(kind: str) -> np.ndarray:
    good = np.full((13, 64, 64), 1000, dtype=np.uint16)
    if kind == "bands":
        return good[:12]
    if kind == "dtype":
        return good.astype(np.int32)
    if kind == "shape":
        return good[:, :32, :]
    if kind == "nan":
        bad = good.astype(np.float32)
        bad[3, 5, 5] = np.nan
        return bad
    raise ValueError(kind)


@pytest.mark.parametrize("kind,error,match", [
    ("bands", BandCountError, "12 bands, expected 13"),
    ("dtype", DTypeError, "int32, expected uint16"),
    ("shape", ShapeError, "32x64 px, expected 64x64"),
    ("nan", NonFiniteError, "1 NaN"),
    ("truncated", CorruptFileError, "truncated or corrupt"),
    ("garbage", CorruptFileError, "truncated or corrupt"),
])
def test_bad_tiles_raise_a_named_error_or_are_skipped(small_root, kind, error, match):
    path = small_root / "AnnualCrop" / "AnnualCrop_1.tif"
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:60000])
    elif kind == "garbage":
        path.write_bytes(b"not a tiff" * 100)
    else:
        _write_tif(path, _bad_tile(kind))
    ds = get_dataset("eurosat_ms", small_root, "test")
    index = [r.id for r in ds.records].index("AnnualCrop_1")
    with pytest.raises(error, match=match) as info:
        ds[index]
    assert info.value.path == path and str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.warns(UserWarning, match="skipped 1"):
        skipping = get_dataset("eurosat_ms", small_root, "test", on_error="skip")
    assert len(skipping) == 2 and [s.path for s in skipping.skipped] == [path]
    assert "AnnualCrop_1" not in [skipping[i]["id"] for i in range(len(skipping))]


def test_unknown_class_folder_and_misfiled_tile(small_root):
    _copy_tiles(small_root, ["River_13.tif"])
    (small_root / "River").rename(small_root / "Rivers")
    with pytest.raises(UnknownClassError, match="Rivers.*not a class folder"):
        get_dataset("eurosat_ms", small_root, "test")
    with pytest.warns(UserWarning):
        ds = get_dataset("eurosat_ms", small_root, "test", on_error="skip")
    assert len(ds) == 3 and ds.skipped[0].path.name == "Rivers"
    shutil.rmtree(small_root / "Rivers")
    forest = next((small_root / "Forest").glob("*.tif"))
    forest.rename(small_root / "SeaLake" / forest.name)
    with pytest.raises(LabelError, match="does not start with its folder's class"):
        get_dataset("eurosat_ms", small_root, "test")


def test_corrupt_jpeg_in_eurosat_rgb(tmp_path):
    shutil.copytree(DATA_DIR / "eurosat_rgb_sample", tmp_path / "rgb")
    jpg = tmp_path / "rgb/Pasture/Pasture_300.jpg"
    jpg.write_bytes(jpg.read_bytes()[:300])
    ds = get_dataset("eurosat_rgb", tmp_path / "rgb", "all")
    with pytest.raises(CorruptFileError, match="Pasture_300.jpg"):
        ds[1]
    with pytest.warns(UserWarning):
        assert len(get_dataset("eurosat_rgb", tmp_path / "rgb", "all", on_error="skip")) == 2


def test_download_delegates_to_torchgeo_and_reads_its_layout(tmp_path, monkeypatch):
    import torchgeo.datasets

    calls = []

    class FakeTorchgeoEuroSAT:  # stands in for the network download; writes torchgeo's layout
        def __init__(self, root, split, download, checksum):
            calls.append((root, split, download, checksum))
            base = Path(root) / "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
            _copy_tiles(base, ["Highway_1.tif"])
            names = [p.name for p in base.glob("*/*.tif")]
            (Path(root) / f"eurosat-{split}.txt").write_text("".join(n.replace(".tif", ".jpg") + "\n" for n in names))

    monkeypatch.setattr(torchgeo.datasets, "EuroSAT", FakeTorchgeoEuroSAT)
    ds = get_dataset("eurosat_ms", tmp_path, "val", download=True)
    assert calls == [(str(tmp_path), "val", True, True)]
    assert len(ds) == 1 and ds.target(0) == EUROSAT_CLASSES.index("Highway")


def test_batches_collate_with_the_default_collate():
    loader = torch.utils.data.DataLoader(get_dataset("eurosat_ms", MS, "test"), batch_size=8, shuffle=False)
    batch = next(iter(loader))
    assert batch["ms"].shape == (8, 13, 64, 64) and batch["rgb"].shape == (8, 3, 64, 64)
    assert batch["target"].dtype == torch.int64 and len(batch["id"]) == 8


def test_broken_symbolic_link_among_tiles_is_named_and_listed_when_skipped(small_root, tmp_path_factory):
    link = small_root / "Forest" / "Forest_2.tif"
    link.symlink_to(tmp_path_factory.mktemp("gone") / "Forest_2.tif")
    ds = get_dataset("eurosat_ms", small_root, "all")
    assert "Forest_2" in [r.id for r in ds.records]
    with pytest.raises(MissingFileError, match="Forest_2.tif: file not found.*broken symbolic link"):
        ds[[r.id for r in ds.records].index("Forest_2")]
    with pytest.warns(UserWarning, match="skipped 1"):
        skipping = get_dataset("eurosat_ms", small_root, "all", on_error="skip")
    assert len(skipping) == 3 and [s.path for s in skipping.skipped] == [link]
    assert "broken symbolic link" in skipping.skipped[0].reason


def test_a_bad_tile_read_in_a_dataloader_worker_keeps_its_error_type_and_path(small_root):
    path = small_root / "Forest" / "Forest_1.tif"
    path.write_bytes(b"not a tiff" * 100)
    loader = torch.utils.data.DataLoader(get_dataset("eurosat_ms", small_root, "test"), batch_size=3, num_workers=1)
    with pytest.raises(CorruptFileError) as info:
        next(iter(loader))
    assert info.value.path == path and str(info.value).startswith(f"{path}: cannot be decoded as a GeoTIFF")

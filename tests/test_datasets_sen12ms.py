"""SEN12MS reader on a tiny file set in torchgeo's layout, written by the test."""
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

from mtmg.data import prompts
from mtmg.data.datasets import BandCountError, DatasetNotFoundError, LabelError, MissingFileError, get_dataset
from mtmg.data.datasets.sen12ms import IGBP_TO_SIMPLIFIED, SEN12MS_CLASSES
from mtmg.data.sentinel2 import ms_view

SIDE = 256


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=SIDE, height=SIDE, count=array.shape[0],
                       dtype=array.dtype, compress="deflate", transform=Affine(10, 0, 0, 0, -10, 0)) as f:
        f.write(array)


def _igbp(parts: dict[int, float]) -> np.ndarray:
    """A land-cover patch whose band 1 has the given share of each IGBP code (row blocks)."""
    codes = np.concatenate([np.full(round(share * SIDE * SIDE), code, dtype=np.uint16)
                            for code, share in parts.items()])
    lc = np.zeros((4, SIDE, SIDE), dtype=np.uint16)
    lc[0] = codes.reshape(SIDE, SIDE)
    lc[1:] = 7  # LCCS layers are not used
    return lc


PATCHES = {  # name: (IGBP shares, expected simplified classes at threshold 0.1)
    "ROIs1158_spring_s2_1_p30": ({1: 0.375, 4: 0.25, 12: 0.25, 14: 0.0625, 17: 0.0625}, ["Forest", "Croplands"]),
    "ROIs1868_summer_s2_2_p7": ({17: 1.0}, ["Water"]),
    "ROIs2017_winter_s2_3_p1": ({0: 0.5, 10: 0.5}, ["Grassland"]),  # 0 = no IGBP code, ignored
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sen12ms")
    rng = np.random.default_rng(0)
    for name, (shares, _) in PATCHES.items():
        season, scene = "_".join(name.split("_")[:2]), name.split("_")[3]
        _write(root / season / f"s2_{scene}" / f"{name}.tif", rng.integers(0, 12000, (13, SIDE, SIDE), dtype=np.uint16))
        _write(root / season / f"lc_{scene}" / f"{name.replace('_s2_', '_lc_')}.tif", _igbp(shares))
    (root / "test_list.txt").write_text("".join(f"{n}.tif\n" for n in PATCHES))
    return root


def test_targets_are_simplified_igbp_multi_hot(root):
    ds = get_dataset("sen12ms", root, "test")
    assert ds.multilabel and ds.classes == SEN12MS_CLASSES and len(ds) == 3
    for i, (name, (_, expected)) in enumerate(PATCHES.items()):
        assert ds.records[i].id == name
        target = ds[i]["target"]
        assert target.dtype == torch.float32 and target.shape == (10,)
        assert [SEN12MS_CLASSES[j] for j in torch.nonzero(target).flatten()] == expected
    low = get_dataset("sen12ms", root, "test", threshold=0.05)
    assert [SEN12MS_CLASSES[j] for j in torch.nonzero(low.target(0)).flatten()] == ["Forest", "Croplands", "Water"]


def test_simplified_scheme_merges_the_17_igbp_classes():
    assert sorted(IGBP_TO_SIMPLIFIED) == list(range(1, 18))
    merged = {SEN12MS_CLASSES[v]: sorted(k for k, w in IGBP_TO_SIMPLIFIED.items() if w == v) for v in range(10)}
    assert merged == {"Forest": [1, 2, 3, 4, 5], "Shrubland": [6, 7], "Savanna": [8, 9], "Grassland": [10],
                      "Wetlands": [11], "Croplands": [12, 14], "Urban/Built-up": [13], "Snow/Ice": [15],
                      "Barren": [16], "Water": [17]}
    assert prompts.classnames("sen12ms")[2] == "savanna" and len(prompts.classnames("sen12ms")) == 10


def test_views_come_from_the_13_band_file(root):
    ds = get_dataset("sen12ms", root, "test")
    sample = ds[1]
    with rasterio.open(ds.records[1].files["s2"]) as f:
        raw = f.read()
    torch.testing.assert_close(sample["ms"], ms_view(raw), rtol=0, atol=0)
    assert sample["rgb"].shape == (3, SIDE, SIDE) and ds.level == "L1C"


def test_bad_inputs(root, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="carve_validation"):
        get_dataset("sen12ms", root, "val")
    listing = tmp_path / "list.txt"
    listing.write_text("ROIs1158_spring_s2_1_p30.tif\nROIs1158_spring_s2_1_p999.tif\n")
    with pytest.raises(MissingFileError, match="p999"):
        get_dataset("sen12ms", root, "test", split_file=listing)
    listing.write_text("ROIs1158_spring_s2_1_p30.tif\nsomething.tif\n")
    with pytest.raises(LabelError, match="something.tif"):
        get_dataset("sen12ms", root, "test", split_file=listing)
    with pytest.warns(UserWarning, match="skipped 1"):
        assert len(get_dataset("sen12ms", root, "test", split_file=listing, on_error="skip")) == 1

    bad = tmp_path / "bad"
    name = "ROIs1970_fall_s2_5_p2"
    _write(bad / "ROIs1970_fall/s2_5" / f"{name}.tif", np.ones((12, SIDE, SIDE), dtype=np.uint16))
    _write(bad / "ROIs1970_fall/lc_5" / "ROIs1970_fall_lc_5_p2.tif", np.zeros((4, SIDE, SIDE), dtype=np.uint16))
    (bad / "test_list.txt").write_text(f"{name}.tif\n")
    with pytest.raises(BandCountError, match="12 bands, expected 13"):
        get_dataset("sen12ms", bad, "test")[0]
    _write(bad / "ROIs1970_fall/s2_5" / f"{name}.tif", np.ones((13, SIDE, SIDE), dtype=np.uint16))
    with pytest.raises(LabelError, match="no valid IGBP code"):
        get_dataset("sen12ms", bad, "test")[0]


def test_b10_zeroed_on_request_and_composite_selectable(root):
    from mtmg.data.sentinel2 import band_index, rgb_composite

    real = get_dataset("sen12ms", root, "test")
    zeroed = get_dataset("sen12ms", root, "test", b10="zero")
    b10 = band_index("B10")
    raw_real, raw_zero = real.raw(0)[0], zeroed.raw(0)[0]
    assert raw_real[b10].any() and not raw_zero[b10].any()
    others = [i for i in range(13) if i != b10]
    np.testing.assert_array_equal(raw_real[others], raw_zero[others])
    assert not zeroed[0]["ms"][b10].any() and real[0]["ms"][b10].any()
    assert real.level == "L1C"
    authors = get_dataset("sen12ms", root, "test", composite="L2A")
    np.testing.assert_array_equal(authors[0]["rgb"].numpy().transpose(1, 2, 0), rgb_composite(raw_real, "L2A"))
    assert not np.array_equal(real[0]["rgb"].numpy(), authors[0]["rgb"].numpy())
    with pytest.raises(ValueError, match="b10"):
        get_dataset("sen12ms", root, "test", b10="drop")
    with pytest.raises(ValueError, match="composite"):
        get_dataset("sen12ms", root, "test", composite="L3")


def test_student_trained_without_b10_reads_sen12ms_without_it(root):
    from mtmg.core.config import DataSpec
    from mtmg.data.sentinel2 import band_index, band_metadata, evaluation_spec

    def reader(level):
        return type("Reader", (), {"level": level})()

    wrapped = type("Subset", (), {"dataset": reader("L2A")})()  # a subset of a BigEarthNet-like L2A set
    trained_without = band_metadata(wrapped)
    assert trained_without["zero_filled"] == ["B10"]
    spec = DataSpec(name="sen12ms", root=str(root))
    chosen = evaluation_spec(spec, trained_without)
    assert chosen.options == {"b10": "zero"}
    assert not get_dataset("sen12ms", root, "test", **chosen.options)[0]["ms"][band_index("B10")].any()
    kept = DataSpec(name="sen12ms", root=str(root), options={"b10": "real"})
    assert evaluation_spec(kept, trained_without) == kept
    assert evaluation_spec(spec, band_metadata(reader("L1C"))) == spec

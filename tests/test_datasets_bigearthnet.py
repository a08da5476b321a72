"""BigEarthNet v1 and v2 readers on the shipped real patches."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch

from mtmg.core.paths import DATA_DIR
from mtmg.data import prompts
from mtmg.data.datasets import (
    DatasetNotFoundError,
    InvalidSampleError,
    LabelError,
    MissingFileError,
    ShapeError,
    get_dataset,
)
from mtmg.data.datasets.bigearthnet import (
    CLASSES_19,
    CLASSES_43,
    LABEL_CONVERTER_43_TO_5,
    LABEL_CONVERTER_43_TO_19,
    LEVEL1_CLASSES,
    native_size,
)
from mtmg.data.sentinel2 import BIGEARTHNET_S2_BANDS, band_index, rgb_composite

SAMPLE = DATA_DIR / "bigearthnet_sample"
V1 = SAMPLE / "v1"
V2 = SAMPLE / "v2"
V1_TO_V2 = json.loads((SAMPLE / "v2_metadata_labels.json").read_text())["v1_example_patches_mapped_to_v2"]


def _read_band(folder: Path, band: str) -> np.ndarray:
    with rasterio.open(folder / f"{folder.name}_{band}.tif") as f:
        return f.read(1)


def _all_v1(name: str = "bigearthnet19", **kw):
    return [get_dataset(name, V1, split, **kw) for split in ("train", "val", "test")]


def test_v1_sample_split_covers_the_six_patches_once():
    ids = [r.id for ds in _all_v1() for r in ds.records]
    assert sorted(ids) == sorted(V1_TO_V2) and len(ids) == 6
    v2_split = {"train": "train", "val": "validation", "test": "test"}
    for split, ds in zip(("train", "val", "test"), _all_v1()):
        for r in ds.records:
            row = V1_TO_V2[r.id]
            assert row is None or row["split"] == v2_split[split]


def test_v1_bands_are_resampled_to_120_and_reordered():
    ds = get_dataset("bigearthnet19", V1, "test")
    array13, _, patch = ds.raw(0)
    folder = V1 / "BigEarthNet-S2-Example" / patch
    assert array13.shape == (13, 120, 120) and array13.dtype == np.uint16
    assert (array13[band_index("B10")] == 0).all()
    for band in BIGEARTHNET_S2_BANDS:
        native = _read_band(folder, band)
        assert native.shape == native_size(band)
        resampled = array13[band_index(band)].astype(float)
        if native.shape == (120, 120):
            np.testing.assert_array_equal(resampled, native)
        else:  # bilinear upsampling keeps the mean and the block structure
            k = 120 // native.shape[0]
            assert abs(resampled.mean() - native.mean()) < 0.02 * native.mean() + 2
            blocks = resampled.reshape(native.shape[0], k, native.shape[1], k).mean(axis=(1, 3))
            assert np.corrcoef(blocks.ravel(), native.ravel().astype(float))[0, 1] > 0.9
    sample = ds[0]
    assert sample["ms"].shape == (13, 120, 120) and sample["rgb"].shape == (3, 120, 120)
    np.testing.assert_array_equal(sample["rgb"].numpy().transpose(1, 2, 0), rgb_composite(array13, "L2A"))
    assert sample["target"].dtype == torch.float32 and sample["target"].shape == (19,)


def test_v1_s1_extra_key():
    ds = get_dataset("bigearthnet19", V1, "train", s1=True)
    sample = ds[0]
    s1_folder = V1 / "BigEarthNet-S1-Example" / ds.records[0].files["s1"].name
    meta = json.loads((s1_folder / f"{s1_folder.name}_labels_metadata.json").read_text())
    assert meta["corresponding_s2_patch"] == sample["id"]
    assert sample["s1"].shape == (2, 120, 120) and sample["s1"].dtype == torch.float32
    np.testing.assert_array_equal(sample["s1"][0].numpy(), _read_band(s1_folder, "VV"))
    np.testing.assert_array_equal(sample["s1"][1].numpy(), _read_band(s1_folder, "VH"))
    assert "s1" not in get_dataset("bigearthnet19", V1, "train")[0]


def test_v1_19_class_labels_agree_with_the_v2_table():
    checked = 0
    for ds in _all_v1():
        for i, record in enumerate(ds.records):
            row = V1_TO_V2[record.id]
            if row is None:  # dropped in v2
                continue
            expected = torch.zeros(19)
            expected[[CLASSES_19.index(n) for n in row["labels"]]] = 1
            torch.testing.assert_close(ds.target(i), expected)
            checked += 1
    assert checked == 5


def test_v1_43_and_5_class_targets_come_from_the_json():
    ds43 = get_dataset("bigearthnet43", V1, "train")
    ds5 = get_dataset("bigearthnet5", V1, "train")
    for i, record in enumerate(ds43.records):
        names = json.loads((record.files["s2"] / f"{record.id}_labels_metadata.json").read_text())["labels"]
        idx = [CLASSES_43.index(n) for n in names]
        assert torch.nonzero(ds43.target(i)).flatten().tolist() == sorted(idx)
        assert torch.nonzero(ds5.target(i)).flatten().tolist() == sorted({LABEL_CONVERTER_43_TO_5[j] for j in idx})
    assert ds5.classes == LEVEL1_CLASSES and ds43.classes == CLASSES_43


def test_level1_grouping_is_consistent_with_the_19_class_converter():
    assert sorted(LABEL_CONVERTER_43_TO_5) == list(range(43))
    level_of_19 = {0: 0, 1: 0, **{i: 1 for i in range(2, 8)}, **{i: 2 for i in range(8, 15)},
                   15: 3, 16: 3, 17: 4, 18: 4}
    for i43, i19 in LABEL_CONVERTER_43_TO_19.items():
        assert LABEL_CONVERTER_43_TO_5[i43] == level_of_19[i19], CLASSES_43[i43]
    assert CLASSES_43[LABEL_CONVERTER_43_TO_5.__len__() - 1] == "Sea and ocean"
    assert [CLASSES_43[i] for i, lvl in LABEL_CONVERTER_43_TO_5.items() if lvl == 3] == [
        "Inland marshes", "Peatbogs", "Salt marshes", "Salines", "Intertidal flats"]


ANCHORS = {
    "bigearthnet43": (CLASSES_43, {
        "Continuous urban fabric": "continuous urban fabric", "Road and rail networks and associated land":
        "road and rail networks", "Complex cultivation patterns": "a patchwork of small mixed crop fields",
        "Peatbogs": "peat bogs", "Water bodies": "lakes or water bodies", "Sea and ocean": "sea or ocean"}),
    "bigearthnet19": (CLASSES_19, {
        "Urban fabric": "urban fabric or residential buildings", "Arable land": "arable land",
        "Pastures": "pastures", "Coniferous forest": "coniferous forest", "Inland waters": "inland waters",
        "Marine waters": "sea or ocean"}),
    "bigearthnet5": (LEVEL1_CLASSES, {
        "Artificial surfaces": "artificial surfaces such as buildings or roads",
        "Agricultural areas": "agricultural areas", "Forest and semi natural areas":
        "forest or semi-natural vegetation", "Wetlands": "wetlands", "Water bodies": "water bodies"}),
}


@pytest.mark.parametrize("key", sorted(ANCHORS))
def test_prompt_names_follow_the_label_order(key):
    classes, anchors = ANCHORS[key]
    names = prompts.classnames(key)
    assert len(names) == len(classes) and len(set(names)) == len(names)
    for original, readable in anchors.items():
        assert names[classes.index(original)] == readable
    assert all("{c}" in t for t in prompts.templates(key))


def test_v2_json_sample_reads_train_and_skips_missing_patches():
    train = get_dataset("bigearthnet_v2", V2, "train")
    assert [r.id for r in train.records] == ["S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_89_18"]
    sample = train[0]
    expected = torch.zeros(19)
    expected[[CLASSES_19.index(n) for n in ("Coniferous forest", "Mixed forest", "Pastures")]] = 1
    torch.testing.assert_close(sample["target"], expected)
    assert sample["ms"].shape == (13, 120, 120)
    with pytest.raises(MissingFileError, match="_70_48"):
        get_dataset("bigearthnet_v2", V2, "val")
    with pytest.warns(UserWarning, match="skipped 1"):
        val = get_dataset("bigearthnet_v2", V2, "val", on_error="skip")
    assert [r.id[-5:] for r in val.records] == ["75_43"] and len(val.skipped) == 1


def test_v2_parquet_metadata_and_s1(tmp_path):
    rows = json.loads((SAMPLE / "v2_metadata_labels.json").read_text())["v2_patches"]
    df = pd.DataFrame(list(rows.values()))
    df.loc[df.patch_id.str.endswith("75_43"), "split"] = "test"
    path = tmp_path / "metadata.parquet"
    df.to_parquet(path)
    with pytest.warns(UserWarning, match="26_57"):  # the test patch of the metadata is not shipped
        from_parquet = get_dataset("bigearthnet_v2", V2, "test", metadata=path, on_error="skip")
    with pytest.warns(UserWarning, match="70_48"):
        from_json = get_dataset("bigearthnet_v2", V2, "val", on_error="skip")
    assert [r.id for r in from_parquet.records] == [r.id for r in from_json.records]
    torch.testing.assert_close(from_parquet[0]["ms"], from_json[0]["ms"], rtol=0, atol=0)
    torch.testing.assert_close(from_parquet[0]["target"], from_json[0]["target"])
    # the one v2 S1 patch belongs to 70_48, whose S2 folder is not shipped; build a root where both exist
    root = tmp_path / "v2"
    s2_src = V2 / "BigEarthNet-S2/S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
    s2_dst = root / "BigEarthNet-S2" / s2_src.name / (s2_src.name + "_70_48")
    s2_dst.mkdir(parents=True)
    for f in (s2_src / (s2_src.name + "_75_43")).iterdir():
        shutil.copy(f, s2_dst / f.name.replace("_75_43", "_70_48"))
    shutil.copytree(V2 / "BigEarthNet-S1", root / "BigEarthNet-S1")
    df.loc[df.patch_id.str.endswith("70_48"), "split"] = "train"
    df.to_parquet(root / "metadata.parquet")
    with pytest.warns(UserWarning):
        ds = get_dataset("bigearthnet_v2", root, "train", s1=True, on_error="skip")
    assert [r.id[-5:] for r in ds.records] == ["70_48"]
    assert ds[0]["s1"].shape == (2, 120, 120)


def test_v1_bad_inputs(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="BigEarthNet-v1.0"):
        get_dataset("bigearthnet19", tmp_path, "train")
    root = tmp_path / "v1"
    shutil.copytree(V1, root)
    with pytest.raises(DatasetNotFoundError, match="bigearthnet-train.csv"):
        get_dataset("bigearthnet19", root, "train")
    shutil.copy(DATA_DIR / "splits/bigearthnet_v1_sample-train.csv", root / "bigearthnet-train.csv")
    patch = "S2A_MSIL2A_20170613T101031_87_48"
    folder = root / "BigEarthNet-S2-Example" / patch
    label_file = folder / f"{patch}_labels_metadata.json"
    meta = json.loads(label_file.read_text())
    meta["labels"].append("Lunar regolith")
    label_file.write_text(json.dumps(meta))
    ds = get_dataset("bigearthnet19", root, "train")
    with pytest.raises(LabelError, match="Lunar regolith"):
        ds.target(0)
    with rasterio.open(folder / f"{patch}_B05.tif") as f:
        profile, data = f.profile, f.read()
    profile.update(width=120, height=120)
    with rasterio.open(folder / f"{patch}_B05.tif", "w", **profile) as f:
        f.write(np.repeat(np.repeat(data, 2, axis=1), 2, axis=2))
    with pytest.warns(UserWarning, match="skipped 1"):
        skipping = get_dataset("bigearthnet19", root, "train", on_error="skip")
    assert len(skipping) == 3 and skipping.skipped[0].path.name.endswith("_labels_metadata.json")
    label_file.write_text(json.dumps({**meta, "labels": meta["labels"][:-1]}))
    with pytest.raises(ShapeError, match="B05.tif: is 120x120 px, expected 60x60"):
        get_dataset("bigearthnet19", root, "train")[0]
    shutil.rmtree(root / "BigEarthNet-S2-Example" / "S2A_MSIL2A_20170617T113321_4_55")
    with pytest.raises(MissingFileError, match="4_55"):
        get_dataset("bigearthnet19", root, "train")


def _v1_copy(tmp_path):
    root = tmp_path / "v1"
    shutil.copytree(V1, root)
    shutil.copy(DATA_DIR / "splits/bigearthnet_v1_sample-train.csv", root / "bigearthnet-train.csv")
    patch = "S2A_MSIL2A_20170613T101031_87_48"
    return root, root / "BigEarthNet-S2-Example" / patch / f"{patch}_labels_metadata.json"


@pytest.mark.parametrize("content, message", [
    (b'{"labels": null}', '"labels" is null; expected'),
    (b'{"labels": "Pastures"}', '"labels" is "Pastures"; expected'),
    (b'["Pastures"]', '"labels" is null; expected'),
    (b'{"labels": ["Past', "is not valid JSON"),
    ('{"labels": ["Pâturages"]}'.encode("latin-1"), "is not UTF-8 text"),
])
def test_v1_malformed_label_file_names_it_and_can_be_skipped(tmp_path, content, message):
    root, label_file = _v1_copy(tmp_path)
    label_file.write_bytes(content)
    ds = get_dataset("bigearthnet19", root, "train")
    with pytest.raises(InvalidSampleError, match=message) as info:
        ds[0]
    assert info.value.path == label_file and str(label_file) in str(info.value)
    with pytest.warns(UserWarning, match="skipped 1"):
        skipping = get_dataset("bigearthnet19", root, "train", on_error="skip")
    assert len(skipping) == 3 and [s.path for s in skipping.skipped] == [label_file]


@pytest.mark.parametrize("content, message", [
    (b'{"v2_patches": {', "is not valid JSON"),
    (b'\xff\xfe{}', "is not UTF-8 text"),
    (b'{"v2_patches": [1, 2]}', "'v2_patches' mapping"),
])
def test_v2_malformed_metadata_names_the_file(tmp_path, content, message):
    meta = tmp_path / "v2_metadata_labels.json"
    meta.write_bytes(content)
    with pytest.raises(InvalidSampleError, match=message) as info:
        get_dataset("bigearthnet_v2", V2, "train", metadata=meta)
    assert str(meta) in str(info.value)


def test_v2_labels_that_are_not_a_list_are_a_row_problem(tmp_path):
    content = json.loads((SAMPLE / "v2_metadata_labels.json").read_text())
    row = next(r for r in content["v2_patches"].values() if r["split"] == "train")
    row["labels"] = "Pastures"
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(content))
    with pytest.raises(LabelError, match="labels are 'Pastures'; expected a list"):
        get_dataset("bigearthnet_v2", V2, "train", metadata=meta)


def test_v2_corrupt_parquet_names_the_file(tmp_path):
    meta = tmp_path / "metadata.parquet"
    meta.write_bytes(b"PAR1 not really")
    with pytest.raises(LabelError, match="metadata.parquet: cannot be read as a parquet table"):
        get_dataset("bigearthnet_v2", V2, "train", metadata=meta)

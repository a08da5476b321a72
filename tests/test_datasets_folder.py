"""RGB class-folder readers (folder, RESISC45), the registry and carve_validation."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtmg.core.paths import DATA_DIR
from mtmg.data import prompts
from mtmg.data.datasets import (
    DATASET_NAMES,
    CorruptFileError,
    DatasetNotFoundError,
    LabelError,
    ShapeError,
    UnknownClassError,
    carve_validation,
    dataset_class,
    get_dataset,
)
from mtmg.data.datasets.folder import RESISC45_CLASSES


def _image(path: Path, value: int, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture
def folder_root(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for k, cls in enumerate(["sea_ice", "forest", "desert"]):
            for i in range(n):
                _image(tmp_path / split / cls / f"{cls}{i}.png", 40 * k + i)
    _image(tmp_path / "val" / "meadow" / "m0.png", 250)  # a class only present in val
    return tmp_path


def test_folder_labels_agree_across_splits(folder_root):
    train = get_dataset("folder", folder_root, "train")
    val = get_dataset("folder", folder_root, "val")
    assert train.classes == val.classes == ["desert", "forest", "meadow", "sea_ice"]
    assert len(train) == 9 and len(val) == 7
    sample = train[0]
    assert set(sample) == {"rgb", "target", "id"} and sample["rgb"].shape == (3, 16, 16)
    assert train.classes[sample["target"]] == "desert" and sample["id"] == "desert0"
    names, templates = prompts.for_dataset(train)
    assert names == ["desert", "forest", "meadow", "sea ice"] and templates == prompts.templates("folder")
    with pytest.raises(DatasetNotFoundError, match="test"):
        get_dataset("folder", folder_root, "test")


def test_folder_reads_clip_benchmark_prompt_files(folder_root):
    (folder_root / "classnames.txt").write_text("sand desert\nwoods\ngrass meadow\nfrozen sea\n")
    (folder_root / "zeroshot_classification_templates.txt").write_text("a rendering of {c}.\n")
    ds = get_dataset("folder", folder_root, "train")
    assert prompts.for_dataset(ds) == (["sand desert", "woods", "grass meadow", "frozen sea"], ["a rendering of {c}."])
    (folder_root / "classnames.txt").write_text("only one\n")
    with pytest.raises(LabelError, match="1 names for 4 class folders"):
        get_dataset("folder", folder_root, "train")


def test_folder_transform_and_bad_image(folder_root):
    ds = get_dataset("folder", folder_root, "train", rgb_transform=lambda img: np.asarray(img).mean())
    assert ds[3]["rgb"] == pytest.approx(40.0)
    (folder_root / "train/forest/forest1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(CorruptFileError, match="forest1.png"):
        get_dataset("folder", folder_root, "train")[4]
    with pytest.warns(UserWarning, match="skipped 1"):
        skipping = get_dataset("folder", folder_root, "train", on_error="skip")
    assert len(skipping) == 8 and skipping.skipped[0].path.name == "forest1.png"


def test_resisc45_torchgeo_layout(tmp_path):
    assert len(RESISC45_CLASSES) == 45 and RESISC45_CLASSES[2] == "baseball_diamond"
    assert prompts.classnames("resisc45") == [c.replace("_", " ") for c in RESISC45_CLASSES]
    base = tmp_path / "NWPU-RESISC45"
    _image(base / "airport" / "airport_001.jpg", 10, 256)
    _image(base / "wetland" / "wetland_700.jpg", 20, 256)
    _image(base / "wetland" / "wetland_001.jpg", 20, 64)
    (tmp_path / "resisc45-test.txt").write_text("airport_001.jpg\nwetland_700.jpg\nwetland_001.jpg\n")
    ds = get_dataset("resisc45", tmp_path, "test")
    assert [r.id for r in ds.records] == ["airport_001", "wetland_001", "wetland_700"]
    assert [ds[i]["target"] for i in (0, 2)] == [1, 44]
    with pytest.raises(ShapeError, match="64x64 px, expected 256x256"):
        ds[1]
    with pytest.raises(DatasetNotFoundError, match="resisc45-train.txt"):
        get_dataset("resisc45", tmp_path, "train")
    _image(base / "airports" / "airports_1.jpg", 10, 256)
    with pytest.raises(UnknownClassError, match="airports"):
        get_dataset("resisc45", tmp_path, "test")


def test_registry_names_and_errors():
    assert set(DATASET_NAMES) == {"eurosat_ms", "eurosat_rgb", "resisc45", "folder", "bigearthnet5", "bigearthnet19",
                                  "bigearthnet43", "bigearthnet_v2", "sen12ms", "shards", "synthetic"}
    for name in DATASET_NAMES:
        assert isinstance(dataset_class(name), type)
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("eurosat", DATA_DIR / "eurosat_ms_sample", "train")
    with pytest.raises(ValueError, match="on_error"):
        get_dataset("eurosat_ms", DATA_DIR / "eurosat_ms_sample", "train", on_error="ignore")


def test_carve_validation_is_disjoint_deterministic_and_keeps_attributes():
    ds = get_dataset("eurosat_ms", DATA_DIR / "eurosat_ms_sample", "train")
    train, val = carve_validation(ds, fraction=0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert set(train.indices).isdisjoint(val.indices) and set(train.indices) | set(val.indices) == set(range(100))
    assert list(val.indices) == sorted(val.indices)
    again_train, again_val = carve_validation(ds, fraction=0.1, seed=3)
    assert again_val.indices == val.indices
    assert carve_validation(ds, fraction=0.1, seed=4)[1].indices != val.indices
    assert val.classes == ds.classes and val.prompt_key == "eurosat" and val.multilabel is False
    assert prompts.for_dataset(val) == prompts.for_dataset(ds)
    torch.testing.assert_close(val[0]["ms"], ds[val.indices[0]]["ms"])
    assert len(carve_validation(ds, fraction=0.5, max_size=7)[1]) == 7
    with pytest.raises(ValueError, match="fraction"):
        carve_validation(ds, fraction=1.5)


def test_broken_symbolic_link_in_a_class_folder_is_listed_when_skipped(folder_root, tmp_path_factory):
    link = folder_root / "train" / "forest" / "forest9.png"
    link.symlink_to(tmp_path_factory.mktemp("gone") / "forest9.png")
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = get_dataset("folder", folder_root, "train", on_error="skip")
    assert len(ds) == 9 and [s.path for s in ds.skipped] == [link]
    assert "broken symbolic link" in ds.skipped[0].reason


def test_unknown_dataset_is_an_argument_error():
    from mtmg.core.errors import ArgumentError

    with pytest.raises(ArgumentError, match="unknown dataset 'eurosat'; expected one of eurosat_ms, "):
        get_dataset("eurosat", DATA_DIR / "eurosat_ms_sample", "train")

"""WebDataset shards: writing in CLIP_benchmark's layout and reading back identical samples."""
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds

from mtmg import prompts
from mtmg.datasets import (CorruptFileError, DatasetNotFoundError, DTypeError, MissingFileError, get_dataset,
                           write_shards)
from mtmg.datasets.shards import webdataset_pipeline
from mtmg.paths import DATA_DIR

MS = DATA_DIR / "eurosat_ms_sample"
BEN = DATA_DIR / "bigearthnet_sample" / "v1"


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a["id"] == b["id"]
    for key in ("rgb", "ms"):
        assert a[key].dtype == b[key].dtype
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    if isinstance(a["target"], torch.Tensor):
        torch.testing.assert_close(a["target"], b["target"], rtol=0, atol=0)
    else:
        assert type(a["target"]) is type(b["target"]) and a["target"] == b["target"]


@pytest.fixture(scope="module")
def eurosat_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_shards("eurosat_ms", MS, out, "val", samples_per_shard=16)
    return out


def test_layout_is_clip_benchmark_like(eurosat_shards):
    out = eurosat_shards
    assert (out / "classnames.txt").read_text().splitlines() == prompts.classnames("eurosat")
    assert (out / "zeroshot_classification_templates.txt").read_text().splitlines() == prompts.templates("eurosat")
    assert (out / "val/nshards.txt").read_text().strip() == "4"
    assert (out / "val/nsamples.txt").read_text().strip() == "50"
    assert sorted(p.name for p in (out / "val").glob("*.tar")) == ["0.tar", "1.tar", "2.tar", "3.tar"]
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["source"] == "eurosat_ms" and info["level"] == "L1C" and info["multilabel"] is False
    with tarfile.open(out / "val/0.tar") as tar:
        names = tar.getnames()
    assert sorted(names[:3]) == ["s0000000.cls", "s0000000.id.txt", "s0000000.npy"]
    assert len(names) == 16 * 3


def test_both_readers_give_the_source_samples(eurosat_shards):
    source = get_dataset("eurosat_ms", MS, "val")
    mapped = get_dataset("shards", eurosat_shards, "val")
    streamed = list(webdataset_pipeline(eurosat_shards, "val"))
    assert len(mapped) == len(streamed) == len(source) == 50
    assert mapped.classes == source.classes and mapped.prompt_key == "eurosat" and not mapped.multilabel
    assert prompts.for_dataset(mapped) == prompts.for_dataset(source)
    for i in range(len(source)):
        expected = source[i]
        _assert_same(mapped[i], expected)
        _assert_same(streamed[i], expected)
        raw, _, _ = source.raw(i)
        np.testing.assert_array_equal(mapped.raw(i)[0], raw)


def test_transforms_apply_to_shards_as_to_the_source(eurosat_shards):
    def rgb_t(img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32)).mean()

    def ms_t(x):
        return x[8] * 3

    source = get_dataset("eurosat_ms", MS, "val", rgb_t, ms_t)
    mapped = get_dataset("shards", eurosat_shards, "val", rgb_t, ms_t)
    streamed = next(iter(webdataset_pipeline(eurosat_shards, "val", rgb_t, ms_t)))
    for sample in (mapped[0], streamed):
        torch.testing.assert_close(sample["rgb"], source[0]["rgb"], rtol=0, atol=0)
        torch.testing.assert_close(sample["ms"], source[0]["ms"], rtol=0, atol=0)


def test_multilabel_round_trip(tmp_path):
    write_shards("bigearthnet19", BEN, tmp_path, "train", samples_per_shard=3)
    source = get_dataset("bigearthnet19", BEN, "train")
    mapped = get_dataset("shards", tmp_path, "train", cache=True)
    streamed = list(webdataset_pipeline(tmp_path, "train"))
    assert mapped.multilabel and mapped.level == "L2A" and mapped.classes == source.classes
    assert (tmp_path / "train/nshards.txt").read_text().strip() == "2"
    for i in range(len(source)):
        _assert_same(mapped[i], source[i])
        _assert_same(streamed[i], source[i])
    with pytest.raises(ValueError, match="different content"):
        write_shards("eurosat_ms", MS, tmp_path, "test")


def test_bad_shards(eurosat_shards, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="write_shards"):
        get_dataset("shards", tmp_path, "val")
    with pytest.raises(DatasetNotFoundError, match="nshards.txt"):
        get_dataset("shards", eurosat_shards, "train")
    with pytest.raises(ValueError, match="no multispectral view"):
        write_shards("eurosat_rgb", DATA_DIR / "eurosat_rgb_sample", tmp_path / "rgb", "all")

    broken = tmp_path / "broken"
    shutil.copytree(eurosat_shards, broken)
    (broken / "val/3.tar").unlink()
    with pytest.raises(MissingFileError, match="3.tar"):
        get_dataset("shards", broken, "val")
    with pytest.warns(UserWarning, match="skipped 1"):
        assert len(get_dataset("shards", broken, "val", on_error="skip")) == 48
    (broken / "val/2.tar").write_bytes(b"garbage" * 10)
    with pytest.raises(CorruptFileError, match="2.tar"):
        get_dataset("shards", broken, "val")

    wrong = tmp_path / "wrong"
    shutil.copytree(eurosat_shards, wrong)
    with wds.TarWriter(str(wrong / "val/0.tar")) as sink:
        for i in range(16):
            sink.write({"__key__": f"s{i:07d}", "npy": np.zeros((13, 4, 4), dtype=np.float32),
                        "id.txt": f"x{i}", "cls": 0})
    ds = get_dataset("shards", wrong, "val")
    with pytest.raises(DTypeError, match="float32, expected uint16"):
        ds[0]

"""WebDataset shards: writing in CLIP_benchmark's layout and reading back identical samples."""
import io
import json
import pickle
import shutil
import tarfile
import warnings

import numpy as np
import pytest
import torch
import webdataset as wds

from mtmg.core.paths import DATA_DIR
from mtmg.data import prompts
from mtmg.data.datasets import (
    CorruptFileError,
    DatasetNotFoundError,
    DTypeError,
    LabelError,
    MissingFileError,
    get_dataset,
)
from mtmg.data.datasets.shards import webdataset_pipeline, write_shards

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


class _Payload:
    """Unpickling this object creates ``path`` (what an attacker's code could do)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _plant(tar_path, key, members):
    """Rewrite ``tar_path`` with extra ``members`` (extension -> bytes) inside sample ``key``."""
    with tarfile.open(tar_path) as tar:
        entries = [(info, tar.extractfile(info).read()) for info in tar]
    with tarfile.open(tar_path, "w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data))
            if info.name == f"{key}.npy":
                for ext, payload in members.items():
                    planted = tarfile.TarInfo(f"{key}.{ext}")
                    planted.size = len(payload)
                    tar.addfile(planted, io.BytesIO(payload))


def test_streaming_a_shard_runs_no_planted_code(tmp_path):
    from mtmg.cli import main

    out = tmp_path / "shards"
    assert main(["shard", "--dataset", "eurosat_ms", "--root", str(MS), "--out", str(out), "--split", "test",
                 "--samples-per-shard", "25"]) == 0
    by_pickle, by_torch = tmp_path / "by_pickle", tmp_path / "by_torch"
    pth = io.BytesIO()
    torch.save({"state": _Payload(by_torch)}, pth)
    _plant(out / "test" / "0.tar", "s0000000", {"pyd": pickle.dumps(_Payload(by_pickle)), "pth": pth.getvalue()})
    with tarfile.open(out / "test" / "1.tar", "a") as tar:  # and a sample of its own, with only a pickle
        alone = pickle.dumps(_Payload(by_pickle))
        info = tarfile.TarInfo("s9999999.pyd")
        info.size = len(alone)
        tar.addfile(info, io.BytesIO(alone))
    with tarfile.open(out / "test" / "0.tar") as tar:
        assert {"s0000000.pyd", "s0000000.pth"} <= set(tar.getnames())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        streamed = list(webdataset_pipeline(out, "test"))
    assert not by_pickle.exists() and not by_torch.exists()
    assert any("ignoring member(s) s0000000.pth, s0000000.pyd" in str(w.message) for w in caught)
    source = get_dataset("eurosat_ms", MS, "test")
    assert len(streamed) == len(source) == 50
    for i in (0, 1, 49):
        _assert_same(streamed[i], source[i])
    mapped = get_dataset("shards", out, "test")
    assert len(mapped) == 50
    _assert_same(mapped[0], source[0])
    assert not by_pickle.exists() and not by_torch.exists()


def _rewrite(tar_path, name, data):
    """Replace member ``name`` of ``tar_path`` by ``data`` (None: drop it)."""
    with tarfile.open(tar_path) as tar:
        entries = [(info, tar.extractfile(info).read()) for info in tar]
    with tarfile.open(tar_path, "w") as tar:
        for info, content in entries:
            if info.name == name:
                if data is None:
                    continue
                content, info.size = data, len(data)
            tar.addfile(info, io.BytesIO(content))


@pytest.mark.parametrize("name, data, message", [
    ("s0000000.cls", b"99", "0.tar: member s0000000.cls holds '99'; expected a class index below 10"),
    ("s0000000.id.txt", b"\xff\xfe", "0.tar: member s0000000.id.txt is not UTF-8 text"),
    ("s0000000.npy", None, "0.tar: sample s0000000 lacks"),
])
def test_bad_shard_members_name_the_shard(eurosat_shards, tmp_path, name, data, message):
    bad = tmp_path / "bad"
    shutil.copytree(eurosat_shards, bad)
    _rewrite(bad / "val/0.tar", name, data)
    with pytest.raises(LabelError, match=message):
        next(iter(webdataset_pipeline(bad, "val")))
    with pytest.raises(LabelError, match=message.split(":")[0]):
        get_dataset("shards", bad, "val")


def test_corrupt_shard_metadata_names_the_file(eurosat_shards, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(eurosat_shards, bad)
    (bad / "val/nshards.txt").write_text("four\n")
    with pytest.raises(LabelError, match="nshards.txt: holds 'four'"):
        get_dataset("shards", bad, "val")
    (bad / "dataset_info.json").write_text('{"source": ')
    with pytest.raises(LabelError, match="dataset_info.json: is not valid JSON"):
        webdataset_pipeline(bad, "val")


def test_skipped_files_are_listed_next_to_the_shards(tmp_path):
    root = tmp_path / "eurosat"
    shutil.copytree(MS, root)
    split = tmp_path / "split.txt"
    stems = (DATA_DIR / "splits" / "eurosat_ms_sample-val.txt").read_text().split()
    split.write_text("\n".join(stems) + "\n")
    bad = root / "Forest" / f"{next(s for s in stems if s.startswith('Forest'))}"
    bad = bad.with_suffix(".tif") if bad.suffix != ".tif" else bad
    bad.write_bytes(b"not a tiff")
    with pytest.warns(UserWarning, match="skipped 1"):
        folder = write_shards("eurosat_ms", root, tmp_path / "out", "val", split_file=split, on_error="skip")
    lines = (folder / "skipped.tsv").read_text().splitlines()
    assert lines[0] == "path\treason" and len(lines) == 2
    assert lines[1].startswith(f"{bad}\tcannot be decoded as a GeoTIFF")
    assert (folder / "nsamples.txt").read_text().strip() == "49"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "classnames.txt", "dataset_info.json", "val", "zeroshot_classification_templates.txt"]


def test_an_interrupted_write_keeps_the_previous_split(eurosat_shards, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(eurosat_shards, out)
    before = {p.name: p.read_bytes() for p in (out / "val").iterdir()}

    class Interrupted(Exception):
        pass

    def fail(self, index):
        if index == 20:
            raise Interrupted
        return original(self, index)

    from mtmg.data.datasets.base import MultispectralDataset
    original = MultispectralDataset.raw
    monkeypatch.setattr(MultispectralDataset, "raw", fail)
    with pytest.raises(Interrupted):
        write_shards("eurosat_ms", MS, out, "val", samples_per_shard=16)
    assert {p.name: p.read_bytes() for p in (out / "val").iterdir()} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in eurosat_shards.iterdir())
    assert len(get_dataset("shards", out, "val")) == 50

"""WebDataset shards of multispectral datasets, in CLIP_benchmark's layout, and readers for them.

Layout written by :func:`write_shards` under ``out_dir``::

    classnames.txt                           readable class names, one per line, label order
    zeroshot_classification_templates.txt    one template with {c} per line
    dataset_info.json                        source dataset, original class ids, multilabel, level, bands
    {split}/nshards.txt, {split}/nsamples.txt
    {split}/0.tar, 1.tar, ...                samples "s0000000", ... with members
                                             .npy (13, H, W) uint16 raw reflectance in SSL4EO band order,
                                             .cls (class index) or .multihot.npy (uint8), .id.txt

Readers: :class:`ShardsDataset` (map-style, random access by tar offsets; registry name ``"shards"``) and
:func:`webdataset_pipeline` (streaming with ``webdataset``). Both build items with the same
:func:`mtmg.datasets.base.make_sample` as the source dataset, so tensors are identical.
"""
from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from ..prompts import for_dataset
from ..sentinel2 import SSL4EO_BANDS
from .base import Loaded, MultispectralDataset, OnError, Record, Transform, make_sample, target_value
from .errors import CorruptFileError, DatasetNotFoundError, DTypeError, LabelError, MissingFileError, ShapeError
from .layout import check_split, read_lines

INFO_FILE = "dataset_info.json"
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"


def _write_consistent(path: Path, text: str) -> None:
    """Write ``text`` unless ``path`` holds something else (another dataset's shards)."""
    if path.is_file() and path.read_text() != text:
        raise ValueError(f"{path} already exists with different content; write each dataset's shards to "
                         f"its own folder")
    path.write_text(text)


def write_shards(dataset_name: str, root: str | Path, out_dir: str | Path, split: str,
                 samples_per_shard: int = 1000, **dataset_kwargs: Any) -> Path:
    """Convert one split of a multispectral dataset to WebDataset shards; returns the split folder.

    ``dataset_kwargs`` go to :func:`mtmg.datasets.get_dataset` (e.g. ``on_error="skip"``). Existing
    ``{split}/*.tar`` files in ``out_dir`` are replaced.
    """
    from . import get_dataset

    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    dataset = get_dataset(dataset_name, root, split, **dataset_kwargs)
    if not isinstance(dataset, MultispectralDataset):
        raise ValueError(f"dataset {dataset_name!r} has no multispectral view; shards store 13-band arrays")
    out = Path(out_dir)
    split_dir = out / split
    split_dir.mkdir(parents=True, exist_ok=True)
    names, temps = for_dataset(dataset)
    info = {"source": dataset_name, "classes": list(dataset.classes), "multilabel": dataset.multilabel,
            "prompt_key": dataset.prompt_key, "level": dataset.level, "bands": list(SSL4EO_BANDS)}
    _write_consistent(out / CLASSNAMES_FILE, "".join(f"{n}\n" for n in names))
    _write_consistent(out / TEMPLATES_FILE, "".join(f"{t}\n" for t in temps))
    _write_consistent(out / INFO_FILE, json.dumps(info, indent=1) + "\n")
    for old in split_dir.glob("*.tar"):
        old.unlink()
    sink = wds.ShardWriter(str(split_dir / "%d.tar"), maxcount=samples_per_shard, verbose=0, mtime=0.0)
    for i in tqdm(range(len(dataset)), desc=f"shards {dataset_name}/{split}", disable=len(dataset) < 500):
        array13, target, sample_id = dataset.raw(i)
        sample = {"__key__": f"s{i:07d}", "npy": np.ascontiguousarray(array13, dtype=np.uint16), "id.txt": sample_id}
        if dataset.multilabel:
            sample["multihot.npy"] = target.numpy().astype(np.uint8)
        else:
            sample["cls"] = int(target)
        sink.write(sample)
    nshards = sink.shard
    sink.close()
    (split_dir / "nshards.txt").write_text(f"{nshards}\n")
    (split_dir / "nsamples.txt").write_text(f"{len(dataset)}\n")
    return split_dir


def _read_info(root: Path) -> tuple[dict[str, Any], list[str], list[str]]:
    info_path = root / INFO_FILE
    if not info_path.is_file():
        raise DatasetNotFoundError(f"{info_path} not found; {root} is not a shard folder written by "
                                   f"mtmg.datasets.write_shards")
    info = json.loads(info_path.read_text())
    return info, read_lines(root / CLASSNAMES_FILE), read_lines(root / TEMPLATES_FILE)


def _shard_paths(root: Path, split: str) -> list[Path]:
    nshards_file = root / split / "nshards.txt"
    if not nshards_file.is_file():
        raise DatasetNotFoundError(f"{nshards_file} not found; write this split with "
                                   f"mtmg.datasets.write_shards(..., split={split!r})")
    return [root / split / f"{i}.tar" for i in range(int(nshards_file.read_text().strip()))]


def _decode_npy(data: bytes, path: Path, key: str) -> np.ndarray:
    try:
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CorruptFileError(path, f"member {key}.npy cannot be decoded as .npy: {e}") from e


def _check_array(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    if array.dtype != np.uint16:
        raise DTypeError(path, f"member {key}.npy has data type {array.dtype}, expected uint16")
    if array.ndim != 3 or array.shape[0] != len(SSL4EO_BANDS):
        raise ShapeError(path, f"member {key}.npy has shape {array.shape}, expected (13, H, W)")
    return array


class ShardsDataset(MultispectralDataset):
    """Map-style reader of shards written by :func:`write_shards`; items equal the source dataset's."""

    def __init__(self, root: str | Path, split: str = "test", rgb_transform: Transform = None,
                 ms_transform: Transform = None, *, on_error: OnError = "raise", cache: bool = False) -> None:
        super().__init__(rgb_transform, ms_transform, on_error, cache)
        check_split(split)
        root = Path(root)
        info, self.classnames, self.templates = _read_info(root)
        self.classes = list(info["classes"])
        self.multilabel = bool(info["multilabel"])
        self.prompt_key = str(info["prompt_key"])
        self.level = info["level"]
        self.source = str(info["source"])
        self._offsets: dict[str, tuple[int, int, str]] = {}
        records, problems = [], []
        for tar_path in _shard_paths(root, split):
            if not tar_path.is_file():
                problems.append(MissingFileError(tar_path, "shard listed by nshards.txt not found"))
                continue
            try:
                records.extend(self._index_tar(tar_path))
            except (tarfile.TarError, OSError, LabelError) as e:
                problems.append(e if isinstance(e, LabelError) else
                                CorruptFileError(tar_path, f"cannot be read as a tar shard: {e}"))
        expected = int((root / split / "nsamples.txt").read_text().strip())
        if not problems and len(records) != expected:
            problems.append(CorruptFileError(root / split, f"holds {len(records)} samples, "
                                                           f"nsamples.txt says {expected}"))
        self._index(records, problems)

    def _index_tar(self, tar_path: Path) -> list[Record]:
        members: dict[str, dict[str, tarfile.TarInfo]] = defaultdict(dict)
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.isfile():
                    key, _, ext = member.name.partition(".")
                    members[key][ext] = member
            records = []
            target_ext = "multihot.npy" if self.multilabel else "cls"
            for key, parts in members.items():
                if not {"npy", "id.txt", target_ext} <= set(parts):
                    raise LabelError(tar_path, f"sample {key} lacks one of .npy, .id.txt, .{target_ext}")
                sample_id = tar.extractfile(parts["id.txt"]).read().decode()
                raw_target = tar.extractfile(parts[target_ext]).read()
                if self.multilabel:
                    hot = _decode_npy(raw_target, tar_path, key)
                    target: int | tuple[int, ...] = tuple(int(i) for i in np.flatnonzero(hot))
                else:
                    target = int(raw_target.decode())
                if sample_id in self._offsets:
                    raise LabelError(tar_path, f"sample id {sample_id!r} occurs twice in the shards")
                npy = parts["npy"]
                records.append(Record(sample_id, {"tar": tar_path}, target))
                self._offsets[sample_id] = (npy.offset_data, npy.size, key)
        return records

    def _load(self, record: Record) -> Loaded:
        tar_path = record.files["tar"]
        offset, size, key = self._offsets[record.id]
        with open(tar_path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        return Loaded(_check_array(_decode_npy(data, tar_path, key), tar_path, key), record.target, {})


def webdataset_pipeline(root: str | Path, split: str = "test", rgb_transform: Transform = None,
                        ms_transform: Transform = None) -> wds.WebDataset:
    """Streaming reader of the same shards (``webdataset.WebDataset``), yielding the same dicts."""
    root = Path(root)
    check_split(split)
    info, _, _ = _read_info(root)
    urls = [str(p) for p in _shard_paths(root, split)]
    num_classes, multilabel, level = len(info["classes"]), bool(info["multilabel"]), info["level"]

    def to_sample(sample: dict[str, Any]) -> dict[str, Any]:
        array = _check_array(sample["npy"], Path(sample["__url__"]), sample["__key__"])
        raw = tuple(int(i) for i in np.flatnonzero(sample["multihot.npy"])) if multilabel else sample["cls"]
        return make_sample(array, target_value(raw, num_classes, multilabel), sample["id.txt"], level,
                           rgb_transform, ms_transform)

    def samples(source):  # not .map(): webdataset would add "__key__" back to each dict
        return (to_sample(sample) for sample in source)

    return wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode().compose(samples)

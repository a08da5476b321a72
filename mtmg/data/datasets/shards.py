"""WebDataset shards of multispectral datasets, in CLIP_benchmark's layout, and readers for them.

Layout written by :func:`write_shards` under ``out_dir``::

    classnames.txt                           readable class names, one per line, label order
    zeroshot_classification_templates.txt    one template with {c} per line
    dataset_info.json                        source dataset, original class ids, multilabel, level, bands
    {split}/nshards.txt, {split}/nsamples.txt
    {split}/0.tar, 1.tar, ...                samples "s0000000", ... with members
                                             .npy (13, H, W) uint16 raw reflectance in SSL4EO band order,
                                             .cls (class index) or .multihot.npy (uint8), .id.txt

    {split}/skipped.tsv                      only with on_error="skip": the files left out and why

A split is written into a hidden folder next to it and moved into place when complete, so an interrupted
run never leaves a half-written split behind.

Readers: :class:`ShardsDataset` (map-style, random access by tar offsets; registry name ``"shards"``) and
:func:`webdataset_pipeline` (streaming with ``webdataset``). Both build items with the same
:func:`mtmg.data.datasets.base.make_sample` as the source dataset, so tensors are identical. Shards are data that
people download and share, so both readers decode only the members listed above, with numpy's
``allow_pickle=False``: nothing in a shard is ever unpickled or ``torch.load``-ed, and other members
(``.pyd``, ``.pth``, ...) are ignored with a warning.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from mtmg.core.checkpoint import atomic_write_text
from mtmg.core.errors import ArgumentError
from mtmg.data.prompts import for_dataset
from mtmg.data.sentinel2 import SSL4EO_BANDS

from . import dataset_class, get_dataset
from .base import Loaded, MultispectralDataset, OnError, Record, Transform, make_sample, target_value
from .errors import CorruptFileError, DatasetNotFoundError, DTypeError, LabelError, MissingFileError, ShapeError
from .layout import check_split, read_json, read_lines, read_text

INFO_FILE = "dataset_info.json"
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
SKIPPED_FILE = "skipped.tsv"
MEMBERS = ("npy", "id.txt", "cls", "multihot.npy")
"""The only members a reader decodes; anything else in a shard is ignored."""


def _write_consistent(path: Path, text: str) -> None:
    """Write ``text`` unless ``path`` holds something else (another dataset's shards)."""
    if path.is_file() and read_text(path) != text:
        raise ArgumentError(f"{path} already exists with different content; write each dataset's shards to "
                            f"its own folder")
    atomic_write_text(path, text)


def write_shards(dataset_name: str, root: str | Path, out_dir: str | Path, split: str,
                 samples_per_shard: int = 1000, **dataset_kwargs: Any) -> Path:
    """Convert one split of a multispectral dataset to WebDataset shards; returns the split folder.

    ``dataset_kwargs`` go to :func:`mtmg.data.datasets.get_dataset` (e.g. ``on_error="skip"``; the files left
    out are then listed in ``{split}/skipped.tsv``). An existing ``{split}`` folder is replaced once the
    new one is complete.
    """
    if samples_per_shard < 1:
        raise ArgumentError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if not issubclass(dataset_class(dataset_name), MultispectralDataset):
        raise ArgumentError(f"dataset {dataset_name!r} has no multispectral view; shards store 13-band arrays")
    dataset = get_dataset(dataset_name, root, split, **dataset_kwargs)
    out = Path(out_dir)
    split_dir = out / split
    out.mkdir(parents=True, exist_ok=True)
    names, temps = for_dataset(dataset)
    info = {"source": dataset_name, "classes": list(dataset.classes), "multilabel": dataset.multilabel,
            "prompt_key": dataset.prompt_key, "level": dataset.level, "bands": list(SSL4EO_BANDS)}
    _write_consistent(out / CLASSNAMES_FILE, "".join(f"{n}\n" for n in names))
    _write_consistent(out / TEMPLATES_FILE, "".join(f"{t}\n" for t in temps))
    _write_consistent(out / INFO_FILE, json.dumps(info, indent=1) + "\n")
    partial = out / f".{split}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        _write_split(dataset, partial, dataset_name, split, samples_per_shard)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _replace_dir(partial, split_dir)
    return split_dir


def _write_split(dataset: MultispectralDataset, folder: Path, dataset_name: str, split: str,
                 samples_per_shard: int) -> None:
    """The shards, counts and list of skipped files of one split, into ``folder``."""
    sink = wds.ShardWriter(str(folder / "%d.tar"), maxcount=samples_per_shard, verbose=0, mtime=0.0)
    try:
        for i in tqdm(range(len(dataset)), desc=f"shards {dataset_name}/{split}", disable=len(dataset) < 500):
            array13, target, sample_id = dataset.raw(i)
            sample = {"__key__": f"s{i:07d}", "npy": np.ascontiguousarray(array13, dtype=np.uint16),
                      "id.txt": sample_id}
            if dataset.multilabel:
                sample["multihot.npy"] = target.numpy().astype(np.uint8)
            else:
                sample["cls"] = int(target)
            sink.write(sample)
        nshards = sink.shard
    finally:
        sink.close()
    atomic_write_text(folder / "nshards.txt", f"{nshards}\n")
    atomic_write_text(folder / "nsamples.txt", f"{len(dataset)}\n")
    if dataset.skipped:
        atomic_write_text(folder / SKIPPED_FILE, "path\treason\n" + "".join(
            f"{item.path}\t{' '.join(item.reason.split())}\n" for item in dataset.skipped))


def _replace_dir(new: Path, target: Path) -> None:
    """Move the complete folder ``new`` to ``target``, removing what was there."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _read_info(root: Path) -> tuple[dict[str, Any], list[str], list[str]]:
    info_path = root / INFO_FILE
    if not info_path.is_file():
        raise DatasetNotFoundError(f"{info_path} not found; {root} is not a shard folder written by "
                                   f"mtmg.data.datasets.shards.write_shards")
    info = read_json(info_path, "the object written by mtmg.data.datasets.shards.write_shards")
    keys = ("classes", "multilabel", "prompt_key", "level", "source")
    if not isinstance(info, dict) or any(k not in info for k in keys):
        raise LabelError(info_path, f"expected an object with the keys {list(keys)}; write the shards again "
                                    "with mtmg.data.datasets.shards.write_shards")
    return info, read_lines(root / CLASSNAMES_FILE), read_lines(root / TEMPLATES_FILE)


def _read_count(path: Path) -> int:
    text = read_text(path).strip()
    if not text.isdigit():
        raise LabelError(path, f"holds {text[:40]!r}; expected a non-negative integer (write the shards again)")
    return int(text)


def _shard_paths(root: Path, split: str) -> list[Path]:
    nshards_file = root / split / "nshards.txt"
    if not nshards_file.is_file():
        raise DatasetNotFoundError(f"{nshards_file} not found; write this split with "
                                   f"mtmg.data.datasets.shards.write_shards(..., split={split!r})")
    return [root / split / f"{i}.tar" for i in range(_read_count(nshards_file))]


def _decode_npy(data: bytes, path: Path, key: str) -> np.ndarray:
    try:
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CorruptFileError(path, f"member {key}.npy cannot be decoded as .npy: {e}") from e


def _decode_text(data: bytes, path: Path, key: str, ext: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LabelError(path, f"member {key}.{ext} is not UTF-8 text") from e


def _decode_target(data: bytes, path: Path, key: str, multilabel: bool,
                   num_classes: int) -> int | tuple[int, ...]:
    """Class index (``.cls``) or the indices set in a multi-hot vector (``.multihot.npy``)."""
    if multilabel:
        hot = _decode_npy(data, path, f"{key}.multihot")
        if hot.ndim != 1 or hot.size != num_classes:
            raise LabelError(path, f"member {key}.multihot.npy has shape {hot.shape}, expected ({num_classes},)")
        return tuple(int(i) for i in np.flatnonzero(hot))
    text = _decode_text(data, path, key, "cls").strip()
    if not text.isdigit() or int(text) >= num_classes:
        raise LabelError(path, f"member {key}.cls holds {text[:20]!r}; expected a class index below {num_classes}")
    return int(text)


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
        expected = _read_count(root / split / "nsamples.txt")
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
                if not set(parts) & set(MEMBERS):  # nothing of ours (e.g. only a planted .pyd): ignored
                    continue
                if not {"npy", "id.txt", target_ext} <= set(parts):
                    raise LabelError(tar_path, f"sample {key} lacks one of .npy, .id.txt, .{target_ext}")
                sample_id = _decode_text(tar.extractfile(parts["id.txt"]).read(), tar_path, key, "id.txt")
                target = _decode_target(tar.extractfile(parts[target_ext]).read(), tar_path, key,
                                        self.multilabel, len(self.classes))
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
    """Streaming reader of the same shards (``webdataset.WebDataset``), yielding the same dicts.

    Members are decoded here, not by webdataset's default decoders (which unpickle ``.pyd`` and
    ``torch.load`` ``.pth`` members): only :data:`MEMBERS` are read, anything else is ignored with a warning.
    """
    root = Path(root)
    check_split(split)
    info, _, _ = _read_info(root)
    urls = [str(p) for p in _shard_paths(root, split)]
    num_classes, multilabel, level = len(info["classes"]), bool(info["multilabel"]), info["level"]
    target_ext = "multihot.npy" if multilabel else "cls"
    ignored: set[str] = set()

    def to_sample(raw: dict[str, Any]) -> dict[str, Any] | None:
        path, key = Path(raw["__url__"]), raw["__key__"]
        others = sorted(ext for ext in raw if not ext.startswith("__") and ext not in MEMBERS)
        if set(others) - ignored:
            ignored.update(others)
            warnings.warn(f"{path}: ignoring member(s) {', '.join(f'{key}.{e}' for e in others)}; only "
                          f"{', '.join('.' + m for m in MEMBERS)} members are read from shards (nothing in a shard "
                          "is unpickled)", stacklevel=2)
        if not set(raw) & set(MEMBERS):
            return None
        missing = [ext for ext in ("npy", "id.txt", target_ext) if ext not in raw]
        if missing:
            raise LabelError(path, f"sample {key} lacks the member(s) {', '.join('.' + m for m in missing)}")
        array = _check_array(_decode_npy(raw["npy"], path, key), path, key)
        target = _decode_target(raw[target_ext], path, key, multilabel, num_classes)
        return make_sample(array, target_value(target, num_classes, multilabel),
                           _decode_text(raw["id.txt"], path, key, "id.txt"), level, rgb_transform, ms_transform)

    def samples(source):  # not .map(): webdataset would add "__key__" back to each dict
        return (sample for sample in map(to_sample, source) if sample is not None)

    return wds.WebDataset(urls, shardshuffle=False, empty_check=False).compose(samples)

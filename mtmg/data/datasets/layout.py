"""Finding things on disk: split files, class folders, the first layout variant that exists."""
from __future__ import annotations

import errno
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtmg.core.errors import ArgumentError

from .errors import DatasetNotFoundError, InvalidSampleError, LabelError, MissingFileError, UnknownClassError

SPLITS = ("train", "val", "test")


def check_split(split: str, allowed: Sequence[str] = SPLITS) -> None:
    if split not in allowed:
        raise ArgumentError(f"unknown split {split!r}; expected one of {', '.join(allowed)}")


def require_root(root: Path, what: str, howto: str) -> Path:
    """``root`` as a Path if it is a folder, else a DatasetNotFoundError explaining the layout."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"dataset root {root} does not exist. Expected {what}. {howto}")
    return root


def first_dir(root: Path, candidates: Sequence[str], what: str, howto: str) -> Path:
    """The first ``root / c`` that is a folder; otherwise a DatasetNotFoundError."""
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    tried = ", ".join(str(root / c) for c in candidates)
    raise DatasetNotFoundError(f"no {what} under {root} (looked for {tried}). {howto}")


def is_shipped_sample(root: Path, sample: Path) -> bool:
    """Whether ``root`` is the sample shipped in ``data/`` (then its committed split is used)."""
    try:
        return Path(root).resolve() == sample.resolve()
    except OSError:
        return False


def find_split_file(candidates: Sequence[Path | None], split: str, what: str, howto: str) -> Path:
    """The first existing candidate split file; otherwise a DatasetNotFoundError."""
    for c in candidates:
        if c is not None and Path(c).is_file():
            return Path(c)
    tried = ", ".join(str(c) for c in candidates if c is not None)
    raise DatasetNotFoundError(f"no {split} split file for {what} (looked for {tried}). {howto} "
                               f"Or pass split_file=PATH.")


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; a missing, unreadable or non-UTF-8 file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "file not found" + broken_link_note(path))
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InvalidSampleError(path, f"is not UTF-8 text (byte {e.start}: {e.reason}); "
                                       "re-export the file as UTF-8 or restore it from the dataset") from e
    except OSError as e:
        raise InvalidSampleError(path, f"cannot be read: {e.strerror or e}") from e


def read_json(path: Path, expected: str) -> Any:
    """The JSON content of ``path``; invalid JSON is a LabelError naming the file and ``expected``."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise LabelError(path, f"is not valid JSON ({e}); expected {expected}") from e


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def broken_link_note(path: Path) -> str:
    """``" (a broken symbolic link to TARGET)"`` when ``path`` is a link whose target is missing (or a link
    that loops back to itself), else ``""``."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        try:
            path.stat()
        except OSError as e:
            if e.errno == errno.ELOOP:
                return (f" (it is a symbolic link to {path.readlink()} that loops back to itself; point it at the "
                        "file or remove the link)")
        return f" (it is a broken symbolic link to {path.readlink()}; restore the target or remove the link)"
    return ""


def _natural_key(stem: str) -> tuple[str, int, str]:
    m = re.match(r"^(.*?)(\d+)$", stem)
    return (m.group(1), int(m.group(2)), "") if m else (stem, -1, stem)


def scan_class_folders(
    image_dir: Path, classes: Sequence[str], extensions: Sequence[str], check_prefix: bool = False
) -> tuple[dict[str, tuple[int, Path]], list[Exception]]:
    """Map file stem -> (class index, path) over ``image_dir/<class>/*<ext>``.

    Folders that are not in ``classes`` become UnknownClassError problems; with ``check_prefix`` a file
    whose name does not start with its folder's class (EuroSAT names files ``<Class>_<n>``) becomes a
    LabelError problem. Hidden folders and folders starting with ``_`` are ignored. A broken symbolic link
    is kept, so that reading it fails with an error naming it (skipped and listed under ``on_error="skip"``).
    """
    found: dict[str, tuple[int, Path]] = {}
    problems: list[Exception] = []
    exts = tuple(e.lower() for e in extensions)
    for folder in sorted(p for p in image_dir.iterdir() if p.is_dir()):
        if folder.name.startswith((".", "_")):
            continue
        if folder.name not in classes:
            problems.append(UnknownClassError(folder, f"is not a class folder of this dataset; "
                                                      f"expected only {list(classes)}"))
            continue
        label = list(classes).index(folder.name)
        for path in sorted(folder.iterdir(), key=lambda p: _natural_key(p.stem)):
            broken_link = path.is_symlink() and not path.exists()  # kept: reading it reports the link
            if not (path.is_file() or broken_link) or path.suffix.lower() not in exts:
                continue
            if check_prefix and path.stem.rsplit("_", 1)[0] != folder.name:
                problems.append(LabelError(path, f"file name does not start with its folder's class "
                                                 f"'{folder.name}_'; the label would be ambiguous"))
                continue
            found[path.stem] = (label, path)
    return found, problems

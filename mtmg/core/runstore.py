"""The run store: every stage result in a folder addressed by everything that made it.

A stage's *key* hashes its settings, the keys of the stages it reads, the source of the ``mtmg``
packages that compute results (:data:`RESULT_PACKAGES`), the identity of the weights it starts from and
a *manifest* of its input data (every file under each dataset root: content hashes for small datasets,
sizes and modification times for large ones). Outputs go to ``runs/<profile>/<stage>/<key>/``
(``MTMG_RUNS`` moves ``runs/``), so parameter sets live side by side and a repeat finds its folder
complete and reuses it.

A folder is complete when its :data:`STATUS_FILE` records the key and the checksums of the files it
needs, and those files are unchanged; a writer holds the folder's lock (:func:`locked`) from start to
finish and records the key last, so an interrupted run, a run with other settings written into the
folder or a hand-edited output is never taken as current. Removing runs never leaves ``runs/``: folders
reached through symbolic links are not listed, and links inside a run folder are removed, not followed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import stat as stat_module
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from mtmg import __version__
from mtmg.core import paths
from mtmg.core.checkpoint import atomic_write_text
from mtmg.core.config import DataSpec, is_plain_name, to_dict
from mtmg.core.errors import ArgumentError, UserError

STATUS_FILE = "status.json"
LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.holder"
PLACE_KEYS = ("out_dir", "teacher_dir", "cache_dir")
"""Config keys that say where things are, not what is computed; they are left out of keys."""
CONTENT_HASH_LIMIT = 256 * 2**20
"""Datasets up to this many bytes are identified by content hashes, larger ones by sizes and times."""


class FolderLockedError(UserError, RuntimeError):
    """Another process is writing into the output folder."""


class CorruptStatusError(UserError, ValueError):
    """A status file that is not a JSON record of a finished stage."""


class ChangedOutputError(UserError, RuntimeError):
    """An output file of a finished stage that differs from the one the stage wrote."""


# --- what made a result -----------------------------------------------------------------------------------

_file_hashes: dict[tuple[str, int, int, int], str] = {}


def file_digest(path: Path, stat: os.stat_result | None = None) -> str:
    """SHA-256 of a file's content, remembered per (path, size, mtime, inode) for this process."""
    stat = Path(path).stat() if stat is None else stat
    memo = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if memo not in _file_hashes:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _file_hashes[memo] = digest.hexdigest()
    return _file_hashes[memo]


RESULT_PACKAGES = ("core", "models", "data", "evaluation", "method", "runs", "model_configs")
"""The parts of ``mtmg`` whose code shapes a stage's results (the book, the command line and the mapping
tools only present or drive them, so editing them keeps every run current)."""


def source_hash(package: Path, parts: Sequence[str] | None = None) -> str:
    """Hash of the source files of a package folder (every ``.py``, ``.json`` and ``.yaml`` file in it, or
    only in its sub-folders ``parts``)."""
    digest = hashlib.sha256()
    folders = [package] if parts is None else [package / part for part in parts]
    files = {p for folder in folders for p in folder.rglob("*")}
    for file in sorted(p for p in files if p.suffix in (".py", ".json", ".yaml") and p.is_file()
                       and "__pycache__" not in p.parts):
        digest.update(file.relative_to(package).as_posix().encode() + b"\0")
        digest.update(file_digest(file, file.stat()).encode())
    return digest.hexdigest()[:16]


@functools.cache
def code_hash() -> str:
    """:func:`source_hash` of the :data:`RESULT_PACKAGES` of ``mtmg``, taken once per process: the code this
    process computes with (an edit of it takes effect, and changes the keys, in the next process)."""
    return source_hash(Path(__file__).resolve().parents[1], RESULT_PACKAGES)


def _files(root: Path) -> list[tuple[Path, os.stat_result | str]]:
    """Every file under ``root`` as the dataset readers see it: hidden files included, symbolic links
    followed (a folder reached again through a link is listed once). A broken or looping link, or a link
    to a folder already listed, comes with a note instead of its status: it changes the key but stops
    nothing (a reader that needs it reports it)."""
    if not root.is_dir():
        return [(root, root.stat())]
    out: list[tuple[Path, os.stat_result | str]] = []
    seen: set[str] = set()

    def walk(folder: Path) -> None:
        seen.add(os.path.realpath(folder))
        for name in sorted(os.listdir(folder)):
            path = folder / name
            target = os.readlink(path) if path.is_symlink() else None
            try:
                st = path.stat()
            except OSError as e:  # a broken or looping link, or a file that cannot be read
                out.append((path, f"link to {target}: {e.strerror}" if target else f"unreadable: {e.strerror}"))
                continue
            if not stat_module.S_ISDIR(st.st_mode):
                out.append((path, st))
            elif os.path.realpath(path) in seen:
                out.append((path, f"link to {target}: a folder listed already" if target
                            else f"the folder {os.path.realpath(path)}, listed already"))
            else:
                walk(path)

    walk(root)
    return out


def data_manifest(spec: DataSpec) -> dict[str, Any]:
    """Identity of a dataset's input: its spec and, for every file under its root, every option that
    names a file (``split_file``) and the committed split lists of ``data/splits``, the relative path
    with a content hash (datasets up to :data:`CONTENT_HASH_LIMIT` bytes) or its size and modification
    time (larger ones)."""
    manifest: dict[str, Any] = {"spec": to_dict(spec), "files": {}}
    roots = [paths.resolve(spec.root)] if spec.root else []
    roots += [paths.resolve(v) for v in spec.options.values() if isinstance(v, str) and paths.resolve(v).is_file()]
    if spec.root:  # the committed split lists of a sample shipped in data/
        roots += sorted(paths.SPLITS_DIR.glob(f"{paths.resolve(spec.root).name}-*"))
    for root in roots:
        if not root.exists():
            manifest["files"][str(root)] = "missing"
            continue
        files = _files(root)
        small = sum(st.st_size for _, st in files if not isinstance(st, str)) <= CONTENT_HASH_LIMIT
        base = root if root.is_dir() else root.parent
        manifest["files"][str(root)] = {
            p.relative_to(base).as_posix(): st if isinstance(st, str) else file_digest(p, st) if small
            else f"{st.st_size}:{st.st_mtime_ns}" for p, st in files}
    return manifest


_walked: list[dict[str, str]] = []
"""The data identities of the datasets met inside :func:`one_walk_per_dataset` (one dict while a block runs)."""


@contextlib.contextmanager
def one_walk_per_dataset() -> Iterator[None]:
    """Inside the block (a nested block shares the outer one's), each dataset's manifest is walked once:
    the keys of one pipeline call see one state of the data, and a large dataset is statted once."""
    if _walked:
        yield
        return
    _walked.append({})
    try:
        yield
    finally:
        _walked.clear()


def data_identity(specs: Sequence[DataSpec]) -> list[str]:
    """One short hash of :func:`data_manifest` per spec (walked once per :func:`one_walk_per_dataset` block)."""
    if not _walked:
        return [_digest(data_manifest(s)) for s in specs]
    memo = _walked[0]
    for s in specs:
        ident = json.dumps(to_dict(s), sort_keys=True)
        if ident not in memo:
            memo[ident] = _digest(data_manifest(s))
    return [memo[json.dumps(to_dict(s), sort_keys=True)] for s in specs]


def weights_identity(reference: str | None) -> dict[str, Any]:
    """What identifies a weight reference: a file's path, size and modification time, else the tag."""
    path = paths.resolve(reference) if reference else None
    if path is not None and path.is_file():
        stat = path.stat()
        return {"file": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"tag": reference}


def settings(cfg: Any) -> dict[str, Any]:
    """The plain data of a stage config without the keys of :data:`PLACE_KEYS`."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return {k: v for k, v in data.items() if k not in PLACE_KEYS}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def key_parts(stage: str, cfg: Any, *, upstream: Sequence[str] = (), weights: Any = None,
              data: Sequence[DataSpec] = ()) -> dict[str, Any]:
    """Everything a stage result depends on, as plain data: the stage, its settings, the keys of the
    stages it reads, the weights it starts from, its data manifests and the package source."""
    return {"stage": stage, "settings": settings(cfg), "upstream": list(upstream), "weights": weights,
            "data": data_identity(_unique(data)), "code": code_hash(), "version": __version__}


def stage_key(stage: str, cfg: Any, *, upstream: Sequence[str] = (), weights: Any = None,
              data: Sequence[DataSpec] = ()) -> str:
    """The 16-hex-digit key of :func:`key_parts`."""
    return _digest(key_parts(stage, cfg, upstream=upstream, weights=weights, data=data))


def _unique(specs: Sequence[DataSpec]) -> list[DataSpec]:
    seen, out = set(), []
    for s in specs:
        ident = json.dumps(to_dict(s), sort_keys=True)
        if ident not in seen:
            seen.add(ident)
            out.append(s)
    return out


# --- folders ---------------------------------------------------------------------------------------------

def stage_folder(profile: str, stage: str, key: str) -> Path:
    """``runs/<profile>/<stage>/<key>`` (under ``MTMG_RUNS`` if set); each part must be a plain name."""
    for what, name in (("profile", profile), ("stage", stage), ("key", key)):
        if not is_plain_name(name):
            raise ArgumentError(f"{what} {name!r}: expected a plain name (letters, digits, '_', '-', '.'), not a "
                                f"path; a run folder is always {paths.runs_dir()}/<profile>/<stage>/<key>")
    return paths.runs_dir() / profile / stage / key


def read_status(folder: Path) -> dict[str, Any] | None:
    """The status record of a folder, or None; a :class:`CorruptStatusError` naming the file if it is not one."""
    path = Path(folder) / STATUS_FILE
    if not path.is_file():
        return None
    status, why = None, "not a record with a key"
    try:
        status = json.loads(path.read_bytes())
    except OSError as e:
        why = f"cannot be read ({e.strerror})"
    except ValueError as e:
        why = f"not valid JSON ({' '.join(str(e).split())})"
    if not isinstance(status, dict) or not isinstance(status.get("key"), str):
        raise CorruptStatusError(f"{path}: {why}; delete this file (the folder then counts as unfinished and "
                                 "is written again) or the whole folder (python -m mtmg runs clean)")
    return status


def recorded_key(folder: Path) -> str:
    """The key a finished folder was written under; an error naming the folder if it has none, and a
    :class:`ChangedOutputError` if one of its recorded files changed since (a stage reading it would use it)."""
    status = read_status(folder)
    if status is None:
        raise FileNotFoundError(f"{Path(folder) / STATUS_FILE}: no finished stage recorded here; run the stage "
                                "into this folder first (python -m mtmg patch / align, or the pipeline)")
    recorded = status.get("files")
    _check_unchanged(Path(folder), status, list(recorded) if isinstance(recorded, dict) else [])
    return str(status["key"])


def _check_unchanged(folder: Path, status: Mapping[str, Any], names: Sequence[str]) -> None:
    """A :class:`ChangedOutputError` naming the first of ``names`` that is missing or differs from its
    checksum in ``status``."""
    recorded = status.get("files") or {}
    changed = [name for name in names if not (folder / name).is_file()
               or file_digest(folder / name) != recorded.get(name)]
    if changed:
        raise ChangedOutputError(
            f"{folder / changed[0]}: changed or removed since stage {status.get('stage')} wrote it (the checksum "
            f"in {folder / STATUS_FILE} differs{'; also ' + ', '.join(changed[1:]) if changed[1:] else ''}); a "
            "hand-edited result is not used. Put back the original file, or delete the folder (python -m mtmg "
            "runs clean) or run the stage with force=True to compute it again")


def is_current(folder: Path, key: str, required: Sequence[str]) -> bool:
    """True when ``folder`` records ``key`` and the checksum of every ``required`` file, and holds them. A
    corrupt status file is a warned miss; a required file that changed since it was written is a
    :class:`ChangedOutputError` naming it (it is not served, nor silently overwritten)."""
    folder = Path(folder)
    try:
        status = read_status(folder)
    except CorruptStatusError as e:
        warnings.warn(f"{e}; running the stage again", stacklevel=2)
        return False
    recorded = status.get("files") if status is not None else None
    if (status is None or status["key"] != key or not isinstance(recorded, dict)
            or not all(name in recorded and (folder / name).is_file() for name in required)):
        return False
    _check_unchanged(folder, status, required)
    return True


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if needed) while the block runs.

    A second writer fails at once with :class:`FolderLockedError` naming the folder and the holder (pid,
    host, start time). The lock is an OS file lock (``filelock``): the kernel releases it when its holder
    dies, so the lock of a killed process is simply taken over.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / LOCK_FILE).is_symlink():  # never open (and truncate) a file outside the folder
        (folder / LOCK_FILE).unlink()
    lock = FileLock(str(folder / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = folder / HOLDER_FILE
        who = holder.read_text().strip() if holder.is_file() else "an unknown process"
        raise FolderLockedError(f"{folder}: another run is writing into this folder ({who}); wait for it to "
                                "finish, or write elsewhere (another parameter set or --out folder)") from None
    try:
        atomic_write_text(folder / HOLDER_FILE, f"pid {os.getpid()} on {socket.gethostname()}, "
                                                f"started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        yield folder
    finally:
        (folder / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()


@contextlib.contextmanager
def writing(stage: str, folder: Path, key: str, required: Sequence[str], *, enabled: bool = True,
            note: Mapping[str, Any] | None = None) -> Iterator[Path]:
    """Write a stage into ``folder`` under ``key``: lock it, forget the previous status, run the block,
    check the ``required`` files and record the key. ``enabled=False`` (ranks other than 0 under
    ``torchrun``) runs the block without any of that."""
    folder = Path(folder)
    if not enabled:
        yield folder
        return
    with locked(folder):
        (folder / STATUS_FILE).unlink(missing_ok=True)
        t0 = time.perf_counter()
        yield folder
        missing = [name for name in required if not (folder / name).is_file()]
        if missing:
            raise RuntimeError(f"stage {stage} finished but {folder} lacks {missing}")
        status = {"stage": stage, "key": key, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
                  "files": {name: file_digest(folder / name) for name in required}, **(note or {})}
        atomic_write_text(folder / STATUS_FILE, json.dumps(status, indent=2) + "\n")


# --- listing and cleaning --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StoredRun:
    """One folder of the store: profile, stage, key, whether it finished, when, and its size."""

    profile: str
    stage: str
    key: str
    folder: Path
    finished: str | None
    bytes: int


def _in_store(folder: Path, root: Path) -> bool:
    """Whether ``folder`` (``root/<profile>/<stage>/<key>``) is a real folder of the store: none of its
    three levels is a symbolic link, so deleting it cannot reach outside ``root``."""
    levels = (folder, folder.parent, folder.parent.parent)
    return (not any(p.is_symlink() for p in levels) and folder.is_dir()
            and Path(os.path.realpath(folder)).is_relative_to(os.path.realpath(root)))


def _size(folder: Path) -> int:
    """Bytes of the files in ``folder``; symbolic links count as links, never followed."""
    return sum(os.lstat(os.path.join(d, n)).st_size for d, _, names in os.walk(folder) for n in names)


def list_runs(root: Path | None = None) -> list[StoredRun]:
    """Every ``<profile>/<stage>/<key>`` folder under ``root`` (default: the runs folder), sorted; folders
    reached through a symbolic link are left out (they are not the store's to remove)."""
    root = Path(root) if root is not None else paths.runs_dir()
    runs = []
    for folder in sorted(root.glob("*/*/*")):
        if not re.fullmatch(r"[0-9a-f]{16}", folder.name) or not _in_store(folder, root):
            continue
        try:
            status = read_status(folder)
        except CorruptStatusError:  # listed as unfinished, so that it can be cleaned
            status = None
        runs.append(StoredRun(folder.parent.parent.name, folder.parent.name, folder.name, folder,
                              None if status is None else status.get("finished"), _size(folder)))
    return runs


def remove_run(run: StoredRun) -> None:
    """Delete a stored run, holding its lock (a folder being written is refused). Symbolic links inside it
    are removed, not followed; a run folder that is itself reached through a link is refused."""
    root = run.folder.parent.parent.parent
    if not _in_store(run.folder, root):
        raise ArgumentError(f"{run.folder}: not a folder of the run store {root} (it is, or lies under, a "
                            "symbolic link); nothing was removed")
    with locked(run.folder):
        for child in run.folder.iterdir():
            if child.name not in (LOCK_FILE, HOLDER_FILE):
                child.unlink() if child.is_symlink() or not child.is_dir() else shutil.rmtree(child)
    shutil.rmtree(run.folder, ignore_errors=True)

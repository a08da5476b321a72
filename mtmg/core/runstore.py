"""The run store: every stage result in a folder addressed by everything that made it.

A stage's *key* hashes its settings, the keys of the stages it reads, the source of the whole
``mtmg`` package, the identity of the weights it starts from and a *manifest* of its input data
(every file under each dataset root: content hashes for small datasets, sizes and modification times
for large ones). Outputs go to ``runs/<profile>/<stage>/<key>/`` (``MTMG_RUNS`` moves ``runs/``), so
parameter sets live side by side and a repeat finds its folder complete and reuses it.

A folder is complete when its :data:`STATUS_FILE` records the key and the files it needs exist; a
writer holds the folder's lock (:func:`locked`) from start to finish and records the key last, so an
interrupted run or a run with other settings written into the folder is never taken as current.
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
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mtmg import __version__
from mtmg.core import paths
from mtmg.core.checkpoint import atomic_write_text
from mtmg.core.config import DataSpec, to_dict
from mtmg.core.errors import UserError
from mtmg.data.datasets.layout import SPLITS_DIR

STATUS_FILE = "status.json"
LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.holder"
PLACE_KEYS = ("out_dir", "teacher_dir", "cache_dir")
"""Config keys that say where things are, not what is computed; they are left out of keys."""
CONTENT_HASH_LIMIT = 256 * 2**20
"""Datasets up to this many bytes are identified by content hashes, larger ones by sizes and times."""


class FolderLockedError(UserError, RuntimeError):
    """Another process is writing into the output folder."""


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


def source_hash(package: Path) -> str:
    """Hash of the source files of a package folder (every ``.py``, ``.json`` and ``.yaml`` file in it)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".json", ".yaml") and p.is_file()
                       and "__pycache__" not in p.parts):
        digest.update(file.relative_to(package).as_posix().encode() + b"\0")
        digest.update(file_digest(file, file.stat()).encode())
    return digest.hexdigest()[:16]


@functools.cache
def code_hash() -> str:
    """:func:`source_hash` of the whole ``mtmg`` package, taken once per process: the code this process
    runs (an edit of the sources takes effect, and changes the keys, in the next process)."""
    return source_hash(Path(__file__).resolve().parents[1])


def _files(root: Path) -> list[tuple[Path, os.stat_result]]:
    if root.is_file():
        return [(root, root.stat())]
    out = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [(Path(folder, n), Path(folder, n).stat()) for n in sorted(names) if not n.startswith(".")]
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
        roots += sorted(SPLITS_DIR.glob(f"{paths.resolve(spec.root).name}-*"))
    for root in roots:
        if not root.exists():
            manifest["files"][str(root)] = "missing"
            continue
        files = _files(root)
        small = sum(st.st_size for _, st in files) <= CONTENT_HASH_LIMIT
        base = root if root.is_dir() else root.parent
        manifest["files"][str(root)] = {
            p.relative_to(base).as_posix(): file_digest(p, st) if small else f"{st.st_size}:{st.st_mtime_ns}"
            for p, st in files}
    return manifest


def data_identity(specs: Sequence[DataSpec]) -> list[str]:
    """One short hash of :func:`data_manifest` per spec."""
    return [_digest(data_manifest(s)) for s in specs]


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
    """``runs/<profile>/<stage>/<key>`` (under ``MTMG_RUNS`` if set)."""
    return paths.runs_dir() / profile / stage / key


def read_status(folder: Path) -> dict[str, Any] | None:
    """The status record of a folder, or None."""
    path = Path(folder) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def recorded_key(folder: Path) -> str:
    """The key a finished folder was written under; an error naming the folder if it has none."""
    status = read_status(folder)
    if status is None:
        raise FileNotFoundError(f"{Path(folder) / STATUS_FILE}: no finished stage recorded here; run the stage "
                                "into this folder first (python -m mtmg patch / align, or the pipeline)")
    return str(status["key"])


def is_current(folder: Path, key: str, required: Sequence[str]) -> bool:
    """True when ``folder`` records ``key`` and holds every ``required`` file."""
    status = read_status(folder)
    return (status is not None and status.get("key") == key
            and all((Path(folder) / name).is_file() for name in required))


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if needed) while the block runs.

    A second writer fails at once with :class:`FolderLockedError` naming the folder and the holder (pid,
    host, start time). The lock is an OS file lock (``filelock``): the kernel releases it when its holder
    dies, so the lock of a killed process is simply taken over.
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
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
                  "seconds": round(time.perf_counter() - t0, 1), **(note or {})}
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


def list_runs(root: Path | None = None) -> list[StoredRun]:
    """Every ``<profile>/<stage>/<key>`` folder under ``root`` (default: the runs folder), sorted."""
    root = Path(root) if root is not None else paths.runs_dir()
    runs = []
    for folder in sorted(root.glob("*/*/*")):
        if not folder.is_dir() or not re.fullmatch(r"[0-9a-f]{16}", folder.name):
            continue
        status = read_status(folder)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        runs.append(StoredRun(folder.parent.parent.name, folder.parent.name, folder.name, folder,
                              None if status is None else status.get("finished"), size))
    return runs


def remove_run(run: StoredRun) -> None:
    """Delete a stored run, holding its lock (a folder being written is refused)."""
    with locked(run.folder):
        for child in run.folder.iterdir():
            if child.name not in (LOCK_FILE, HOLDER_FILE):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    shutil.rmtree(run.folder, ignore_errors=True)

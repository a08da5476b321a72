"""Atomic files, state-dict checkpoints and the random-number-generator state a bit-exact resume needs.

Files hold only tensors, numbers, strings and containers of them, so ``torch.load(weights_only=True)``
reads them. A write goes to a temporary file in the same directory, is flushed to disk and then
renamed over the target: an interrupted run leaves either the old file or the new one, never half.
New files get the process's normal permissions (``0o666`` less the umask), like ``open(path, "w")``.

A file that cannot be read is a :class:`CorruptCheckpointError` naming it and how to recover;
:func:`load_cache` instead treats a corrupt cache file as a miss (a warning, then the caller rebuilds it).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import random
import secrets
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from mtmg.core.errors import WeightsError, storage_error

RECOVER_CHECKPOINT = ("delete it and run the stage again to start it over, "
                      "or put back an earlier copy of the file and run with --resume")


class MissingCheckpointError(WeightsError, FileNotFoundError):
    """A checkpoint or weight file that does not exist."""


class CorruptCheckpointError(WeightsError, ValueError):
    """A checkpoint or weight file that is empty, truncated, not a torch file or holds pickled objects."""

    def __init__(self, path: str | Path, reason: str, fix: str) -> None:
        super().__init__(f"{path}: {reason}; {fix}")
        self.path = Path(path)
        self.reason = reason


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on success it is fsynced and renamed to ``path``.

    On an exception the temporary file is removed and ``path`` keeps its previous content (a full disk or
    read-only folder is a :class:`mtmg.core.errors.StorageError` naming ``path``). ``mode`` is
    ``"wb"`` or ``"w"`` (``kwargs`` go to :func:`os.fdopen`, e.g. ``encoding``, ``newline``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files; mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)  # the umask applies, as for any new file
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        full = storage_error(e, path)  # disk full: say so, with the file (torch's writer names neither)
        if full is not None:
            raise full from e
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, ``os.replace``)."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; newlines are written as given (no translation)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (temporary file + fsync + ``os.replace``)."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def load(path: str | Path, map_location: str | torch.device = "cpu", *, fix: str = RECOVER_CHECKPOINT) -> Any:
    """Read a file written by :func:`atomic_save` (``weights_only=True``: no pickled code).

    A missing file raises :class:`MissingCheckpointError`; an empty, truncated or foreign file
    :class:`CorruptCheckpointError` whose message names the file, the problem and ``fix``.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError(f"{path}: checkpoint not found; run the stage first or check the directory")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(path, "the file is empty (0 bytes)", fix)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise CorruptCheckpointError(
                path, "the file holds pickled Python objects, not only tensors and numbers, and is not "
                "loaded (loading it could run code)", "save a state dict (model.state_dict()) instead") from e
        raise CorruptCheckpointError(path, f"the file is truncated or not a torch file ({_brief(e)})", fix) from e
    except (EOFError, OSError, RuntimeError, zipfile.BadZipFile, ValueError, KeyError, AttributeError,
            IndexError, TypeError) as e:
        raise CorruptCheckpointError(path, f"the file is truncated or not a torch file ({_brief(e)})", fix) from e


def _brief(error: BaseException) -> str:
    """The exception's type and the first sentence of its message."""
    text = str(error).split(". ")[0].splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def load_cache(path: str | Path, map_location: str | torch.device = "cpu") -> Any | None:
    """The content of cache file ``path``, or None when it is missing or corrupt (with a warning naming it).

    A corrupt cache is a cache miss: the caller rebuilds the content and overwrites the file.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return load(path, map_location, fix="it is rebuilt")
    except CorruptCheckpointError as e:
        warnings.warn(f"ignoring corrupt cache file {e}", stacklevel=2)
        return None


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and python generator states as tensors and numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

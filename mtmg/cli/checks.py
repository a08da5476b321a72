"""Checks of command-line arguments that run before any work starts; each failure is an ArgumentError."""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from mtmg.core.errors import ArgumentError


def check_common_arguments(args: argparse.Namespace) -> None:
    """Refuse invalid ``--device``, ``--batch-size`` and ``--workers`` values of any subcommand."""
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        raise ArgumentError(f"--batch-size must be at least 1, got {args.batch_size}")
    if getattr(args, "workers", None) is not None and args.workers < 0:
        raise ArgumentError(f"--workers must be 0 (load data in the main process) or more, got {args.workers}")
    if getattr(args, "device", None) is not None:
        check_device(args.device)


def check_device(name: str) -> None:
    """An ArgumentError unless ``name`` is auto, cpu, cuda or cuda:N of a GPU that exists here."""
    import torch

    from mtmg.core.device import resolve_device

    try:
        device = resolve_device(name)
    except (ValueError, RuntimeError) as e:
        raise ArgumentError(f"--device {name}: {e}") from e
    if device.type not in ("cpu", "cuda"):
        raise ArgumentError(f"--device {name}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ArgumentError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"numbered from 0; use --device cuda or cuda:0")


def require_writable_folder(folder: Path, option: str, target: Path | None = None) -> None:
    """Create ``folder`` if needed and make sure a file can be written in it; an ArgumentError naming
    ``option`` and ``target`` (default: ``folder``) otherwise."""
    folder = Path(folder)
    where = f"{option} {target if target is not None else folder}"
    if folder.exists() and not folder.is_dir():
        raise ArgumentError(f"{where}: cannot write there ({folder} is a file, not a folder); choose another location")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mtmg-write-check-"):
            pass
    except OSError as e:
        raise ArgumentError(f"{where}: cannot write there ({e.strerror or e}); choose another location or fix "
                            "the folder's permissions") from e


def require_writable_file(path: Path, option: str) -> None:
    """Make sure ``path`` can be written (its folder is created if needed); an ArgumentError otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ArgumentError(f"{option} {path}: is a folder; give a file name, e.g. {path / 'result.json'}")
    require_writable_folder(path.parent, option, path)
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):  # the file system does not say
        return
    if len(os.fsencode(path.name)) > limit:
        raise ArgumentError(f"{option} {path}: the file name is {len(os.fsencode(path.name))} bytes long, over "
                            f"the file system's limit of {limit}; choose a shorter name")

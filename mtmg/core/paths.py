"""Where the project keeps its shipped data, run outputs and caches.

Relative paths in configs and notebooks are resolved against the project root, so a notebook
behaves the same whether it is run from ``notebooks/``, by papermill, or from the command line.
``MTMG_RUNS`` and ``MTMG_CACHE`` move the outputs and caches elsewhere; a relative value is taken
from the project root too, so the notebooks (run in ``notebooks/``) and the command line share one store.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = PROJECT_ROOT / "data"
SPLITS_DIR = DATA_DIR / "splits"
"""Fixed splits of the shipped samples (committed, see data/splits/README.md)."""


def runs_dir() -> Path:
    """Root folder of run outputs (``runs/`` unless ``MTMG_RUNS`` is set; relative: from the project root)."""
    return _from_environment("MTMG_RUNS", "runs")


def cache_dir() -> Path:
    """Root folder of caches such as zero-shot heads and MiniCLIP weights (``cache/`` or ``MTMG_CACHE``)."""
    return _from_environment("MTMG_CACHE", "cache")


def _from_environment(variable: str, default: str) -> Path:
    return resolve(os.environ.get(variable) or default)


def resolve(path: str | os.PathLike) -> Path:
    """An absolute path: relative paths are taken from the project root; ``~`` is expanded."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p

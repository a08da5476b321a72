"""Errors raised by the dataset readers; each names the file, what was expected and how to fix it.

``DatasetNotFoundError`` (a ``FileNotFoundError``) means the layout itself is missing. Per-file problems
derive from :class:`SampleError`; with ``on_error="skip"`` a dataset skips exactly those and lists them
in its ``.skipped`` attribute. All are :class:`mtmg.core.errors.DataError`, so the command line prints them
as one line.
"""
from __future__ import annotations

from pathlib import Path

from mtmg.core.errors import ArgumentError, DataError


class DatasetNotFoundError(DataError, FileNotFoundError):
    """The dataset root, its expected folders or its split files are missing."""


class UnknownDatasetError(ArgumentError):
    """A dataset name that is not registered."""


class UnknownClassError(DataError, ValueError):
    """A class folder or class name that the dataset does not define."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)
        self.reason = message


class SampleError(DataError):
    """Mixin for problems with one sample's files; ``.path`` is the offending file, ``.reason`` the problem."""

    path: Path
    reason: str


def _init(self: SampleError, path: str | Path, message: str | None) -> None:
    if message is None:  # re-raised by a DataLoader worker: one string, the original traceback
        path, message = from_worker(str(path))
    self.path = Path(path)
    self.reason = message
    self.args = (f"{path}: {message}",)


def from_worker(text: str) -> tuple[str, str]:
    """(path, reason) of an error that a DataLoader worker re-raises as ``ErrorClass(traceback_text)``:
    the text ends with the line ``module.ErrorClass: path: reason``."""
    lines = text.strip().splitlines()
    _, _, last = (lines[-1] if lines else "").partition(": ")
    path, _, reason = last.partition(": ")
    return path, reason


class MissingFileError(SampleError, FileNotFoundError):
    """A file that the split or the metadata lists does not exist."""

    def __init__(self, path: str | Path, message: str | None = None) -> None:
        FileNotFoundError.__init__(self)
        _init(self, path, message)

    def __str__(self) -> str:
        return self.args[0]


class InvalidSampleError(SampleError, ValueError):
    """A file exists but its content is not what the layout promises."""

    def __init__(self, path: str | Path, message: str | None = None) -> None:
        ValueError.__init__(self)
        _init(self, path, message)


class CorruptFileError(InvalidSampleError):
    """The file cannot be decoded (truncated or not a GeoTIFF / image)."""


class BandCountError(InvalidSampleError):
    """The raster has a different number of bands than the layout defines."""


class DTypeError(InvalidSampleError):
    """The raster's data type differs from the layout's."""


class ShapeError(InvalidSampleError):
    """The raster's height and width differ from the layout's."""


class NonFiniteError(InvalidSampleError):
    """The raster contains NaN or infinite values."""


class LabelError(InvalidSampleError):
    """A label file or metadata row names an unknown class or is malformed."""

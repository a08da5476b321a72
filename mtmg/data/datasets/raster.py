"""Checked reading of GeoTIFFs and images: every failure becomes an error from :mod:`.errors`."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, UnidentifiedImageError
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from .errors import BandCountError, CorruptFileError, DTypeError, MissingFileError, NonFiniteError, ShapeError
from .layout import broken_link_note


def read_raster(
    path: Path,
    *,
    bands: int,
    dtype: str,
    shape: tuple[int, int] | None = None,
    out_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read all bands of a GeoTIFF as ``(bands, H, W)`` after checking count, dtype, shape and finiteness.

    ``shape`` is the native size the layout promises; ``out_shape`` resamples bilinearly (GDAL) on
    reading, and the result is rounded back to ``dtype`` for integer types.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "file not found; check that the dataset was extracted completely"
                               + broken_link_note(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                count, file_dtype, native = src.count, src.dtypes[0], (src.height, src.width)
                if count != bands:
                    raise BandCountError(path, f"has {count} bands, expected {bands}")
                if shape is not None and native != tuple(shape):
                    raise ShapeError(path, f"is {native[0]}x{native[1]} px, expected {shape[0]}x{shape[1]}")
                if out_shape is None or tuple(out_shape) == native:
                    array = src.read()
                else:
                    array = src.read(out_shape=(count, *out_shape), out_dtype="float32",
                                     resampling=Resampling.bilinear)
    except RasterioError as e:
        detail = f"{e} ({e.__cause__})" if e.__cause__ else str(e)
        raise CorruptFileError(path, f"cannot be decoded as a GeoTIFF (truncated or corrupt?): {detail}") from e
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise NonFiniteError(path, f"contains {bad} NaN or infinite values; expected finite {dtype} data")
    if file_dtype != dtype:
        raise DTypeError(path, f"has data type {file_dtype}, expected {dtype}")
    if array.dtype != np.dtype(dtype):
        info = np.iinfo(dtype)
        array = np.clip(np.rint(array), info.min, info.max).astype(dtype)
    return array


def read_image(path: Path) -> Image.Image:
    """Open an image file fully decoded as RGB."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "file not found; check that the dataset was extracted completely"
                               + broken_link_note(path))
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise CorruptFileError(path, f"cannot be decoded as an image (truncated or corrupt?): {e}") from e

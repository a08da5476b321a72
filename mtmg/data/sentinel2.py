"""Sentinel-2 band handling: the one place where band order, scaling and composites are defined.

Every dataset turns its raw reflectances (integers, reflectance x 10000) into a ``(13, H, W)`` array in
SSL4EO band order with :func:`to_ssl4eo`; the two model views are derived from that array only:

* MS view (student input): :func:`ms_view`, ``clamp(x / 10000, 0, 1)`` as float32, all 13 bands.
* RGB view (CLIP input): :func:`rgb_composite`, bands B04, B03, B02 scaled by ``255 / 3558`` for L1C
  products (EuroSAT, SEN12MS) or ``255 / 2000`` for L2A products (BigEarthNet), clipped to
  ``[0, 255]`` and truncated to uint8.

B10 (cirrus) is not part of L2A products; it is zero-filled so that every dataset gives 13 channels.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mtmg.core.checkpoint import atomic_write_text
from mtmg.core.config import DataSpec

SSL4EO_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)
"""Student input order (SSL4EO-S12, SEN12MS)."""

EUROSAT_FILE_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A",
)
"""Band order inside EuroSAT-MS GeoTIFFs: B8A is the last band."""

BIGEARTHNET_S2_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
)
"""The 12 L2A bands of BigEarthNet (no B10), one GeoTIFF each."""

SEN12MS_S2_BANDS: tuple[str, ...] = SSL4EO_BANDS
"""SEN12MS S2 patches store all 13 bands in SSL4EO order."""

BAND_RESOLUTION_M: dict[str, int] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20,
}
"""Native ground sampling distance of each band in metres."""

RGB_BANDS: tuple[str, str, str] = ("B04", "B03", "B02")
REFLECTANCE_SCALE = 10000.0
RGB_WHITE_POINT: dict[str, float] = {"L1C": 3558.0, "L2A": 2000.0}
"""Reflectance x 10000 that maps to 255 in the RGB composite, per processing level."""

Level = Literal["L1C", "L2A"]
ArrayLike = np.ndarray | torch.Tensor


def band_index(name: str) -> int:
    """Index of band ``name`` in SSL4EO order."""
    if name not in SSL4EO_BANDS:
        raise ValueError(f"unknown Sentinel-2 band {name!r}; expected one of {SSL4EO_BANDS}")
    return SSL4EO_BANDS.index(name)


def to_ssl4eo(array: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """Reorder a ``(C, H, W)`` array whose channels are ``bands`` into the 13 SSL4EO bands.

    Only B10 may be missing; it is zero-filled. The dtype is kept.
    """
    bands = tuple(bands)
    if array.ndim != 3 or array.shape[0] != len(bands):
        raise ValueError(f"array of shape {array.shape} does not match {len(bands)} band names {bands}")
    unknown = [b for b in bands if b not in SSL4EO_BANDS]
    if unknown or len(set(bands)) != len(bands):
        raise ValueError(f"band names must be distinct Sentinel-2 bands, got {bands}")
    missing = [b for b in SSL4EO_BANDS if b not in bands and b != "B10"]
    if missing:
        raise ValueError(f"bands {missing} are missing; only B10 may be absent (it is zero-filled)")
    out = np.zeros((len(SSL4EO_BANDS), *array.shape[1:]), dtype=array.dtype)
    for i, name in enumerate(SSL4EO_BANDS):
        if name in bands:
            out[i] = array[bands.index(name)]
    return out


def _check13(array13: ArrayLike) -> None:
    if array13.ndim != 3 or array13.shape[0] != len(SSL4EO_BANDS):
        raise ValueError(f"expected a (13, H, W) array in SSL4EO band order, got shape {tuple(array13.shape)}")


def ms_view(array13: ArrayLike, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Student input: float32 ``clamp(transform(x / 10000), 0, 1)`` of all 13 bands.

    ``transform`` (a resize or a random crop to the student's input size) sees the unclamped reflectances
    and the clamp comes last, as in the authors' pipeline (resize, then clamp). Computed in numpy for
    arrays and CPU tensors: a per-sample operation must not wait for torch's intra-op thread pool (with
    two threads, every tile would hand its few microseconds of work to a second thread, which on a busy
    machine costs milliseconds). Tensors on an accelerator stay there.
    """
    _check13(array13)
    if isinstance(array13, torch.Tensor) and array13.device.type != "cpu":
        out = array13.to(torch.float32) / REFLECTANCE_SCALE
    else:
        x = array13.numpy() if isinstance(array13, torch.Tensor) else np.asarray(array13)
        scaled = np.divide(x.astype(np.float32), np.float32(REFLECTANCE_SCALE))
        if transform is None:
            return torch.from_numpy(np.clip(scaled, 0.0, 1.0, out=scaled))
        out = torch.from_numpy(scaled)
    return (transform(out) if transform is not None else out).clamp_(0.0, 1.0)


def rgb_composite(array13: ArrayLike, level: Level) -> np.ndarray:
    """Teacher input: uint8 ``(H, W, 3)`` composite of B04, B03, B02 scaled to the level's white point."""
    _check13(array13)
    if level not in RGB_WHITE_POINT:
        raise ValueError(f"unknown processing level {level!r}; expected one of {tuple(RGB_WHITE_POINT)}")
    x = array13.numpy() if isinstance(array13, torch.Tensor) else np.asarray(array13)
    rgb = x[[band_index(b) for b in RGB_BANDS]].astype(np.float64) * (255.0 / RGB_WHITE_POINT[level])
    return np.clip(rgb, 0.0, 255.0).astype(np.uint8).transpose(1, 2, 0).copy()


def normalized_difference(array13: ArrayLike, a: str, b: str, eps: float = 1e-6) -> np.ndarray:
    """``(a - b) / (a + b)`` per pixel for two bands of a 13-band array (raw or MS view)."""
    _check13(array13)
    x = array13.numpy() if isinstance(array13, torch.Tensor) else np.asarray(array13)
    va = x[band_index(a)].astype(np.float64)
    vb = x[band_index(b)].astype(np.float64)
    return (va - vb) / (va + vb + eps)


def ndvi(array13: ArrayLike) -> np.ndarray:
    """Normalised difference vegetation index ``(B08 - B04) / (B08 + B04)``."""
    return normalized_difference(array13, "B08", "B04")


def ndwi(array13: ArrayLike) -> np.ndarray:
    """McFeeters water index ``(B03 - B08) / (B03 + B08)``."""
    return normalized_difference(array13, "B03", "B08")


# --- the bands a student was trained on ------------------------------------------------------------------

BANDS_FILE = "student_bands.json"
"""Written beside ``student.pt``: the bands the student was trained on and those that were zero-filled."""


def _base_dataset(dataset: Any) -> Any:
    """The reader under subsets and in-memory wrappers (their ``.dataset``)."""
    while not hasattr(dataset, "level") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset


def band_metadata(train: Any) -> dict[str, Any]:
    """The student's band record for its training data: the 13 SSL4EO bands, the training data's level,
    and ``zero_filled``: the bands that data does not have (B10 in L2A products such as BigEarthNet)."""
    level = getattr(_base_dataset(train), "level", None)
    return {"bands": list(SSL4EO_BANDS), "level": level, "zero_filled": ["B10"] if level == "L2A" else []}


def save_band_metadata(metadata: Mapping[str, Any], folder: str | Path) -> None:
    """Write :data:`BANDS_FILE` into the stage 2 folder (atomically)."""
    atomic_write_text(Path(folder) / BANDS_FILE, json.dumps(dict(metadata), indent=1) + "\n")


def read_band_metadata(folder: str | Path) -> dict[str, Any]:
    """The band record of the student in a stage 2 folder; a folder without one (older runs) counts as a
    student trained on all 13 recorded bands."""
    path = Path(folder) / BANDS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return {"bands": list(SSL4EO_BANDS), "level": None, "zero_filled": []}


def evaluation_spec(spec: DataSpec, metadata: Mapping[str, Any]) -> DataSpec:
    """``spec`` as the student should read it: SEN12MS with ``b10: zero`` when the student was trained
    without B10 and the spec does not choose (``options: {b10: real}`` keeps the recorded band)."""
    if spec.name == "sen12ms" and "b10" not in spec.options and "B10" in metadata.get("zero_filled", ()):
        return dataclasses.replace(spec, options={**spec.options, "b10": "zero"})
    return spec

"""Procedural 64 x 64 landscape scenes with compositional captions.

MiniCLIP (see :mod:`mtmg.method.miniclip`) is pretrained on these scenes, and its held-out zero-shot
classification of them is the *supported task* (the role ImageNet plays in the paper).

Every scene has one dominant land cover among ten EuroSAT-like concepts, procedural textures, an
optional secondary element (road, river, houses, trees, lake, fields), and one of three styles:
an oblique ground photo (sky band, perspective, haze; 55 %), a top-down aerial photo (15 %), or a
zoomed-out top-down satellite image (30 %; darker, bluish and low in contrast like Sentinel-2
composites). Captions
name the concept, the secondary element, the style and colour or weather words; their
vocabulary overlaps the EuroSAT class names. A scene is a pure function of ``(stream, seed,
index)``, so datasets are generated on the fly, need no storage and are bit-for-bit
reproducible (bump :data:`GENERATOR_VERSION` whenever the output changes: it keys the MiniCLIP
weights cache).
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mtmg.core import paths
from mtmg.core.checkpoint import atomic_write_bytes
from mtmg.core.device import single_thread

GENERATOR_VERSION = "4"
IMAGE_SIZE = 64
_MAP = 96  # side of the top-down ground map that every style is rendered from

CONCEPTS = ("fields", "forest", "shrubland", "highway", "industrial",
            "pasture", "orchard", "houses", "river", "lake")

SUPPORTED_CLASSNAMES = ["crop fields", "forest", "shrubland", "highway", "industrial buildings",
                        "pasture", "orchard", "houses", "river", "lake"]
SUPPORTED_TEMPLATES = ["a photo of {c}.", "a picture of {c}.", "a landscape photo of {c}.",
                       "an aerial photo of {c}."]
SUPPORTED_PROMPT_KEY = "synthetic_scenes"

# Phrases per concept: EuroSAT class names, their parts, and everyday synonyms.
_NOUNS: dict[str, list[str]] = {
    "fields": ["annual crop land", "crop fields", "crop land", "farm fields", "agricultural fields",
               "fields of annual crops", "cultivated fields"],
    "forest": ["forest", "a forest", "a dense forest", "woodland", "trees of a forest"],
    "shrubland": ["brushland or shrubland", "shrubland", "brushland", "scrubland with bushes",
                  "dry shrubland", "bushes and shrubs"],
    "highway": ["highway or road", "a highway", "a road", "a motorway", "a paved road", "a highway"],
    "industrial": ["industrial buildings or commercial buildings", "industrial buildings",
                   "commercial buildings", "an industrial area", "warehouses and factories",
                   "commercial buildings and parking lots"],
    "pasture": ["pasture land", "a pasture", "a meadow", "grassland", "pasture land with grass",
                "a grassy pasture"],
    "orchard": ["permanent crop land", "an orchard", "a vineyard", "rows of fruit trees",
                "an orchard with rows of trees", "permanent crops"],
    "houses": ["residential buildings or homes or apartments", "residential buildings", "homes",
               "houses", "apartments", "a residential area with houses", "a town with homes"],
    "river": ["a river", "a winding river", "a river", "a stream", "a river through the land"],
    "lake": ["lake or sea", "a lake", "the sea", "a lake", "the coast of the sea", "a large lake"],
}
_SECONDARY: dict[str, list[str]] = {
    "road": ["with a road", "crossed by a road", "next to a road"],
    "river": ["with a small river", "next to a river", "crossed by a stream"],
    "houses": ["with a few houses", "near some homes", "next to a village"],
    "trees": ["with some trees", "next to a forest", "near a patch of forest"],
    "lake": ["with a small lake", "next to a pond", "beside a lake"],
    "fields": ["next to crop fields", "with some fields", "near farm fields"],
}
# Secondary elements that would blur the concept (e.g. a road on a highway) are left out.
_EXCLUDED = {"fields": {"fields"}, "forest": {"trees"}, "highway": {"road"},
             "houses": {"houses"}, "river": {"river", "lake"}, "lake": {"lake", "river"},
             "orchard": {"trees"}}
_PREFIXES = {
    "ground": ["a photo of", "a landscape photo of", "a ground-level photo of", "a picture of",
               "a view of", "a scenic photo of"],
    "aerial": ["an aerial photo of", "an aerial view of", "a top-down photo of", "a drone photo of"],
    "satellite": ["a satellite photo of", "a satellite image of", "a satellite view of"],
}

_YY, _XX = np.mgrid[0:_MAP, 0:_MAP].astype(np.float32)
_C = (_MAP - 1) / 2.0


@dataclass(frozen=True)
class Scene:
    """One rendered scene: ``image`` is (64, 64, 3) uint8; ``concept`` indexes :data:`CONCEPTS`."""

    image: np.ndarray
    concept: int
    secondary: str | None
    style: str
    caption: str


# ---------------------------------------------------------------- texture primitives
def _noise(rng: np.random.Generator, cell: float, size: int = _MAP) -> np.ndarray:
    """Smooth value noise in [0, 1] with features about ``cell`` pixels wide."""
    n = int(size / cell) + 2
    grid = rng.random((n, n), dtype=np.float32)
    c = np.arange(size, dtype=np.float32) / cell
    i = c.astype(np.int64)
    f = c - i
    f = f * f * (3 - 2 * f)
    top = grid[i][:, i] * (1 - f) + grid[i][:, i + 1] * f
    bottom = grid[i + 1][:, i] * (1 - f) + grid[i + 1][:, i + 1] * f
    return top * (1 - f[:, None]) + bottom * f[:, None]


def _colour(rng: np.random.Generator, base: tuple[float, float, float], jitter: float = 0.04) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.normal(0, jitter, 3).astype(np.float32), 0, 1)


def _palette(rng: np.random.Generator, bases: list[tuple[float, float, float]], choice: np.ndarray,
             jitter: float = 0.04) -> np.ndarray:
    """(n, 3) colours: ``bases[choice]`` with independent jitter."""
    noise = rng.normal(0, jitter, (len(choice), 3)).astype(np.float32)
    return np.clip(np.asarray(bases, np.float32)[choice] + noise, 0, 1)


def _shade(colour: np.ndarray, field: np.ndarray) -> np.ndarray:
    """(H, W, 3) image of ``colour`` modulated by a brightness ``field``."""
    return colour[None, None, :] * field[..., None]


def _mix(img: np.ndarray, mask: np.ndarray, other: np.ndarray | np.floating) -> np.ndarray:
    """``other`` where ``mask`` (boolean, or a blend weight in [0, 1]), else ``img``."""
    if mask.dtype == bool:
        return np.where(mask[..., None], other, img)
    m = mask[..., None]
    return img * (1 - m) + other * m


class _Canvas:
    """The random source and scale of one ground map.

    Renderers give lengths in world units; a map pixel covers ``zoom`` world units, so a larger
    zoom shows more, smaller things (satellite images are zoomed out).
    """

    def __init__(self, rng: np.random.Generator, zoom: float = 1.0) -> None:
        self.rng, self.zoom = rng, zoom

    def noise(self, cell: float) -> np.ndarray:
        return _noise(self.rng, max(cell / self.zoom, 1.0))

    def fbm(self, cell: float, octaves: int = 3) -> np.ndarray:
        """Fractal noise in about [0, 1]: octaves of value noise, each half as wide and strong."""
        out = np.zeros((_MAP, _MAP), np.float32)
        weight, total = 1.0, 0.0
        for _ in range(octaves):
            out += weight * self.noise(max(cell, 1.5))
            total += weight
            cell, weight = cell / 2, weight / 2
        return out / total

    def rotated(self) -> tuple[np.ndarray, np.ndarray]:
        """World coordinates about the map centre, rotated by a random angle."""
        a = self.rng.uniform(0, np.pi)
        ca, sa = np.cos(a) * self.zoom, np.sin(a) * self.zoom
        return (_XX - _C) * ca + (_YY - _C) * sa, -(_XX - _C) * sa + (_YY - _C) * ca

    def blob(self, radius: float) -> np.ndarray:
        """Boolean mask of an irregular blob at a random place in the lower two thirds of the map."""
        cy, cx = self.rng.uniform(0.35 * _MAP, 0.85 * _MAP), self.rng.uniform(0.2 * _MAP, 0.8 * _MAP)
        d = np.hypot(_YY - cy, _XX - cx) * self.zoom / radius
        return d + 0.6 * (self.noise(12) - 0.5) < 1

    def curve(self, width: float) -> np.ndarray:
        """Signed distance (world units) to a meandering band of ``width``: negative inside."""
        rng = self.rng
        u, v = self.rotated()
        f1, f2 = rng.uniform(0.02, 0.06), rng.uniform(0.07, 0.12)
        centre = (rng.uniform(5, 14) * np.sin(f1 * u + rng.uniform(0, 6.3))
                  + rng.uniform(1, 4) * np.sin(f2 * u + rng.uniform(0, 6.3)) + rng.uniform(-12, 12))
        return np.abs(v - centre) - width / 2


# ---------------------------------------------------------------- concept renderers
_CROP_COLOURS = {"green": (0.33, 0.52, 0.2), "golden": (0.8, 0.68, 0.36), "brown": (0.5, 0.38, 0.27),
                 "pale": (0.74, 0.66, 0.52), "dark green": (0.2, 0.38, 0.15)}


def _fields(cv: _Canvas) -> tuple[np.ndarray, str]:
    rng = cv.rng
    u, v = cv.rotated()
    cuts_u = np.cumsum(rng.uniform(14, 40, 8)) - 100
    cuts_v = np.cumsum(rng.uniform(14, 40, 8)) - 100
    parcel = np.searchsorted(cuts_u, u) * 9 + np.searchsorted(cuts_v, v)
    names = list(_CROP_COLOURS)
    choice = rng.choice(len(names), 81, p=[0.2, 0.15, 0.3, 0.25, 0.1])
    palette = _palette(rng, list(_CROP_COLOURS.values()), choice, 0.05)
    stripes = 1 + rng.uniform(0, 0.15, 81)[parcel] * np.sin(u * rng.uniform(1.2, 2.5))
    img = palette[parcel] * (stripes * (0.9 + 0.2 * cv.noise(6)))[..., None]
    border = (parcel != np.roll(parcel, 1, 0)) | (parcel != np.roll(parcel, 1, 1))
    img = _mix(img, border, img * 0.7)
    counts = np.bincount(choice[np.unique(parcel)], minlength=len(names))
    return img, names[int(counts.argmax())]


def _forest(cv: _Canvas) -> tuple[np.ndarray, str]:
    rng = cv.rng
    autumn = rng.random() < 0.15
    base = _colour(rng, (0.14, 0.27, 0.11) if not autumn else (0.45, 0.3, 0.12), 0.03)
    crowns = cv.noise(rng.uniform(1.8, 3.2))
    img = _shade(base, 0.55 + 0.7 * crowns * (0.7 + 0.6 * cv.fbm(20, 2)))
    return img, "autumn" if autumn else str(rng.choice(["dark green", "green"]))


def _shrubland(cv: _Canvas) -> tuple[np.ndarray, str]:
    rng = cv.rng
    ground = _colour(rng, [(0.62, 0.55, 0.4), (0.52, 0.5, 0.36), (0.56, 0.46, 0.36)][rng.integers(3)])
    img = _shade(ground, 0.8 + 0.35 * cv.fbm(24))
    bushes = cv.noise(rng.uniform(2, 4)) * (0.6 + 0.8 * cv.noise(20)) > rng.uniform(0.55, 0.75)
    img = _mix(img, bushes, _shade(_colour(rng, (0.26, 0.3, 0.16)), 0.8 + 0.4 * cv.noise(2)))
    return img, str(rng.choice(["dry", "brown", "olive"]))


def _pasture(cv: _Canvas) -> tuple[np.ndarray, str]:
    rng = cv.rng
    base = _colour(rng, [(0.36, 0.56, 0.22), (0.42, 0.58, 0.26), (0.3, 0.5, 0.2)][rng.integers(3)])
    img = _shade(base, 0.8 + 0.3 * cv.fbm(30, 2) + 0.1 * cv.noise(1.5))
    if rng.random() < 0.5:  # hedgerows between paddocks
        u, v = cv.rotated()
        period = rng.uniform(30, 50)
        hedge = (np.abs((v % period) - period / 2) < 1.2) | (np.abs((u % period) - period / 2) < 1.0)
        img = _mix(img, hedge, _shade(_colour(rng, (0.14, 0.27, 0.11)), 0.8 + 0.4 * cv.noise(2)))
    return img, str(rng.choice(["green", "lush green", "bright green"]))


def _road(cv: _Canvas, img: np.ndarray, width: float, lanes: bool) -> np.ndarray:
    rng = cv.rng
    u, v = cv.rotated()
    v = v + rng.uniform(-15, 15)
    asphalt = _shade(_colour(rng, (0.45, 0.45, 0.46), 0.05), 0.92 + 0.12 * cv.noise(3))
    img = _mix(img, np.abs(v) < width / 2 + 1.5, _colour(rng, (0.6, 0.58, 0.5)))
    img = _mix(img, np.abs(v) < width / 2, asphalt)
    if lanes:
        dashes = (np.abs(v) < 0.6) & (np.sin(u * 0.6) > 0)
        img = _mix(img, dashes | (np.abs(np.abs(v) - width / 2 + 1) < 0.5), np.float32(0.9))
    return img


def _highway(cv: _Canvas) -> tuple[np.ndarray, str]:
    rng = cv.rng
    img, _ = [_fields, _pasture, _shrubland][rng.integers(3)](cv)
    img = _road(cv, img, rng.uniform(7, 12), lanes=True)
    if rng.random() < 0.3:
        img = _road(cv, img, rng.uniform(4, 7), lanes=rng.random() < 0.5)
    return img, "grey"


_IDS = 251  # building colours per scene; buildings share them by a hash of their grid cell


def _blocks(cv: _Canvas, cell_range: tuple[float, float], fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Rectangular building footprints on a rotated grid: (mask, building id)."""
    u, v = cv.rotated()
    cu, cv_ = cv.rng.uniform(*cell_range), cv.rng.uniform(*cell_range)
    iu, iv = np.floor(u / cu), np.floor(v / cv_)
    fu, fv = u / cu - iu, v / cv_ - iv
    ident = ((iu * 7919 + iv * 104729) % _IDS).astype(np.int64)
    inset = (1 - fill) / 2
    mask = (fu > inset) & (fu < 1 - inset) & (fv > inset) & (fv < 1 - inset)
    return mask, ident


def _industrial(cv: _Canvas) -> tuple[np.ndarray, str]:
    rng = cv.rng
    img = _shade(_colour(rng, (0.52, 0.52, 0.5)), 0.85 + 0.25 * cv.noise(4))
    mask, ident = _blocks(cv, (14, 28), rng.uniform(0.6, 0.85))
    roofs = _palette(rng, [(0.85, 0.85, 0.85), (0.62, 0.63, 0.64), (0.5, 0.56, 0.66), (0.58, 0.38, 0.32)],
                     rng.choice(4, _IDS, p=[0.45, 0.3, 0.15, 0.1]), 0.03)
    built = mask & (rng.random(_IDS) < 0.8)[ident]
    img = _mix(img, built, roofs[ident])
    shift = max(1, round(2 / cv.zoom))
    shadow = np.roll(built & ~np.roll(built, (shift, shift), (0, 1)), (shift, shift), (0, 1)) & ~built
    img = _mix(img, shadow, img * 0.55)
    return img, str(rng.choice(["grey", "white", "grey"]))


def _houses(cv: _Canvas) -> tuple[np.ndarray, str]:
    rng = cv.rng
    garden = _shade(_colour(rng, (0.33, 0.46, 0.24)), 0.75 + 0.45 * cv.noise(2.5))
    street_u, street_v = cv.rotated()
    period = rng.uniform(16, 26)
    streets = (np.abs(street_u % period - 1.5) < 1.5) | (np.abs(street_v % period - 1.5) < 1.5)
    mask, ident = _blocks(cv, (5, 8), rng.uniform(0.5, 0.75))
    roof_kind = rng.choice(4, _IDS, p=[0.4, 0.25, 0.2, 0.15])
    roofs = _palette(rng, [(0.66, 0.3, 0.22), (0.78, 0.48, 0.3), (0.45, 0.32, 0.26), (0.55, 0.55, 0.56)],
                     roof_kind)
    img = _mix(garden, mask & ~streets, roofs[ident])
    img = _mix(img, streets, _colour(rng, (0.5, 0.5, 0.5)))
    return img, "grey" if np.bincount(roof_kind).argmax() == 3 else "red-roofed"


def _orchard(cv: _Canvas) -> tuple[np.ndarray, str]:
    rng = cv.rng
    ground = _colour(rng, [(0.62, 0.52, 0.38), (0.5, 0.56, 0.32), (0.72, 0.64, 0.5)][rng.integers(3)])
    img = _shade(ground, 0.85 + 0.25 * cv.fbm(16, 2))
    u, v = cv.rotated()
    period = rng.uniform(4, 7)
    if rng.random() < 0.5:  # trees on a grid
        r = period * rng.uniform(0.25, 0.4)
        mask = np.hypot(u % period - period / 2, v % (period * 1.1) - period * 0.55) < r
        words = "rows of"
    else:  # vine rows
        mask = np.abs(v % period - period / 2) < period * rng.uniform(0.15, 0.3)
        words = "striped"
    img = _mix(img, mask, _shade(_colour(rng, (0.2, 0.36, 0.14)), 0.8 + 0.4 * cv.noise(2)))
    return img, words


_WATER = {"blue": (0.16, 0.32, 0.52), "dark blue": (0.08, 0.16, 0.3), "turquoise": (0.15, 0.42, 0.45),
          "muddy": (0.36, 0.36, 0.26)}


def _water(cv: _Canvas) -> tuple[np.ndarray, str]:
    rng = cv.rng
    name = str(rng.choice(["blue", "dark blue", "blue", "turquoise", "muddy"]))
    u, _ = cv.rotated()
    waves = 0.93 + 0.05 * np.sin(u * rng.uniform(0.8, 1.6)) * cv.noise(6) + 0.06 * cv.noise(10)
    return _shade(_colour(rng, _WATER[name], 0.03), waves), name


def _land(cv: _Canvas) -> np.ndarray:
    return [_fields, _pasture, _forest, _shrubland][cv.rng.integers(4)](cv)[0]


def _river(cv: _Canvas) -> tuple[np.ndarray, str]:
    rng = cv.rng
    img = _land(cv)
    dist = cv.curve(rng.uniform(7, 16))
    img = _mix(img, dist < 2, _shade(_colour(rng, (0.62, 0.58, 0.45)), 0.9 + 0.2 * cv.noise(3)))
    water, word = _water(cv)
    return _mix(img, dist < 0, water), word


def _lake(cv: _Canvas) -> tuple[np.ndarray, str]:
    rng = cv.rng
    water, word = _water(cv)
    if rng.random() < 0.3:
        return water, word
    _, v = cv.rotated()
    shore = v - rng.uniform(-50, -15) + 12 * (cv.fbm(30, 2) - 0.5)
    img = _mix(_land(cv), shore > -2, _colour(rng, (0.8, 0.75, 0.6)))
    return _mix(img, shore > 0, water), word


_RENDER: dict[str, Callable[[_Canvas], tuple[np.ndarray, str]]] = {
    "fields": _fields, "forest": _forest, "shrubland": _shrubland, "highway": _highway,
    "industrial": _industrial, "pasture": _pasture, "orchard": _orchard, "houses": _houses,
    "river": _river, "lake": _lake,
}


def _secondary(cv: _Canvas, img: np.ndarray, kind: str) -> np.ndarray:
    """Overlay a smaller secondary element on the ground map."""
    rng = cv.rng
    if kind == "road":
        return _road(cv, img, rng.uniform(3, 5), lanes=False)
    if kind == "river":
        return _mix(img, cv.curve(rng.uniform(3, 6)) < 0, _water(cv)[0])
    region = cv.blob(rng.uniform(12, 20))
    other = {"houses": _houses, "trees": _forest, "lake": _water, "fields": _fields}[kind](cv)[0]
    return _mix(img, region, other)


# ---------------------------------------------------------------- styles
def _ground_photo(rng: np.random.Generator, ground: np.ndarray) -> tuple[np.ndarray, str]:
    """Oblique view: perspective projection of the ground map, sky band, distant hills, haze."""
    s = IMAGE_SIZE
    horizon = int(rng.integers(10, 28))
    overcast = rng.random() < 0.3
    sky_top = _colour(rng, (0.62, 0.64, 0.68) if overcast else (0.3, 0.5, 0.85), 0.04)
    sky_low = _colour(rng, (0.78, 0.79, 0.8) if overcast else (0.72, 0.8, 0.9), 0.03)
    rows = np.arange(s, dtype=np.float32)[:, None]
    cols = np.arange(s, dtype=np.float32)[None, :]
    t = np.clip((rows - horizon + 1) / (s - horizon), 1e-3, 1)  # 1 at the bottom, ~0 at the horizon
    z_max = rng.uniform(3, 6)
    z = np.minimum(1 / t, 3 * z_max)
    map_row = ((_MAP - 1) * (1 - (z - 1) / (z_max - 1))).astype(np.int64) % _MAP
    map_col = (_MAP / 2 + (cols - s / 2) * z * rng.uniform(0.6, 1.0) + rng.uniform(-20, 20)).astype(np.int64) % _MAP
    img = ground[np.broadcast_to(map_row, (s, s)), np.broadcast_to(map_col, (s, s))]
    haze = rng.uniform(0.25, 0.9)
    fade = np.maximum(haze * (1 - t) ** 2, np.clip((z - z_max) / z_max, 0, 1))
    img = _mix(img, np.broadcast_to(fade, (s, s)), sky_low)
    sky_t = np.clip(rows / max(horizon, 1), 0, 1)[..., None]
    sky = np.broadcast_to(sky_top * (1 - sky_t) + sky_low * sky_t, (s, s, 3))
    sky = _mix(sky, _noise(rng, 10, s) > (0.45 if overcast else 0.7), np.float32(0.9))
    img = np.where((rows < horizon)[..., None], sky, img)
    if rng.random() < 0.5:  # distant hills or a tree line on the horizon
        top = horizon - 2 - 6 * _noise(rng, 16, s)[0]
        hills = (rows >= top[None, :]) & (rows < horizon)
        img = _mix(img, hills, sky_low * 0.6 + ground.mean((0, 1)) * 0.3)
    words = ["on a hazy day"] if haze > 0.7 else []
    words += ["under a cloudy sky", "on a cloudy day"] if overcast else ["under a blue sky", "on a sunny day"]
    return img, str(rng.choice(words))


def _top_down(rng: np.random.Generator, ground: np.ndarray, satellite: bool) -> np.ndarray:
    """Top-down view of the ground map.

    Satellite images show the whole map, slightly blurred, and look like Sentinel-2 composites:
    darker, hazy, bluish and less saturated. Aerial photos are closer crops.
    """
    if satellite:
        ground = (ground[:-1, :-1] + ground[1:, :-1] + ground[:-1, 1:] + ground[1:, 1:]) / 4
    step = (len(ground) - 1) / IMAGE_SIZE if satellite else rng.choice([1.0, 1.25, 1.5])
    r0, c0 = rng.uniform(0, len(ground) - IMAGE_SIZE * step, 2)
    idx = np.arange(IMAGE_SIZE) * step
    img = ground[(r0 + idx).astype(np.int64)[:, None], (c0 + idx).astype(np.int64)[None, :]]
    if rng.random() < 0.5:
        img = img.transpose(1, 0, 2)
    if satellite:
        grey = img.mean(-1, keepdims=True)
        img = img + rng.uniform(0.2, 0.5) * (grey - img)
        tint = np.array([0.05, 0.08, 0.15], np.float32) * rng.uniform(0.6, 1.4) + rng.normal(0, 0.015, 3)
        img = img * rng.uniform(0.35, 0.75) + tint.astype(np.float32)
    return img


def render_scene(rng: np.random.Generator, concept: int | None = None) -> Scene:
    """Render one scene from ``rng``; ``concept`` (index into :data:`CONCEPTS`) is random if None."""
    if concept is None:
        concept = int(rng.integers(len(CONCEPTS)))
    name = CONCEPTS[concept]
    style = str(rng.choice(["ground", "aerial", "satellite"], p=[0.55, 0.15, 0.3]))
    cv = _Canvas(rng, rng.uniform(1.0, 2.5) if style == "satellite" else 1.0)
    ground, colour = _RENDER[name](cv)
    secondary = None
    if rng.random() < 0.5:
        options = [k for k in _SECONDARY if k not in _EXCLUDED.get(name, set())]
        secondary = options[int(rng.integers(len(options)))]
        ground = _secondary(cv, ground, secondary)
    condition = ""
    if style == "ground":
        img, condition = _ground_photo(rng, ground)
    else:
        img = _top_down(rng, ground, style == "satellite")
    img = img * rng.uniform(0.85, 1.15)
    image = np.clip(img * 255 + rng.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8)
    noun = str(rng.choice(_NOUNS[name]))
    if rng.random() < 0.4:
        noun = _with_adjective(noun, colour)
    parts = [str(rng.choice(_PREFIXES[style])), noun]
    if secondary is not None:
        parts.append(str(rng.choice(_SECONDARY[secondary])))
    if condition and rng.random() < 0.5:
        parts.append(condition)
    return Scene(image, concept, secondary, style, " ".join(parts) + ".")


def _with_adjective(noun: str, adjective: str) -> str:
    """Insert an adjective after a leading article ("a forest" -> "a dark green forest")."""
    words = noun.split(" ")
    if words[0] in ("a", "an", "the"):
        article = words[0] if words[0] == "the" else ("an" if adjective[0] in "aeiou" else "a")
        return " ".join([article, adjective, *words[1:]])
    return f"{adjective} {noun}"


def scene(stream: int, seed: int, index: int, concept: int | None = None) -> Scene:
    """The scene at ``index`` of the stream ``(stream, seed)``: a pure function of its arguments."""
    return render_scene(np.random.default_rng([stream, seed, index]), concept)


_CAPTION_STREAM = 0
_SUPPORTED_STREAM = 1
SUPPORTED_SPLITS = {"train": (0, 2000), "val": (1, 500), "test": (2, 1000)}  # split -> (seed, size)


def supported_images(seed: int, num_samples: int) -> np.ndarray:
    """Every scene of a supported-task split as one uint8 (N, 64, 64, 3) array.

    Rendering costs milliseconds per scene and every stage reads the same splits, so the array is
    rendered once and kept in the cache folder (``cache/synthetic/``, or under ``$MTMG_CACHE``), named by
    the generator version, the split's seed and its size; a missing or unreadable file is rendered again."""
    path = paths.cache_dir() / "synthetic" / f"supported-v{GENERATOR_VERSION}-seed{seed}-n{num_samples}.npy"
    shape = (num_samples, 64, 64, 3)
    if path.is_file():
        try:
            images = np.load(path, allow_pickle=False)
            if images.shape == shape and images.dtype == np.uint8:
                return images
            warnings.warn(f"{path}: expected uint8 scenes of shape {shape}, found {images.dtype} {images.shape}; "
                          "rendering them again", stacklevel=2)
        except (OSError, ValueError) as exc:
            warnings.warn(f"{path}: unreadable ({exc}); rendering the scenes again", stacklevel=2)
    with single_thread():
        images = np.stack([scene(_SUPPORTED_STREAM, seed, i, i % len(CONCEPTS)).image for i in range(num_samples)])
    buffer = io.BytesIO()
    np.save(buffer, images, allow_pickle=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return images


def _to_output(image: np.ndarray, transform: Callable[[Image.Image], Any] | None) -> Any:
    if transform is None:
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return transform(Image.fromarray(image))


class SyntheticCaptions(Dataset):
    """(image, caption) pairs for contrastive pretraining, rendered on the fly from ``(seed, index)``.

    The image is a uint8 (3, 64, 64) tensor, or ``transform(PIL image)`` when a transform is given.
    """

    def __init__(self, num_samples: int, seed: int = 0,
                 transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.num_samples, self.seed, self.transform = num_samples, seed, transform

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Any, str]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} synthetic captions")
        sc = scene(_CAPTION_STREAM, self.seed, index)
        return _to_output(sc.image, self.transform), sc.caption


class SyntheticScenes(Dataset):
    """The supported task: 10-way classification of fresh scenes, balanced over the concepts.

    Splits use fixed seeds in a stream of their own, so they never overlap the pretraining data.
    Items follow the dataset contract: ``{"rgb", "target", "id"}``.
    """

    classes = list(SUPPORTED_CLASSNAMES)
    classnames = list(SUPPORTED_CLASSNAMES)
    templates = list(SUPPORTED_TEMPLATES)
    multilabel = False
    prompt_key = SUPPORTED_PROMPT_KEY

    def __init__(self, split: str = "test", rgb_transform: Callable[[Image.Image], Any] | None = None,
                 num_samples: int | None = None) -> None:
        if split not in SUPPORTED_SPLITS:
            raise ValueError(f"unknown split {split!r} for the synthetic scenes; use one of {sorted(SUPPORTED_SPLITS)}")
        self.split = split
        self.seed, default_size = SUPPORTED_SPLITS[split]
        self.num_samples = default_size if num_samples is None else num_samples
        self.rgb_transform = rgb_transform
        self._images: np.ndarray | None = None  # the split's rendered scenes, read on first use

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} synthetic scenes")
        if self._images is None:
            self._images = supported_images(self.seed, self.num_samples)
        return {"rgb": _to_output(self._images[index], self.rgb_transform), "target": index % len(CONCEPTS),
                "id": f"synthetic-{self.split}-{index:05d}"}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """The scenes at ``indices`` (a DataLoader's batch), built with one torch thread (per-sample work)."""
        with single_thread():
            return [self[i] for i in indices]


class SyntheticDataset(SyntheticScenes):
    """:class:`SyntheticScenes` under the signature of the dataset registry
    (``get_dataset("synthetic", "", split)``): there is no root to read, and no MS view."""

    def __init__(self, root: str = "", split: str = "test",
                 rgb_transform: Callable[[Image.Image], Any] | None = None, ms_transform: Any = None,
                 num_samples: int | None = None) -> None:
        if ms_transform is not None:
            raise ValueError("the synthetic scenes are RGB only; drop ms_transform")
        super().__init__(split, rgb_transform, num_samples)

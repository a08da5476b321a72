"""Embedding a scene window by window, its zero-shot map, text and example search, and the index check.

:func:`embed_scene` reads every window of a scene (:mod:`mtmg.data.scene`) once and embeds it with each
encoder; :func:`classify` turns the embeddings into per-window class, probability and margin to the runner-up
(softmax of the zero-shot logits); :func:`search_text` and :func:`search_example` rank windows by cosine
similarity to a query's text embedding or to one window's embedding (possibly of another encoder: RGB against
MS); :func:`index_check` compares the map with spectral indices computed from the same bands, without labels.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform
from tqdm import tqdm

from mtmg.core.errors import ArgumentError
from mtmg.data.scene import Scene, index_fractions, iter_windows, open_scene, window_grid
from mtmg.data.sentinel2 import Level
from mtmg.mapping.encoders import Prompts, SceneEncoders, mapping_classes

MIN_VALID = 0.5
"""Windows with a smaller share of valid (not nodata) pixels are skipped."""
INDEX_SHARE = 0.8
"""A window is 'mostly water' (NDWI > 0) or 'mostly vegetation' (NDVI > 0.5) on at least this share of its
valid pixels."""


@dataclass
class SceneEmbedding:
    """Every window of a scene and the embeddings of the kept ones.

    ``windows``: one row per window of the grid, skipped ones included (``skipped`` True, no embedding);
    ``embeddings[name]``: (kept windows, D) float32 in the order of the kept rows; ``seconds``: reading time
    and each encoder's model time.
    """

    path: Path
    crs: object
    transform: Affine
    level: Level
    level_source: str
    window: int
    stride: int
    shape: tuple[int, int]
    windows: pd.DataFrame
    embeddings: dict[str, torch.Tensor]
    seconds: dict[str, float] = field(default_factory=dict)
    filled: tuple[str, ...] = ()
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    prompts: Prompts | None = None
    bands: tuple[str, ...] | None = None

    @property
    def kept(self) -> pd.DataFrame:
        """The rows of the windows that were embedded."""
        return self.windows[~self.windows["skipped"]]

    @property
    def map_transform(self) -> Affine:
        """The scene's transform scaled by the stride: one pixel per window (the window's top-left cell)."""
        return self.transform @ Affine.scale(self.stride)

    def open(self) -> Scene:
        """The scene again, as it was read (for thumbnails; its warnings were given the first time)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return open_scene(self.path, level=self.level, bands=self.bands)


def _window_rows(scene: Scene, windows: list, lonlat: np.ndarray) -> pd.DataFrame:
    res = scene.transform.a
    rows = []
    for (w, fractions), (lon, lat) in zip(windows, lonlat):
        x_min, y_max = scene.transform @ (w.x, w.y)
        rows.append({"row": w.row, "col": w.col, "x_min": x_min, "y_min": y_max - w.size * res,
                     "x_max": x_min + w.size * res, "y_max": y_max, "lon": lon, "lat": lat,
                     "valid_fraction": w.valid_fraction, "skipped": fractions is None,
                     **(fractions or {"water_fraction": np.nan, "vegetation_fraction": np.nan})})
    return pd.DataFrame(rows)


def embed_scene(scene: str | Path | Scene, encoders: SceneEncoders, *, stride: int | None = None,
                level: Level | None = None, bands: Sequence[str] | None = None, min_valid: float = MIN_VALID,
                progress: bool = True) -> SceneEmbedding:
    """Read every window of ``scene`` (windows of ``encoders.window`` pixels every ``stride``) and embed the
    kept ones with every encoder, in batches of ``encoders.batch_size``."""
    if not 0.0 <= min_valid <= 1.0:
        raise ArgumentError(f"min_valid {min_valid}: expected a share between 0 and 1")
    own = not isinstance(scene, Scene)
    sc = open_scene(scene, level=level, bands=bands, student_bands=encoders.band_record) if own else scene
    try:
        size = encoders.window
        stride = stride or size
        rows, cols = window_grid(sc, size, stride)
        chunks: dict[str, list[torch.Tensor]] = {n: [] for n in encoders.towers}
        seconds = {"read": 0.0, **{n: 0.0 for n in encoders.towers}}
        windows, batch = [], []

        def flush() -> None:
            for name in encoders.towers:
                t = time.perf_counter()
                chunks[name].append(encoders.embed(name, batch, sc.level))
                seconds[name] += time.perf_counter() - t
            batch.clear()

        bar = tqdm(total=rows * cols, desc="windows", unit="win", disable=not progress)
        it = iter_windows(sc, size, stride, min_valid=min_valid)
        while True:
            t = time.perf_counter()
            item = next(it, None)
            seconds["read"] += time.perf_counter() - t
            if item is None:
                break
            win, array, valid = item
            windows.append((win, None if array is None else index_fractions(array, valid)))
            if array is not None:
                batch.append(array)
                if len(batch) == encoders.batch_size:
                    flush()
            bar.update()
        if batch:
            flush()
        bar.close()
        centres = [sc.transform @ (w.x + w.size / 2, w.y + w.size / 2) for w, _ in windows]
        lon, lat = warp_transform(sc.crs, "EPSG:4326", [c[0] for c in centres], [c[1] for c in centres])
        table = _window_rows(sc, windows, np.column_stack([lon, lat]))
        dim = {n: (torch.cat(c) if c else torch.zeros(0, 0)) for n, c in chunks.items()}
        return SceneEmbedding(sc.path, sc.crs, sc.transform, sc.level, sc.level_source, size, stride, (rows, cols),
                              table, dim, seconds, sc.filled, bands=tuple(bands) if bands else None)
    finally:
        if own:
            sc.close()


@torch.no_grad()
def classify(emb: SceneEmbedding, encoders: SceneEncoders, prompts: Prompts | None = None) -> SceneEmbedding:
    """Add ``<encoder>_class``, ``<encoder>_prob`` and ``<encoder>_margin`` (probability minus the runner-up's)
    to ``emb.windows`` for every encoder, and the (kept windows, classes) probabilities to ``emb.probs``."""
    prompts = prompts or encoders.prompts
    head = encoders.head(prompts)
    kept = ~emb.windows["skipped"].to_numpy()
    for name, e in emb.embeddings.items():
        probs = torch.softmax(head(e), dim=-1).numpy() if len(e) else np.zeros((0, len(prompts.classes)))
        emb.probs[name] = probs.astype(np.float32)
        top = np.sort(probs, axis=1)[:, ::-1] if len(probs) else np.zeros((0, 2))
        cls = np.full(len(emb.windows), None, dtype=object)
        p = np.full(len(emb.windows), np.nan)
        margin = np.full(len(emb.windows), np.nan)
        cls[kept] = [prompts.classes[i] for i in probs.argmax(axis=1)] if len(probs) else []
        p[kept] = top[:, 0] if len(probs) else []
        margin[kept] = (top[:, 0] - top[:, 1]) if probs.shape[1] > 1 else (top[:, 0] if len(probs) else [])
        emb.windows[f"{name}_class"], emb.windows[f"{name}_prob"], emb.windows[f"{name}_margin"] = cls, p, margin
    emb.prompts = prompts
    return emb


def _ranked(emb: SceneEmbedding, scores: torch.Tensor, k: int) -> pd.DataFrame:
    if k < 1:
        raise ArgumentError(f"k {k}: expected at least 1 window")
    kept = emb.kept.reset_index(drop=True)
    order = torch.argsort(scores, descending=True)[:k].numpy()
    top = kept.iloc[order].copy()
    top.insert(0, "score", scores[order].numpy())
    top.insert(0, "rank", np.arange(1, len(top) + 1))
    return top.reset_index(drop=True)


def _encoder(emb: SceneEmbedding, name: str) -> torch.Tensor:
    if name not in emb.embeddings:
        raise ArgumentError(f"encoder {name!r} was not run on this scene; run it with {sorted(emb.embeddings)}")
    return F.normalize(emb.embeddings[name], dim=-1)


def search_text(emb: SceneEmbedding, encoders: SceneEncoders, query: str, *, encoder: str = "student",
                k: int = 10) -> pd.DataFrame:
    """The ``k`` windows whose ``encoder`` embedding is closest (cosine) to the text embedding of ``query``."""
    if not query.strip():
        raise ArgumentError("the query is empty; give a text such as 'a tidal salt marsh'")
    return _ranked(emb, _encoder(emb, encoder) @ encoders.text([query])[0], k)


def search_example(emb: SceneEmbedding, row: int, col: int, *, source: str = "patched", target: str = "student",
                   k: int = 10) -> pd.DataFrame:
    """The ``k`` windows whose ``target`` embedding is closest to window (``row``, ``col``)'s ``source``
    embedding: search by example, also across RGB and MS (``source="patched"``, ``target="student"``)."""
    kept = emb.kept.reset_index(drop=True)
    hit = kept.index[(kept["row"] == row) & (kept["col"] == col)]
    if len(hit) == 0:
        raise ArgumentError(f"window ({row}, {col}) is not a mapped window of this scene (grid {emb.shape[0]} x "
                            f"{emb.shape[1]}; skipped windows cannot be examples)")
    query = _encoder(emb, source)[int(hit[0])]
    return _ranked(emb, _encoder(emb, target) @ query, k)


def index_check(emb: SceneEmbedding, share: float = INDEX_SHARE) -> pd.DataFrame:
    """Agreement of each encoder's map with the spectral indices, without labels: windows mostly water
    (NDWI > 0 on ``share`` of their valid pixels) predicted as a water class, and windows mostly vegetation
    (NDVI > 0.5 on ``share``) predicted as neither water nor built-up. One row per encoder and check:
    ``windows`` (how many qualify), ``agree`` (how many agree) and ``rate``."""
    if emb.prompts is None:
        raise ArgumentError("classify the scene first (mtmg.mapping.scenemap.classify)")
    groups = mapping_classes(emb.prompts.classes)
    if not groups["water"]:
        raise ArgumentError(f"the classes {list(emb.prompts.classes)} have no water class (River, SeaLake, ...); "
                            "the index check needs the profile's task classes")
    kept = emb.kept
    water = kept[kept["water_fraction"] >= share]
    vegetation = kept[kept["vegetation_fraction"] >= share]
    rows = []
    for name in emb.embeddings:
        col = f"{name}_class"
        for check, subset, ok in (
                ("water windows predicted as water", water, water[col].isin(groups["water"])),
                ("vegetation windows not predicted as water or built-up", vegetation,
                 ~vegetation[col].isin(groups["water"] + groups["built"]))):
            n, agree = len(subset), int(ok.sum())
            rows.append({"encoder": name, "check": check, "windows": n, "agree": agree,
                         "rate": agree / n if n else float("nan")})
    return pd.DataFrame(rows)

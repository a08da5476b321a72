"""Data views behind the book's figures: raw tiles, class spectra, the embedding sets of the gap
analysis and retrieval examples, all read from a profile's paired dataset or its embeddings."""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtmg.core import checkpoint
from mtmg.data.sentinel2 import REFLECTANCE_SCALE, SSL4EO_BANDS
from mtmg.data.tasks import open_split, sample_ids
from mtmg.evaluation.gap import reduce_2d
from mtmg.runs.profiles import Profile
from mtmg.runs.stages import Embeddings, subset_indices


def open_paired(prof: Profile, split: str | None = None, rgb_transform: Any = None, ms_transform: Any = None) -> Any:
    """The paired RGB/MS dataset of chapters 3-4 (:attr:`Profile.embed_data`), one split."""
    return open_split(prof.embed_data, split or prof.embeddings.split, rgb_transform, ms_transform)


def embedding_sets(emb: Embeddings) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """The four sets of chapter 4 by display name, and their class-name labels."""
    names = emb.classnames
    image_labels = [names[i] for i in emb.labels]
    sets = {"text (class prompts)": emb.text, "RGB, zero-shot CLIP": emb.rgb_zeroshot,
            "RGB, patched CLIP": emb.rgb_patched, "MS, student": emb.ms_student}
    labels = {"text (class prompts)": [names[i] for i in emb.text_labels.tolist()],
              **{k: image_labels for k in list(sets)[1:]}}
    return sets, labels


def ensure_layout(prof: Profile, emb: Embeddings, method: str = "umap", *, force: bool = False) -> pd.DataFrame:
    """The joint 2-D layout (:func:`mtmg.evaluation.gap.reduce_2d`) of :func:`embedding_sets`, cached as CSV in
    the embeddings folder (one file per method and seed)."""
    path = emb.out_dir / f"layout-{method}-seed{prof.embeddings.seed}.csv"
    if path.is_file() and not force:
        layout = pd.read_csv(path, keep_default_na=False)
        layout["label"] = layout["label"].astype(object)
        return layout
    sets, labels = embedding_sets(emb)
    start = time.perf_counter()
    layout = reduce_2d(sets, labels, method=method, seed=prof.embeddings.seed)
    seconds = time.perf_counter() - start
    checkpoint.atomic_write_text(path, layout.to_csv(index=False))
    checkpoint.atomic_write_text(path.with_suffix(".json"), json.dumps({"seconds": seconds}))
    return layout


def layout_seconds(folder: Path) -> float | None:
    """Seconds the 2-D layouts in an embeddings folder took to fit (None when none recorded its time)."""
    times = [json.loads(p.read_text())["seconds"] for p in sorted(Path(folder).glob("layout-*.json"))]
    return float(sum(times)) if times else None


@dataclass(frozen=True)
class Tile:
    """One raw multispectral tile: (13, H, W) reflectance x 10000 in SSL4EO band order."""

    id: str
    label: int
    classname: str
    array13: np.ndarray
    level: str


def _tile(dataset: Any, index: int) -> Tile:
    array, target, sample_id = dataset.raw(index)
    label = int(torch.as_tensor(target).argmax()) if dataset.multilabel else int(target)
    return Tile(sample_id, label, dataset.classes[label], np.asarray(array), dataset.level)


def example_tiles(prof: Profile, per_class: int = 1, split: str | None = None, max_classes: int = 10) -> list[Tile]:
    """The first ``per_class`` tiles of each of the first ``max_classes`` classes of the paired dataset."""
    data = open_paired(prof, split)
    picked: dict[int, list[int]] = {}
    for i in range(len(data)):
        target = data.target(i)
        label = int(torch.as_tensor(target).argmax()) if data.multilabel else int(target)
        if label < max_classes and len(picked.setdefault(label, [])) < per_class:
            picked[label].append(i)
        if len(picked) == min(max_classes, len(data.classes)) and all(len(v) == per_class for v in picked.values()):
            break
    return [_tile(data, i) for label in sorted(picked) for i in picked[label]]


def tiles_by_id(prof: Profile, ids: Sequence[str], split: str | None = None) -> dict[str, Tile]:
    """The raw tiles of the paired dataset with the given ids."""
    data = open_paired(prof, split)
    wanted = set(ids)
    index = {sid: i for i, sid in enumerate(sample_ids(data)) if sid in wanted}
    missing = sorted(wanted - set(index))
    if missing:
        raise KeyError(f"{prof.embed_data.name}/{split or prof.embeddings.split}: no samples with ids {missing[:5]}")
    return {sid: _tile(data, i) for sid, i in index.items()}


def class_spectra(prof: Profile, split: str | None = None, max_items: int = 2000) -> pd.DataFrame:
    """Mean reflectance (fraction, x/10000) of every band per class; rows classes, columns bands."""
    data = open_paired(prof, split)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for i in subset_indices(len(data), max_items, prof.embeddings.seed):
        tile = _tile(data, i)
        means = tile.array13.reshape(13, -1).astype(np.float64).mean(axis=1) / REFLECTANCE_SCALE
        sums[tile.classname] = sums.get(tile.classname, 0) + means
        counts[tile.classname] = counts.get(tile.classname, 0) + 1
    order = [c for c in data.classes if c in sums]
    return pd.DataFrame([sums[c] / counts[c] for c in order], index=pd.Index(order, name="class"),
                        columns=list(SSL4EO_BANDS))


@dataclass(frozen=True)
class RetrievalExample:
    """An MS query and its top-k RGB gallery items (ids, labels, cosine similarities)."""

    query: str
    query_label: int
    hits: list[str]
    hit_labels: list[int]
    similarities: list[float]
    positive_rank: int


def query_picks(labels: Sequence[int], n: int, seed: int = 0) -> list[int]:
    """``n`` random item indices, from as many different classes as possible (fixed by ``seed``)."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    picks, seen = [], set()
    for i in order:
        if int(labels[i]) not in seen:
            picks.append(i)
            seen.add(int(labels[i]))
    picks += [i for i in order if i not in set(picks)]
    return picks[:n]


def retrieval_examples(emb: Embeddings, n_queries: int = 4, k: int = 5, seed: int = 0) -> list[RetrievalExample]:
    """MS→RGB retrieval (student query, patched-CLIP gallery) for ``n_queries`` random test items of
    different classes (:func:`query_picks`)."""
    q = torch.nn.functional.normalize(emb.ms_student, dim=1)
    g = torch.nn.functional.normalize(emb.rgb_patched, dim=1)
    sims = q @ g.T
    labels = emb.labels
    out = []
    for i in query_picks(labels, n_queries, seed):
        order = torch.argsort(sims[i], descending=True, stable=True)
        top = order[:k].tolist()
        rank = int((sims[i] > sims[i, i]).sum())
        out.append(RetrievalExample(emb.ids[i], int(labels[i]), [emb.ids[j] for j in top],
                                    [int(labels[j]) for j in top], [float(sims[i, j]) for j in top], rank))
    return out


#: Plain two-level headers of the gap table's columns (:func:`mtmg.evaluation.gap.gap_summary`).
GAP_HEADERS = {"gap_text_rgb": ("centroid gap", "text↔RGB"), "gap_text_ms": ("centroid gap", "text↔MS"),
               "gap_rgb_ms": ("centroid gap", "RGB↔MS"), "cone_text": ("cone (mean cosine)", "text"),
               "cone_rgb": ("cone (mean cosine)", "RGB"), "cone_ms": ("cone (mean cosine)", "MS"),
               "cos_rgb_ms": ("same tile", "cos RGB·MS")}


def gap_view(gaps: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The gap table as the page shows it: plain two-level headers, ``digits`` decimals, "—" where a quantity
    does not apply to a row (a model without MS embeddings), and no column that no row fills."""
    table = gaps.dropna(axis="columns", how="all")
    table = table.map(lambda v: "—" if pd.isna(v) else f"{v:.{digits}f}")
    table.columns = pd.MultiIndex.from_tuples([GAP_HEADERS.get(c, ("", c)) for c in table.columns])
    table.index.name = None
    return table


def cosine_summary(cosine: np.ndarray, alpha: float) -> str:
    """What patching did to each image, in words: the median cosine between an image's zero-shot and patched
    embeddings as an angle, and how evenly the images moved."""
    cosine = np.asarray(cosine, dtype=float)
    q10, median, q90 = np.quantile(cosine, [0.1, 0.5, 0.9])
    angle = float(np.degrees(np.arccos(np.clip(median, -1, 1))))
    spread = ("every image moved by about the same angle" if q90 - q10 < 0.05 else
              "some images moved much more than others: patching did not turn the whole space alike")
    text = (f"At the selected α = {alpha:g} the median image keeps a cosine of {median:.3f} with its zero-shot "
            f"embedding, a turn of about {angle:.0f}°; eight images in ten lie between {q10:.3f} and {q90:.3f} "
            f"({spread}).")
    return text + (" At α = 0 patching leaves every embedding unchanged." if alpha == 0 else "")

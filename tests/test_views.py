"""The data views behind the book's figures: tiles, spectra, embedding sets and retrieval examples."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtmg.book import views
from mtmg.data.sentinel2 import SSL4EO_BANDS
from mtmg.runs import profiles
from mtmg.runs.stages import Embeddings, subset_indices


def test_example_tiles_one_per_class_from_the_shipped_sample():
    tiles = views.example_tiles(profiles.load_profile("default"), per_class=2)
    assert [t.label for t in tiles] == [c for c in range(10) for _ in range(2)]
    assert all(t.array13.shape == (13, 64, 64) and t.array13.dtype == np.uint16 for t in tiles)
    assert all(t.id.startswith(t.classname) and t.level == "L1C" for t in tiles)


def test_class_spectra_are_mean_reflectances():
    prof = profiles.load_profile("default")
    spectra = views.class_spectra(prof)
    assert list(spectra.columns) == list(SSL4EO_BANDS) and len(spectra) == 10
    assert ((spectra >= 0) & (spectra <= 1)).all().all()
    # water is dark in the near infrared, vegetation bright (B08)
    assert spectra.loc["SeaLake", "B08"] < spectra.loc["Forest", "B08"]
    tiles = [t for t in views.example_tiles(prof, per_class=5) if t.classname == "River"]
    expected = np.mean([t.array13.reshape(13, -1).mean(axis=1) / 10000 for t in tiles], axis=0)
    assert spectra.loc["River"].to_numpy() == pytest.approx(expected)


def test_tiles_by_id_finds_tiles_and_names_missing_ones():
    prof = profiles.load_profile("default")
    tiles = views.example_tiles(prof)
    found = views.tiles_by_id(prof, [tiles[3].id, tiles[7].id])
    assert np.array_equal(found[tiles[3].id].array13, tiles[3].array13)
    with pytest.raises(KeyError, match="Nowhere_1"):
        views.tiles_by_id(prof, ["Nowhere_1"])


def test_subset_indices_are_fixed_and_capped():
    assert subset_indices(5, 10, 0) == [0, 1, 2, 3, 4]
    picked = subset_indices(100, 10, 1)
    assert len(set(picked)) == 10 and picked == sorted(picked) and picked == subset_indices(100, 10, 1)
    assert picked != subset_indices(100, 10, 2)


def _embeddings(ms, rgb, labels, tmp_path):
    n, d = rgb.shape
    return Embeddings(
        text=torch.eye(d)[:2], text_labels=torch.tensor([0, 1]), class_text=torch.eye(d)[:2], logit_scale=100.0,
        rgb_zeroshot=rgb, rgb_patched=rgb, ms_student=ms, targets=torch.tensor(labels),
        ids=[f"t{i}" for i in range(n)], classnames=["a", "b"], classes=["A", "B"], dataset="x", root="", split="test",
        multilabel=False, level="L1C", alpha=0.5, n_total=n, out_dir=tmp_path)


def test_retrieval_examples_rank_by_cosine(tmp_path):
    g = torch.Generator().manual_seed(0)
    rgb = torch.randn(12, 8, generator=g)
    ms = rgb + 0.01 * torch.randn(12, 8, generator=g)
    ms[3] = -rgb[3]  # query 3 points away from its own tile
    emb = _embeddings(ms, rgb, [0] * 6 + [1] * 6, tmp_path)
    examples = views.retrieval_examples(emb, n_queries=12, k=4)
    by_query = {ex.query: ex for ex in examples}
    assert all(by_query[f"t{i}"].hits[0] == f"t{i}" and by_query[f"t{i}"].positive_rank == 0
               for i in range(12) if i != 3)
    assert by_query["t3"].positive_rank == 11 and "t3" not in by_query["t3"].hits
    for ex in examples:
        assert ex.similarities == sorted(ex.similarities, reverse=True)
        assert ex.hit_labels == [0 if int(h[1:]) < 6 else 1 for h in ex.hits]


def test_embedding_sets_label_images_and_prompts(tmp_path):
    rgb = torch.randn(4, 8)
    sets, labels = views.embedding_sets(_embeddings(rgb, rgb, [0, 1, 1, 0], tmp_path))
    assert list(sets) == ["text (class prompts)", "RGB, zero-shot CLIP", "RGB, patched CLIP", "MS, student"]
    assert labels["text (class prompts)"] == ["a", "b"] and labels["MS, student"] == ["a", "b", "b", "a"]


def test_query_picks_prefer_distinct_classes():
    labels = [0] * 10 + [1] * 10 + [2] * 2
    picks = views.query_picks(labels, 3, seed=4)
    assert sorted(labels[i] for i in picks) == [0, 1, 2]
    more = views.query_picks(labels, 6, seed=4)
    assert more[:3] == picks and len(set(more)) == 6
    assert views.query_picks(labels, 30) == views.query_picks(labels, 30)
    assert len(views.query_picks(labels, 30)) == 22

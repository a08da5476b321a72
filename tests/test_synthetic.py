"""Procedural scenes: determinism, the dataset contracts and the caption vocabulary."""
from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from mtmg.data import synthetic
from mtmg.data.synthetic import CONCEPTS, SyntheticCaptions, SyntheticScenes, scene

EUROSAT_WORDS = {"annual", "crop", "land", "forest", "brushland", "shrubland", "highway", "road",
                 "industrial", "commercial", "buildings", "pasture", "permanent", "residential", "homes",
                 "apartments", "river", "lake", "sea"}


def test_same_seed_same_scene_and_other_seeds_differ() -> None:
    for index in range(12):
        a, b = scene(0, 7, index), scene(0, 7, index)
        assert np.array_equal(a.image, b.image) and a.caption == b.caption and a.concept == b.concept
    assert any(not np.array_equal(scene(0, 7, i).image, scene(0, 8, i).image) for i in range(3))
    assert any(not np.array_equal(scene(0, 7, i).image, scene(1, 7, i).image) for i in range(3))


def test_caption_dataset_items() -> None:
    data = SyntheticCaptions(5, seed=3)
    image, caption = data[4]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    assert isinstance(caption, str) and caption.endswith(".")
    assert torch.equal(image, SyntheticCaptions(5, seed=3)[4][0])
    seen = []
    pil_data = SyntheticCaptions(5, seed=3, transform=lambda im: seen.append(im) or im.size)
    assert pil_data[4][0] == (64, 64) and isinstance(seen[0], Image.Image)
    assert np.array_equal(np.asarray(seen[0]), image.permute(1, 2, 0).numpy())
    with pytest.raises(IndexError):
        data[5]


def test_supported_task_follows_the_dataset_contract() -> None:
    data = SyntheticScenes("val", num_samples=20)
    assert data.classes == synthetic.SUPPORTED_CLASSNAMES and len(data.classes) == len(CONCEPTS)
    assert data.multilabel is False and data.prompt_key == "synthetic_scenes"
    items = [data[i] for i in range(20)]
    assert sorted(item["target"] for item in items) == sorted(list(range(10)) * 2)
    assert all(item["rgb"].dtype == torch.uint8 and item["rgb"].shape == (3, 64, 64) for item in items)
    assert len({item["id"] for item in items}) == 20
    assert len(SyntheticScenes("test")) == 1000
    with pytest.raises(ValueError, match="split"):
        SyntheticScenes("holdout")


def test_supported_splits_are_fresh_images() -> None:
    train = SyntheticCaptions(30, seed=0)
    pretraining = {train[i][0].numpy().tobytes() for i in range(30)}
    split_images = {split: {SyntheticScenes(split, num_samples=30)[i]["rgb"].numpy().tobytes() for i in range(30)}
                    for split in ("train", "val", "test")}
    assert all(not (imgs & pretraining) for imgs in split_images.values())
    assert not (split_images["val"] & split_images["test"]) and not (split_images["train"] & split_images["test"])


def test_captions_name_their_concept_and_cover_eurosat_vocabulary() -> None:
    words: set[str] = set()
    styles = set()
    concept_words = {"fields": ("crop", "fields"), "forest": ("forest", "woodland"),
                     "shrubland": ("shrub", "brushland", "bushes"), "highway": ("highway", "road", "motorway"),
                     "industrial": ("industrial", "commercial", "factories"),
                     "pasture": ("pasture", "meadow", "grassland"),
                     "orchard": ("orchard", "vineyard", "permanent", "fruit trees"),
                     "houses": ("residential", "homes", "houses", "apartments", "town"),
                     "river": ("river", "stream"), "lake": ("lake", "sea")}
    for index in range(300):
        sc = scene(0, 11, index)
        noun_part = sc.caption
        for phrase in synthetic._SECONDARY.get(sc.secondary or "", []):
            noun_part = noun_part.replace(phrase, "")
        assert any(w in noun_part for w in concept_words[CONCEPTS[sc.concept]]), sc.caption
        words |= set(sc.caption.rstrip(".").split())
        styles.add(sc.style)
    assert EUROSAT_WORDS <= words
    assert styles == {"ground", "aerial", "satellite"}


def test_captions_fit_the_text_context() -> None:
    tokenizer = open_clip.SimpleTokenizer()
    captions = [scene(0, 5, i).caption for i in range(300)]
    longest = max(len(tokenizer.encode(c)) for c in captions)
    assert longest + 2 <= 32, f"a caption needs {longest + 2} tokens; MiniCLIP's context is 32"


def test_concepts_look_different() -> None:
    """Water scenes are bluer than fields, forests darker than industrial areas (mean over scenes)."""
    def mean_rgb(concept: int) -> np.ndarray:
        return np.mean([synthetic.render_scene(np.random.default_rng(i), concept).image.reshape(-1, 3).mean(0)
                        for i in range(30)], axis=0)
    lake, fields = mean_rgb(CONCEPTS.index("lake")), mean_rgb(CONCEPTS.index("fields"))
    forest, industrial = mean_rgb(CONCEPTS.index("forest")), mean_rgb(CONCEPTS.index("industrial"))
    assert lake[2] - lake[0] > fields[2] - fields[0] + 10
    assert forest.sum() < industrial.sum() - 30


def test_supported_scenes_are_rendered_once_into_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MTMG_CACHE", str(tmp_path))
    first = SyntheticScenes("val", num_samples=12)
    expected = [scene(synthetic._SUPPORTED_STREAM, 1, i, i % len(CONCEPTS)).image for i in range(12)]
    assert all(np.array_equal(first[i]["rgb"].permute(1, 2, 0).numpy(), expected[i]) for i in range(12))
    files = list((tmp_path / "synthetic").glob("*.npy"))
    assert len(files) == 1 and f"v{synthetic.GENERATOR_VERSION}" in files[0].name

    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered although the scenes were in the cache")

    monkeypatch.setattr(synthetic, "scene", no_rendering)
    assert torch.equal(SyntheticScenes("val", num_samples=12)[5]["rgb"], first[5]["rgb"])

    files[0].write_bytes(b"not an array")
    monkeypatch.undo()
    monkeypatch.setenv("MTMG_CACHE", str(tmp_path))
    with pytest.warns(UserWarning, match="unreadable"):
        again = SyntheticScenes("val", num_samples=12)[5]
    assert torch.equal(again["rgb"], first[5]["rgb"])
    assert np.load(files[0]).shape == (12, 64, 64, 3)

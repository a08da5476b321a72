"""Fixtures shared by the test files: one torch thread, isolated run and cache folders, the shipped
EuroSAT-MS sample and its copy, a random-init MiniCLIP and tiny stage settings."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

from mtmg.core.config import DataSpec

ROOT = Path(__file__).resolve().parents[1]
EUROSAT_SAMPLE = ROOT / "data" / "eurosat_ms_sample"
EUROSAT = DataSpec(name="eurosat_ms", root=str(EUROSAT_SAMPLE))

TINY = {"patch.clip.pretrained": None, "patch.train.max_steps": 2, "patch.alphas": [0.0, 1.0],
        "patch.supported.0.options": {"num_samples": 20}, "align.train.max_steps": 2, "align.augment": "none",
        "align.student.overrides": {"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2},
        "zeroshot.clip.pretrained": None, "zeroshot.supported.0.options": {"num_samples": 20}}
"""Overrides of the default profile that make every stage run in seconds (random-init CLIP, two steps)."""


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and the test machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Runs and caches under the test's own temporary folder."""
    monkeypatch.setenv("MTMG_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("MTMG_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def eurosat_copy(tmp_path) -> Path:
    """A copy of the shipped EuroSAT-MS sample with its split lists in the root (torchgeo layout)."""
    copy = tmp_path / "eurosat_copy"
    shutil.copytree(EUROSAT_SAMPLE, copy)
    for split in ("train", "val", "test"):
        shutil.copy(ROOT / "data" / "splits" / f"eurosat_ms_sample-{split}.txt", copy / f"eurosat-{split}.txt")
    return copy


def random_clip():
    """MiniCLIP-64 with random weights (seeded), without warnings about them."""
    from mtmg.models.clip import load_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return load_clip("MiniCLIP-64", None)

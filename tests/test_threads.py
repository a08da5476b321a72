"""Per-sample work runs on one torch thread; batch-level work keeps the pool."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.utils.data import DataLoader

from mtmg.book import report
from mtmg.core import device, runstore
from mtmg.core.errors import ArgumentError
from mtmg.core.paths import DATA_DIR
from mtmg.data.datasets import get_dataset
from mtmg.data.synthetic import SyntheticScenes
from mtmg.method import patching
from mtmg.method.training import InMemoryDataset, SeededDataset
from mtmg.runs import profiles

EUROSAT = DATA_DIR / "eurosat_ms_sample"


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class ThreadsSeen:
    """A transform that records the number of torch threads it runs under."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, x):
        self.seen.append(torch.get_num_threads())
        return x


def test_single_thread_restores_the_pool_even_after_an_error(two_threads):
    with device.single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(KeyError), device.single_thread():
        raise KeyError("x")
    assert torch.get_num_threads() == 2


def test_dataloader_batches_of_a_reader_are_built_on_one_thread(two_threads):
    seen = ThreadsSeen()
    data = get_dataset("eurosat_ms", EUROSAT, "test", ms_transform=seen)
    batch = next(iter(DataLoader(data, batch_size=8)))
    assert batch["ms"].shape == (8, 13, 64, 64)
    assert seen.seen == [1] * 8 and torch.get_num_threads() == 2


def test_synthetic_scenes_batches_are_built_on_one_thread(two_threads):
    seen = ThreadsSeen()
    next(iter(DataLoader(SyntheticScenes("val", rgb_transform=lambda im: seen(torch.zeros(1)), num_samples=4),
                         batch_size=4)))
    assert seen.seen == [1] * 4


def test_training_data_path_is_per_sample_on_one_thread(two_threads):
    seen = ThreadsSeen()
    data = get_dataset("eurosat_ms", EUROSAT, "val", ms_transform=seen)
    memory = InMemoryDataset(data, ("ms", "target"))
    assert seen.seen == [1] * len(data)

    augment_seen = ThreadsSeen()
    wrapped = SeededDataset(memory, lambda item: augment_seen(item))
    batch = next(iter(DataLoader(wrapped, batch_sampler=[[(0, 1), (1, 2), (2, 3)]])))
    assert batch["index"].tolist() == [0, 1, 2]
    assert augment_seen.seen == [1, 1, 1] and torch.get_num_threads() == 2


def test_torch_threads_sets_and_restores_the_pool(two_threads):
    with device.torch_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == 2
    with device.torch_threads(None) as n:
        assert n == 2
    with pytest.raises(ValueError, match="positive number"), device.torch_threads(0):
        pass


def test_the_thread_count_is_the_profiles_never_the_load():
    prof = profiles.load_profile("default")
    assert prof.threads == prof.patch.threads == prof.align.threads == prof.zeroshot.threads == 1
    two = profiles.load_profile("default", threads=2)
    assert two.threads == two.align.threads == two.zeroshot.threads == 2
    assert "1 torch CPU thread)" in report.banner(**prof.describe())
    assert "2 torch CPU threads" in report.banner(**two.describe())
    with pytest.raises(ArgumentError, match="threads"):
        profiles.set_threads("auto")


def test_stage_1_under_another_thread_count_gets_another_key():
    """Training results differ between thread counts, so stage 1 under 1 and 2 threads must not share a folder
    (bit-identical outputs would be the other way to pass; they are not: see README)."""
    cfg = profiles.load_profile("default").patch
    keys = {n: patching.patch_key(dataclasses.replace(cfg, threads=n)) for n in (1, 2)}
    assert keys[1] != keys[2]


def test_stage_1_runs_on_its_configured_threads_and_records_them(two_threads, tmp_path, monkeypatch):
    seen = []

    def fake_patch(cfg, out, dev, resume):
        seen.append(torch.get_num_threads())
        for name in patching.FILES:
            (out / name).write_text("x")

    monkeypatch.setattr(patching, "_patch", fake_patch)
    monkeypatch.setattr(patching.PatchResult, "load", classmethod(lambda cls, folder: folder))
    cfg = dataclasses.replace(profiles.load_profile("default").patch, threads=1)
    out = patching.run_patching(cfg, out_dir=tmp_path / "p")
    assert seen == [1] and torch.get_num_threads() == 2
    assert json.loads((out / runstore.STATUS_FILE).read_text())["threads"] == 1


def test_seeded_items_draw_from_the_cpu_generator_only():
    base = [{"x": torch.zeros(1)} for _ in range(4)]
    data = SeededDataset(base, lambda item: {"x": item["x"] + torch.rand(1)})
    queued = len(torch.cuda._queued_calls)
    draws = [data[(i, 100 + i)]["x"] for i in range(4)]
    if not torch.cuda.is_initialized():
        assert len(torch.cuda._queued_calls) == queued  # no deferred CUDA seeding per item
    for i, x in enumerate(draws):
        torch.manual_seed(100 + i)
        assert torch.equal(x, torch.rand(1))  # the same numbers torch.manual_seed gives

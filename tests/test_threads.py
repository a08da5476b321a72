"""Per-sample work runs on one torch thread; batch-level work keeps the pool."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from mtmg.core import device
from mtmg.core.paths import DATA_DIR
from mtmg.data.datasets import get_dataset
from mtmg.data.synthetic import SyntheticScenes
from mtmg.method.training import InMemoryDataset, SeededDataset

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


@pytest.mark.parametrize("idle,expected", [(2.0, 2), (1.8, 2), (1.2, 1), (0.0, 1), (None, 2)])
def test_default_threads_uses_only_idle_cores(monkeypatch, idle, expected):
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(device, "idle_cores", lambda interval=0.5: idle)
    assert device.default_threads() == expected


def test_idle_cores_is_a_share_of_the_machine():
    idle = device.idle_cores(0.05)
    assert idle is None or 0.0 <= idle <= (device.os.cpu_count() or 1) + 1e-9


def test_work_of_this_process_and_its_parent_does_not_count_as_busy():
    # 2 cores, 100 ticks: 40 idle; this process and its parent used 50 of the 60 busy ones -> 1.8 idle cores
    assert device.idle_share((1000, 5000, 300), (1040, 5100, 350), cores=2) == pytest.approx(1.8)
    # another program used them instead -> only 0.8
    assert device.idle_share((1000, 5000, 300), (1040, 5100, 300), cores=2) == pytest.approx(0.8)
    assert device.idle_share((0, 0, 0), (90, 100, 20), cores=2) == 2.0  # never more than the machine
    assert device.idle_share((0, 5, 0), (0, 5, 0), cores=2) is None
    assert device._own_ticks() > 0  # this test process has used CPU time


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

"""Atomic state-dict files, generator states, the schedule, the config loader and the training loop's resume."""
from __future__ import annotations

import math
import os
import pickle
import random
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from mtmg.core import checkpoint
from mtmg.core.config import AlignConfig, PatchConfig, TrainConfig, from_dict, load_config
from mtmg.data.augment import d4, random_d4
from mtmg.method.training import EpochSampler, fit, warmup_cosine

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_save_roundtrip_leaves_no_temporary_file(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 7, "nested": {"b": torch.ones(2, dtype=torch.int64)}}
    path = checkpoint.atomic_save(state, tmp_path / "sub" / "ckpt.pt")
    loaded = checkpoint.load(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 7
    assert torch.equal(loaded["nested"]["b"], state["nested"]["b"])
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    checkpoint.atomic_save({"step": 1}, path)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        checkpoint.atomic_save({"step": 2, "bad": lambda: None}, path)  # lambdas cannot be saved
    assert checkpoint.load(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_load_refuses_pickled_objects(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"cfg": TrainConfig()}, path)
    with pytest.raises(checkpoint.CorruptCheckpointError, match="obj.pt: the file holds pickled Python objects"):
        checkpoint.load(path)


def test_load_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        checkpoint.load(tmp_path / "nothing.pt")


def test_rng_state_roundtrip(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    path = checkpoint.atomic_save(checkpoint.rng_state(), tmp_path / "rng.pt")
    first = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    checkpoint.set_rng_state(checkpoint.load(path))
    second = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_warmup_cosine_schedule():
    factors = [warmup_cosine(s, 4, 20) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert warmup_cosine(0, 0, 10) == 1.0


def test_epoch_sampler_is_a_resumable_permutation():
    full = list(EpochSampler(10, seed=1, epoch=2))
    assert sorted(i for i, _ in full) == list(range(10))
    assert list(EpochSampler(10, seed=1, epoch=2, start=4)) == full[4:]
    assert [i for i, _ in EpochSampler(10, seed=1, epoch=3)] != [i for i, _ in full]


def test_d4_elements_are_distinct():
    x = torch.arange(16.0).reshape(1, 4, 4)
    images = {tuple(d4(x, k).flatten().tolist()) for k in range(8)}
    assert len(images) == 8 and torch.equal(d4(x, 0), x)


def test_configs_load_and_reject_unknown_keys(tmp_path):
    assert load_config(ROOT / "configs/default/patch.yaml", PatchConfig) == PatchConfig()
    assert load_config(ROOT / "configs/default/align.yaml", AlignConfig) == AlignConfig()
    paper = load_config(ROOT / "configs/paper/patch.yaml", PatchConfig)
    assert (paper.train.lr, paper.train.weight_decay, paper.train.batch_size) == (1e-5, 0.5, 128)
    assert paper.task.name == "bigearthnet19" and paper.augment == "paint"
    align = load_config(ROOT / "configs/paper/align.yaml", AlignConfig)
    assert (align.train.lr, align.train.warmup_steps, align.student.weights) == (1e-4, 2000, "ssl4eo_s2_moco")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {learning_rate: 0.1}\n")
    with pytest.raises(KeyError, match="learning_rate"):
        load_config(bad, PatchConfig)
    with pytest.raises(TypeError, match="epochs"):
        from_dict(PatchConfig, {"train": {"epochs": "many"}})


class _Toy(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(40, 3, 4, 4, generator=g), torch.randint(3, (40,), generator=g)

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> dict:
        return {"rgb": self.x[i], "target": int(self.y[i])}


class _Crash(Exception):
    pass


def _toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 3))


def _loss(crash_after: int | None = None):
    calls = [0]

    def loss_fn(model, batch):
        calls[0] += 1
        if crash_after is not None and calls[0] > crash_after:
            raise _Crash
        return nn.functional.cross_entropy(model(batch["rgb"]), batch["target"]), {}
    return loss_fn


def test_fit_resume_after_crash_equals_uninterrupted(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, warmup_steps=3, checkpoint_every=4)
    ref = _toy_model()
    fit(ref, _loss(), _Toy(), cfg, tmp_path / "a", augment=random_d4(("rgb",)))
    crashed = _toy_model()
    with pytest.raises(_Crash):
        fit(crashed, _loss(crash_after=10), _Toy(), cfg, tmp_path / "b", augment=random_d4(("rgb",)))
    assert checkpoint.load(tmp_path / "b" / "checkpoint.pt")["step"] == 8
    resumed = _toy_model()
    result = fit(resumed, _loss(), _Toy(), cfg, tmp_path / "b", resume=True, augment=random_d4(("rgb",)))
    assert result.resumed_from == 8 and result.steps == 15
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    log_a = (tmp_path / "a" / "train_log.csv").read_text().splitlines()
    log_b = (tmp_path / "b" / "train_log.csv").read_text().splitlines()
    strip = lambda rows: [r.rsplit(",", 1)[0] for r in rows]  # noqa: E731  (drop the wall-clock column)
    assert strip(log_a) == strip(log_b) and len(log_a) == 16


def test_the_last_checkpoint_holds_no_optimiser_and_resuming_a_finished_run_restores_the_weights(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, warmup_steps=2, checkpoint_every=3)
    ref = _toy_model()
    with pytest.raises(_Crash):  # the checkpoint of step 3, mid-run, keeps everything needed to go on
        fit(_toy_model(), _loss(crash_after=4), _Toy(), cfg, tmp_path / "crashed")
    assert {"optimizer", "scheduler"} <= set(checkpoint.load(tmp_path / "crashed" / "checkpoint.pt"))
    fit(ref, _loss(), _Toy(), cfg, tmp_path)
    last = checkpoint.load(tmp_path / "checkpoint.pt")
    assert last["step"] == 10 and "optimizer" not in last and "scheduler" not in last
    again = _toy_model()
    result = fit(again, _loss(crash_after=0), _Toy(), cfg, tmp_path, resume=True)  # no loss is computed
    assert result.resumed_from == result.steps == 10
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ref.state_dict().items())


def test_fit_refuses_a_checkpoint_of_other_settings(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=8, checkpoint_every=2)
    fit(_toy_model(), _loss(), _Toy(), cfg, tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        fit(_toy_model(), _loss(), _Toy(), TrainConfig(epochs=1, batch_size=4), tmp_path, resume=True)


def test_fit_stops_on_non_finite_loss(tmp_path):
    def nan_loss(model, batch):
        return model(batch["rgb"]).sum() * float("nan"), {}
    with pytest.raises(FloatingPointError, match="step 0"):
        fit(_toy_model(), nan_loss, _Toy(), TrainConfig(epochs=1, batch_size=8), tmp_path)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_use_the_normal_file_permissions(tmp_path, umask_022):
    saved = checkpoint.atomic_save({"w": torch.ones(2)}, tmp_path / "weights.pt")
    text = checkpoint.atomic_write_text(tmp_path / "a" / "note.txt", "zoé\n")
    data = checkpoint.atomic_write_bytes(tmp_path / "raw.bin", b"\x00\x01")
    with checkpoint.atomic_open(tmp_path / "table.csv", "w", newline="") as f:
        f.write("a,b\n")
    for path in (saved, text, data, tmp_path / "table.csv"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert text.read_text(encoding="utf-8") == "zoé\n" and data.read_bytes() == b"\x00\x01"
    os.umask(0o077)
    assert stat.S_IMODE(checkpoint.atomic_write_text(tmp_path / "private.txt", "x").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "private.txt", "raw.bin", "table.csv", "weights.pt"]


def test_failed_text_write_keeps_the_previous_file(tmp_path):
    path = checkpoint.atomic_write_text(tmp_path / "out.txt", "old\n")
    with pytest.raises(KeyboardInterrupt):
        with checkpoint.atomic_open(path, "w") as f:
            f.write("new, half written")
            raise KeyboardInterrupt
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def _truncations(path):
    size = path.stat().st_size
    return {"empty": 0, "10 bytes": 10, "half": size // 2, "most": size * 9 // 10, "last byte": size - 1}


def test_empty_truncated_or_foreign_checkpoint_names_the_file_and_the_fix(tmp_path):
    good = checkpoint.atomic_save({"model": {"w": torch.randn(64, 64)}, "step": 3}, tmp_path / "good.pt")
    data = good.read_bytes()
    for what, size in _truncations(good).items():
        bad = tmp_path / "checkpoint.pt"
        bad.write_bytes(data[:size])
        with pytest.raises(checkpoint.CorruptCheckpointError) as info:
            checkpoint.load(bad)
        message = str(info.value)
        assert message.startswith(f"{bad}: "), what
        assert "empty" in message if size == 0 else "truncated or not a torch file" in message, what
        assert "--resume" in message and "start it over" in message, what
        assert isinstance(info.value, ValueError) and info.value.path == bad
    (tmp_path / "notes.pt").write_text("these are not weights")
    with pytest.raises(checkpoint.CorruptCheckpointError, match="notes.pt: the file is truncated or not a torch"):
        checkpoint.load(tmp_path / "notes.pt")
    torch.save({"cfg": TrainConfig()}, tmp_path / "pickled.pt")
    with pytest.raises(checkpoint.CorruptCheckpointError, match="pickled.pt: the file holds pickled Python objects"):
        checkpoint.load(tmp_path / "pickled.pt")


def test_resume_from_a_truncated_checkpoint_says_how_to_recover(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=8, checkpoint_every=2)
    fit(_toy_model(), _loss(crash_after=None), _Toy(), cfg, tmp_path)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(checkpoint.CorruptCheckpointError, match=f"{path}: the file is truncated.*--resume"):
        fit(_toy_model(), _loss(), _Toy(), cfg, tmp_path, resume=True)


def test_corrupt_cache_file_is_a_warned_miss(tmp_path):
    path = checkpoint.atomic_save({"key": "k", "embeddings": torch.ones(3, 2)}, tmp_path / "teacher_cache.pt")
    assert checkpoint.load_cache(path)["key"] == "k"
    assert checkpoint.load_cache(tmp_path / "missing.pt") is None
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match=f"ignoring corrupt cache file {path}: the file is truncated"):
        assert checkpoint.load_cache(path) is None


def test_corrupt_teacher_cache_is_rebuilt(tmp_path):
    from mtmg.method.alignment import cached_teacher_embeddings

    teacher = nn.Sequential(nn.Flatten(), nn.Linear(48, 5))
    data = [{"rgb": x} for x in _Toy().x[:6]]
    path = tmp_path / "teacher_cache.pt"
    first = cached_teacher_embeddings(teacher, data, 1, path, "key", device=torch.device("cpu"), batch_size=4)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.warns(UserWarning, match="teacher_cache.pt"):
        again = cached_teacher_embeddings(teacher, data, 1, path, "key", device=torch.device("cpu"), batch_size=4)
    assert torch.equal(first, again) and torch.equal(checkpoint.load(path)["embeddings"], first)

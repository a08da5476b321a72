"""Run-store keys (settings, code, weights, data), folder locks, and resuming only what can be resumed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from mtmg.core import runstore
from mtmg.core.config import DataSpec, PatchConfig, TrainConfig
from mtmg.method import patching
from mtmg.method.training import fit
from mtmg.runs.profiles import override

from conftest import EUROSAT, ROOT

pytestmark = pytest.mark.usefixtures("isolated", "one_thread")


# --- keys --------------------------------------------------------------------------------------------------

def test_keys_follow_settings_upstream_weights_and_data(eurosat_copy):
    a = PatchConfig()
    key = runstore.stage_key("patch", a)
    assert key == runstore.stage_key("patch", PatchConfig()) and len(key) == 16
    assert key != runstore.stage_key("patch", override(a, {"train.lr": 1e-3}))
    assert key != runstore.stage_key("patch", a, upstream=["x"]) != runstore.stage_key("patch", a, upstream=["y"])
    assert key != runstore.stage_key("align", a)
    assert key != runstore.stage_key("patch", a, weights={"tag": "openai"})
    assert key == runstore.stage_key("patch", override(a, {"out_dir": "/elsewhere", "cache_dir": "/c"})), \
        "where outputs and caches go does not change what is computed"
    spec = DataSpec(name="eurosat_ms", root=str(eurosat_copy))
    before = runstore.stage_key("patch", a, data=[spec])
    assert before != runstore.stage_key("patch", a, data=[DataSpec(name="eurosat_ms", root=str(ROOT / "data"))])
    tile = next((eurosat_copy / "Forest").glob("*.tif"))
    os.utime(tile)  # touching a small dataset changes nothing: its files are identified by content
    assert runstore.stage_key("patch", a, data=[spec]) == before
    tile.write_bytes(tile.read_bytes()[:-1] + b"\x01")
    assert runstore.stage_key("patch", a, data=[spec]) != before


def test_large_datasets_are_identified_by_sizes_and_times(eurosat_copy, monkeypatch):
    monkeypatch.setattr(runstore, "CONTENT_HASH_LIMIT", 1000)
    spec = DataSpec(name="eurosat_ms", root=str(eurosat_copy))
    files = runstore.data_manifest(spec)["files"][str(eurosat_copy)]
    tile = next((eurosat_copy / "Forest").glob("*.tif"))
    stat = tile.stat()
    assert files[f"Forest/{tile.name}"] == f"{stat.st_size}:{stat.st_mtime_ns}"
    os.utime(tile, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert runstore.data_manifest(spec)["files"][str(eurosat_copy)] != files


def test_the_shipped_sample_includes_its_committed_split_lists():
    files = runstore.data_manifest(EUROSAT)["files"]
    assert any(k.endswith("eurosat_ms_sample-test.txt") for k in files)
    assert sum(name.endswith(".tif") for name in files[EUROSAT.root]) == 200
    assert runstore.data_manifest(DataSpec(name="synthetic"))["files"] == {}


def test_run_keys_hash_the_code_that_computes_results_not_the_books(tmp_path, monkeypatch):
    package = tmp_path / "mtmg"
    for part in ("core", "method", "book", "cli"):
        (package / part).mkdir(parents=True)
        (package / part / "m.py").write_text("x = 1\n")
    before = runstore.source_hash(package, runstore.RESULT_PACKAGES)
    (package / "book" / "m.py").write_text("x = 2  # a figure's colour\n")
    (package / "cli" / "m.py").write_text("x = 2  # a help text\n")
    assert runstore.source_hash(package, runstore.RESULT_PACKAGES) == before
    (package / "method" / "m.py").write_text("x = 2\n")
    assert runstore.source_hash(package, runstore.RESULT_PACKAGES) != before
    real = Path(runstore.__file__).resolve().parents[1]
    below_book = {p.name for p in real.iterdir() if p.is_dir() and p.name not in ("book", "cli", "mapping")
                  and p.name != "__pycache__"}
    assert set(runstore.RESULT_PACKAGES) == below_book, "a new package of mtmg/: say whether it shapes results"


def test_source_hash_covers_every_module_of_the_package(tmp_path):
    package = tmp_path / "pkg"
    (package / "datasets").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "datasets" / "b.py").write_text("y = 1\n")
    before = runstore.source_hash(package)
    (package / "datasets" / "b.py").write_text("y = 2\n")
    assert runstore.source_hash(package) != before
    (package / "datasets" / "b.py").write_text("y = 1\n")
    assert runstore.source_hash(package) == before
    (package / "new.py").write_text("")
    assert runstore.source_hash(package) != before
    assert runstore.code_hash() == runstore.code_hash() and len(runstore.code_hash()) == 16


# --- writing a folder --------------------------------------------------------------------------------------

def test_a_failed_run_leaves_no_status_and_a_finished_one_records_its_key(tmp_path):
    folder = tmp_path / "stage"
    with runstore.writing("s", folder, "k1", ["out.txt"]):
        (folder / "out.txt").write_text("1")
    assert runstore.is_current(folder, "k1", ["out.txt"]) and not runstore.is_current(folder, "k2", ["out.txt"])
    with pytest.raises(RuntimeError, match="boom"), runstore.writing("s", folder, "k2", ["out.txt"]):
        raise RuntimeError("boom")
    assert runstore.read_status(folder) is None, "an interrupted run must not leave the old key behind"
    with pytest.raises(RuntimeError, match="lacks"), runstore.writing("s", folder, "k3", ["other.txt"]):
        pass
    assert runstore.read_status(folder) is None


HOLDER = textwrap.dedent("""
    import sys, time
    from mtmg.core import runstore
    with runstore.locked(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
""")


def test_a_second_writer_fails_at_once_and_a_killed_holder_is_taken_over(tmp_path):
    folder = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg = override(PatchConfig(), {"clip.pretrained": None, "train.max_steps": 1})
        t0 = time.perf_counter()
        with pytest.raises(runstore.FolderLockedError) as err:
            patching.run_patching(cfg, out_dir=folder, device="cpu")
        assert time.perf_counter() - t0 < 5, "the second writer must not wait"
        message = str(err.value)
        assert str(folder) in message and f"pid {holder.pid}" in message and "started" in message
        assert sorted(p.name for p in folder.iterdir()) == sorted([runstore.HOLDER_FILE, runstore.LOCK_FILE]), \
            "the refused run must not write anything"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with runstore.locked(folder):  # the kernel released the killed holder's lock
        assert f"pid {os.getpid()}" in (folder / runstore.HOLDER_FILE).read_text()
    assert not (folder / runstore.HOLDER_FILE).exists()


# --- resuming ----------------------------------------------------------------------------------------------

class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return {"x": torch.full((2,), float(i)), "y": torch.tensor([float(i % 3)])}


def _fit(out, cfg, identity=None, resume=False):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)

    def loss_fn(m, batch):
        return nn.functional.mse_loss(m(batch["x"]), batch["y"]), {}

    fit(model, loss_fn, Items(), cfg, out, resume=resume, identity=identity, desc="test")
    return model


@pytest.mark.parametrize("changed, key", [
    ({"weight_decay": 0.5}, "train.weight_decay"), ({"betas": (0.8, 0.99)}, "train.betas"),
    ({"grad_clip": None}, "train.grad_clip"), ({"warmup_steps": 3}, "train.warmup_steps"),
])
def test_resume_refuses_changed_training_settings(tmp_path, changed, key):
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, weight_decay=0.1, checkpoint_every=2, max_steps=2)
    _fit(tmp_path, cfg)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        _fit(tmp_path, TrainConfig(**{**cfg.__dict__, "max_steps": 4, **changed}), resume=True)


def test_resume_refuses_changed_augmentation_or_data_and_accepts_the_same_settings(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, checkpoint_every=2, max_steps=2)
    identity = {"settings": {"augment": "d4"}, "data": ["abc"]}
    _fit(tmp_path, cfg, identity)
    longer = TrainConfig(**{**cfg.__dict__, "max_steps": None})
    with pytest.raises(ValueError, match=r"settings\.augment"):
        _fit(tmp_path, longer, {**identity, "settings": {"augment": "none"}}, resume=True)
    with pytest.raises(ValueError, match=r"data"):
        _fit(tmp_path, longer, {**identity, "data": ["def"]}, resume=True)
    with pytest.raises(ValueError, match=r"train\.max_steps"):  # the schedule length is part of the settings
        _fit(tmp_path, longer, identity, resume=True)
    resumed = _fit(tmp_path, TrainConfig(**{**cfg.__dict__, "num_workers": 0, "checkpoint_every": 1}), identity,
                   resume=True)
    assert resumed is not None


def test_patch_resume_identity_covers_augmentation_data_and_weights(eurosat_copy):
    cfg = PatchConfig()
    base = patching.resume_identity(cfg)
    assert patching.resume_identity(override(cfg, {"augment": "none"})) != base
    assert patching.resume_identity(override(cfg, {"clip.pretrained": "openai"}))["weights"] != base["weights"]
    moved = override(cfg, {"task.root": str(eurosat_copy)})
    (next((eurosat_copy / "Forest").glob("*.tif"))).write_bytes(b"changed")
    assert patching.resume_identity(moved)["data"] != base["data"]


def test_miniclip_identity_follows_the_weights_file_it_would_load(tmp_path, monkeypatch):
    from mtmg.core.config import ClipSpec
    from mtmg.method import miniclip
    from mtmg.method.clip_weights import clip_identity

    monkeypatch.setattr(miniclip, "SHIPPED_DIR", tmp_path / "nothing shipped")
    spec, cache = ClipSpec(), tmp_path / "cache"
    assert clip_identity(spec, cache)["sha256"] is None  # before pretraining
    path = miniclip.miniclip_path(cache, miniclip.MiniClipConfig(model_name=spec.name))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights one")
    first = clip_identity(spec, cache)
    path.write_bytes(b"weights two")
    assert first["sha256"] and clip_identity(spec, cache)["sha256"] != first["sha256"]

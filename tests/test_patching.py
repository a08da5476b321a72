"""Stage 1: interpolation, α selection on validation only, frozen head, resume after SIGKILL, learning."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from mtmg.core import checkpoint
from mtmg.core.config import ClipSpec, DataSpec, PatchConfig, TrainConfig
from mtmg.data import tasks
from mtmg.method import patching
from mtmg.method.patching import EvalTask, interpolate_state_dicts, load_interpolated, select_alpha, sweep
from mtmg.method.training import InMemoryDataset
from mtmg.models.clip import ZeroShotHead, load_clip

from conftest import EUROSAT, ROOT

pytestmark = pytest.mark.usefixtures("one_thread")





def _tiny_clip():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return load_clip("MiniCLIP-64", None)


def _random_head(classes: int = 10, dim: int = 128, seed: int = 0) -> ZeroShotHead:
    return ZeroShotHead(torch.randn(classes, dim, generator=torch.Generator().manual_seed(seed)), 20.0)


def _tiles(bundle, split: str) -> InMemoryDataset:
    return InMemoryDataset(tasks.open_split(EUROSAT, split, bundle.preprocess_val), ("rgb", "target"))


# --- interpolation -----------------------------------------------------------------------------------------

def _pair():
    g = torch.Generator().manual_seed(0)
    zs = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g).half(),
          "count": torch.tensor(5), "mask": torch.tensor([True, False])}
    ft = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g).half(),
          "count": torch.tensor(9), "mask": torch.tensor([False, True])}
    return zs, ft


def test_interpolation_endpoints_and_midpoint():
    zs, ft = _pair()
    copies = ({k: v.clone() for k, v in zs.items()}, {k: v.clone() for k, v in ft.items()})
    at0, at1, mid = (interpolate_state_dicts(zs, ft, a) for a in (0.0, 1.0, 0.5))
    for k in zs:
        assert torch.equal(at0[k], zs[k]) and torch.equal(at1[k], ft[k])
        assert at0[k].dtype == zs[k].dtype and at0[k].data_ptr() != zs[k].data_ptr()
    assert torch.equal(mid["w"], (zs["w"] + ft["w"]) / 2)
    assert torch.allclose(mid["b"].float(), (zs["b"].float() + ft["b"].float()) / 2, atol=1e-3)
    assert mid["b"].dtype == torch.float16
    quarter = interpolate_state_dicts(zs, ft, 0.25)
    assert torch.allclose(quarter["w"], 0.75 * zs["w"] + 0.25 * ft["w"])
    for original, copy in zip((zs, ft), copies):  # inputs untouched
        assert all(torch.equal(original[k], copy[k]) for k in original)


def test_interpolation_copies_integer_buffers_from_the_nearer_endpoint():
    zs, ft = _pair()
    for alpha, source in ((0.0, zs), (0.3, zs), (0.5, ft), (0.8, ft), (1.0, ft)):
        out = interpolate_state_dicts(zs, ft, alpha)
        assert torch.equal(out["count"], source["count"]) and out["count"].dtype == torch.int64
        assert torch.equal(out["mask"], source["mask"])


def test_interpolation_in_place_gives_the_same_numbers_as_new_tensors():
    bundle = _tiny_clip()
    visual = bundle.model.visual
    zs = {k: v.clone() for k, v in visual.state_dict().items()}
    ft = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in zs.items()}
    pointers = {k: v.data_ptr() for k, v in visual.state_dict().items()}
    for alpha in (0.0, 0.3, 0.6, 1.0):
        load_interpolated(visual, zs, ft, alpha)
        expected = interpolate_state_dicts(zs, ft, alpha)
        for k, v in visual.state_dict().items():
            assert torch.equal(v, expected[k]), (alpha, k)  # bit for bit
            assert v.data_ptr() == pointers[k]  # written into the module's own tensors
    module = torch.nn.Linear(3, 4).half()
    a = {k: v.clone() for k, v in module.state_dict().items()}
    b = {k: v + 1 for k, v in a.items()}
    load_interpolated(module, a, b, 0.25)
    assert all(torch.equal(module.state_dict()[k], interpolate_state_dicts(a, b, 0.25)[k]) for k in a)
    with pytest.raises(KeyError, match="only in the state dicts \\['extra'\\]"):
        load_interpolated(module, {**a, "extra": a["bias"]}, {**b, "extra": b["bias"]}, 0.5)


def test_interpolation_rejects_mismatched_state_dicts():
    zs, ft = _pair()
    renamed = {("weight" if k == "w" else k): v for k, v in ft.items()}
    with pytest.raises(KeyError, match="only in zero-shot \\['w'\\].*only in fine-tuned \\['weight'\\]"):
        interpolate_state_dicts(zs, renamed, 0.5)
    with pytest.raises(ValueError, match="w: \\(3, 4\\) vs \\(4, 3\\)"):
        interpolate_state_dicts(zs, {**ft, "w": ft["w"].T.contiguous()}, 0.5)


def test_interpolated_model_matches_manual_blend():
    bundle = _tiny_clip()
    zs = {k: v.clone() for k, v in bundle.model.visual.state_dict().items()}
    ft = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in zs.items()}
    bundle.model.visual.load_state_dict(interpolate_state_dicts(zs, ft, 0.3))
    for k, v in bundle.model.visual.state_dict().items():
        assert torch.allclose(v, 0.7 * zs[k] + 0.3 * ft[k], atol=1e-7)


# --- α selection ------------------------------------------------------------------------------------------

def _table(val: dict[float, tuple[float, float]], test: dict[float, tuple[float, float]]) -> pd.DataFrame:
    rows = []
    for split, scores in (("val", val), ("test", test)):
        for alpha, (patch, supported) in scores.items():
            rows.append({"task": "patch", "split": split, "alpha": alpha, "metric": "top1", "value": patch})
            rows.append({"task": "supp", "split": split, "alpha": alpha, "metric": "macro_ap", "value": supported})
    return pd.DataFrame(rows)


def test_select_alpha_uses_validation_mean_not_test():
    val = {0.0: (0.2, 0.9), 0.5: (0.6, 0.8), 1.0: (0.9, 0.3)}   # means 0.55, 0.70, 0.60
    test = {0.0: (0.2, 0.9), 0.5: (0.5, 0.5), 1.0: (1.0, 0.9)}  # test alone would pick 1.0
    alpha, mean = select_alpha(_table(val, test))
    assert alpha == 0.5 and mean.loc[0.5] == pytest.approx(0.7)
    assert select_alpha(_table(val, test), split="test")[0] == 1.0  # the table really disagrees


def test_select_alpha_ties_and_errors():
    assert select_alpha(_table({0.0: (0.5, 0.5), 0.5: (0.6, 0.4), 1.0: (0.4, 0.6)}, {}))[0] == 0.0
    incomplete = _table({0.0: (0.5, 0.5), 1.0: (0.4, 0.6)}, {}).iloc[:-1]
    with pytest.raises(ValueError, match="missing"):
        select_alpha(incomplete)
    with pytest.raises(ValueError, match="no 'val' scores"):
        select_alpha(_table({}, {0.0: (0.1, 0.1)}))


class _Recorder(Dataset):
    """Wraps a dataset and logs every read of it in a shared event list."""

    def __init__(self, base: Dataset, events: list, name: str) -> None:
        self.base, self.events, self.name = base, events, name

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        self.events.append(self.name)
        return self.base[i]


class _Relabelled(Dataset):
    def __init__(self, base: Dataset, shift: int) -> None:
        self.base, self.shift = base, shift

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        item["target"] = (item["target"] + self.shift * (i % 3)) % 10
        return item


def test_sweep_reads_test_splits_only_after_selecting(monkeypatch):
    bundle = _tiny_clip()
    visual = bundle.model.visual
    zs = {k: v.clone() for k, v in visual.state_dict().items()}
    ft = {k: v + 0.05 * torch.randn_like(v) for k, v in zs.items()}
    val, test = _tiles(bundle, "val"), _tiles(bundle, "test")
    events: list[str] = []
    real_select = patching.select_alpha

    def spy(scores, split="val"):
        assert set(scores["split"]) == {"val"}, "selection saw non-validation rows"
        events.append("select")
        return real_select(scores, split)
    monkeypatch.setattr(patching, "select_alpha", spy)
    tasks = [EvalTask("a", _random_head(seed=1), False, _Recorder(val, events, "val"), _Recorder(test, events, "test")),
             EvalTask("b", _random_head(seed=2), False, _Recorder(val, events, "val"), None)]
    alphas = (0.0, 0.5, 1.0)
    scores, alpha = sweep(visual, zs, ft, tasks, alphas, batch_size=64)
    first_test = events.index("test")
    assert events.count("select") == 1 and events.index("select") < first_test
    assert "val" not in events[first_test:]
    assert set(scores["split"]) == {"val", "test"} and len(scores) == 3 * 2 + 3
    assert list(scores.columns) == ["task", "split", "alpha", "metric", "value"]
    assert torch.equal(visual.state_dict()["proj"], interpolate_state_dicts(zs, ft, alpha)["proj"])
    # other test labels change the test scores but never the selected alpha
    for shift in (1, 3):
        relabelled = [EvalTask(t.name, t.head, False, t.val, None if t.test is None else _Relabelled(test, shift))
                      for t in tasks]
        other_scores, other_alpha = sweep(visual, zs, ft, relabelled, alphas, batch_size=64)
        assert other_alpha == alpha
        assert not other_scores[other_scores.split == "test"]["value"].equals(
            scores[scores.split == "test"]["value"].reset_index(drop=True))


def test_paint_augmentation_is_reproducible_per_item_seed():
    from mtmg.data.augment import paint_train_transform
    from mtmg.method.training import SeededDataset

    data = SeededDataset(tasks.open_split(EUROSAT, "train", paint_train_transform(64, (0.5,) * 3, (0.25,) * 3)))
    a, b, c = data[(7, 1234)], data[(7, 1234)], data[(7, 99)]
    assert a["rgb"].shape == (3, 64, 64) and a["index"] == 7
    assert torch.equal(a["rgb"], b["rgb"]) and not torch.equal(a["rgb"], c["rgb"])
    state = torch.get_rng_state()
    data[(3, 5)]
    assert torch.equal(state, torch.get_rng_state())  # the global generator is left as it was


# --- fine-tuning ------------------------------------------------------------------------------------------

def test_finetune_lowers_training_loss_and_keeps_head_and_text_tower_frozen(tmp_path):
    bundle = _tiny_clip()
    train = _tiles(bundle, "train")
    head = _random_head()
    frozen = {k: v.clone() for k, v in bundle.model.state_dict().items() if not k.startswith("visual.")}
    head_before = {k: v.clone() for k, v in head.state_dict().items()}
    visual_before = {k: v.clone() for k, v in bundle.model.visual.state_dict().items()}

    def train_loss() -> float:
        bundle.model.visual.eval()
        with torch.no_grad():
            x = torch.stack([it["rgb"] for it in train.items])
            y = torch.tensor([it["target"] for it in train.items])
            return torch.nn.functional.cross_entropy(head(bundle.model.visual(x)), y).item()

    before = train_loss()
    cfg = PatchConfig(train=TrainConfig(epochs=4, batch_size=25, lr=1e-3, warmup_steps=2, checkpoint_every=0))
    ft = patching.finetune(bundle, head, False, train, cfg, tmp_path, device=torch.device("cpu"))
    after = train_loss()
    assert after < 0.7 * before, (before, after)
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in head_before.items())
    state = bundle.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in frozen.items())
    assert any(not torch.equal(v, ft[k]) for k, v in visual_before.items())
    log = pd.read_csv(tmp_path / "finetune" / "train_log.csv")
    assert len(log) == 16 and {"loss", "lr", "grad_norm"} <= set(log.columns)


CHILD = textwrap.dedent('''
    import sys, time, warnings
    import torch
    torch.set_num_threads(1)
    from pathlib import Path
    from mtmg.core import checkpoint
    from mtmg.method import patching
    from mtmg.data import tasks
    from mtmg.core.config import DataSpec, PatchConfig, TrainConfig
    from mtmg.models.clip import ZeroShotHead, load_clip
    from mtmg.method.training import InMemoryDataset

    out, slow, resume = Path(sys.argv[1]), sys.argv[2] == "slow", sys.argv[3] == "resume"
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    bundle = load_clip("MiniCLIP-64", None)
    spec = DataSpec(name="eurosat_ms", root=sys.argv[4])
    tiles = tasks.open_split(spec, "train", bundle.preprocess_val)
    train = InMemoryDataset(torch.utils.data.Subset(tiles, range(0, 100, 2)), ("rgb", "target"))
    if slow:
        class Slow(torch.utils.data.Dataset):
            def __len__(self): return len(train)
            def __getitem__(self, i):
                time.sleep(0.02)
                return train[i]
        data = Slow()
    else:
        data = train
    head = ZeroShotHead(torch.randn(10, 128, generator=torch.Generator().manual_seed(0)), 20.0)
    cfg = PatchConfig(train=TrainConfig(epochs=2, batch_size=8, lr=1e-3, warmup_steps=2, checkpoint_every=3))
    ft = patching.finetune(bundle, head, False, data, cfg, out, device=torch.device("cpu"), resume=resume)
    checkpoint.atomic_save(ft, out / "final.pt")
''')


def _child(tmp_path: Path, out: Path, mode: str, resume: bool) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), str(out), mode, "resume" if resume else "fresh",
                             str(ROOT / "data/eurosat_ms_sample")], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    reference = _child(tmp_path, tmp_path / "ref", "fast", resume=False)
    victim = _child(tmp_path, tmp_path / "run", "slow", resume=False)
    ckpt, log = tmp_path / "run" / "finetune" / "checkpoint.pt", tmp_path / "run" / "finetune" / "train_log.csv"
    deadline = time.time() + 60
    while time.time() < deadline and victim.poll() is None:
        if ckpt.is_file() and log.is_file() and len(log.read_text().splitlines()) >= 6:  # header + 5 steps
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be interrupted"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    saved = checkpoint.load(ckpt)["step"]
    assert 3 <= saved < 14 and not (tmp_path / "run" / "final.pt").exists()
    resumed = _child(tmp_path, tmp_path / "run", "fast", resume=True)
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read().decode()[-2000:]
    assert reference.wait(timeout=120) == 0, reference.stderr.read().decode()[-2000:]
    a, b = checkpoint.load(tmp_path / "ref" / "final.pt"), checkpoint.load(tmp_path / "run" / "final.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = pd.read_csv(log)["step"].tolist()
    assert steps == list(range(1, 15))


# --- the whole stage --------------------------------------------------------------------------------------

def test_run_patching_writes_endpoints_scores_and_patched_tower(tmp_path):
    cfg = PatchConfig(clip=ClipSpec(pretrained=None), task=EUROSAT,
                      supported=(DataSpec(name="synthetic", options={"num_samples": 30}),),
                      train=TrainConfig(epochs=1, batch_size=25, warmup_steps=1), alphas=(0.0, 0.5, 1.0),
                      cache_dir=str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = patching.run_patching(cfg, out_dir=tmp_path / "out", device="cpu")
    out = result.out_dir
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores["task"]) == {"eurosat_ms", "synthetic"} and set(scores["split"]) == {"val", "test"}
    assert sorted(set(scores["alpha"])) == [0.0, 0.5, 1.0]
    chosen = json.loads((out / "selected_alpha.json").read_text())
    assert chosen["alpha"] == result.alpha == select_alpha(scores)[0]
    zs, ft, patched = (checkpoint.load(out / f"{n}.pt") for n in ("zeroshot", "finetuned", "patched"))
    expected = interpolate_state_dicts(zs, ft, result.alpha)
    assert all(torch.equal(patched[k], expected[k]) for k in expected)
    bundle, alpha = patching.load_patched(out, cache_dir=tmp_path / "cache")
    assert alpha == result.alpha
    assert all(torch.equal(v, patched[k]) for k, v in bundle.model.visual.state_dict().items())
    clip = json.loads((out / "clip.json").read_text())
    (out / "clip.json").write_text(json.dumps({**clip, "weights": "other@sha256:0"}))
    with pytest.raises(ValueError, match="re-run stage 1"):
        patching.load_patched(out, cache_dir=tmp_path / "cache")

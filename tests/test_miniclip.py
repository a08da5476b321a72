"""MiniCLIP: exact truncated text encoding, a tiny pretraining run, the weights cache and the supported task."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import open_clip
import pytest
import torch

from mtmg.data.synthetic import scene
from mtmg.method import miniclip
from mtmg.method.miniclip import (
    MODEL_NAME,
    MiniClipConfig,
    encode_text,
    ensure_miniclip,
    miniclip_path,
    pretrain_miniclip,
)
from mtmg.models.clip import load_clip, register_model_config

TINY = MiniClipConfig(num_scenes=32, batch_size=16, steps=16, warmup_steps=2, seed=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest, and least disturbed by other processes, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrain_miniclip(TINY, tmp_path_factory.mktemp("miniclip") / "tiny.pt")


def test_model_config_is_registered_with_the_study_sizes() -> None:
    register_model_config(miniclip.MODEL_CONFIG_DIR)
    cfg = open_clip.get_model_config(MODEL_NAME)
    assert cfg["embed_dim"] == 128 and cfg["vision_cfg"]["image_size"] == 64
    assert cfg["vision_cfg"]["patch_size"] == 8 and cfg["text_cfg"]["context_length"] == 32


def test_truncated_text_encoding_equals_full_encoding() -> None:
    register_model_config(miniclip.MODEL_CONFIG_DIR)
    torch.manual_seed(0)
    model = open_clip.create_model(MODEL_NAME).eval()
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    captions = [scene(0, 0, i).caption for i in range(16)] + ["forest."]
    tokens = tokenizer(captions)
    assert int(tokens.argmax(-1).max()) + 1 < tokens.shape[1], "the test needs captions shorter than the context"
    with torch.no_grad():
        full = model.encode_text(tokens)
        short = encode_text(model, tokens)
        one = encode_text(model, tokens[-1:])
    assert short.shape == full.shape
    assert torch.allclose(short, full, atol=1e-5, rtol=0)
    assert torch.allclose(one, full[-1:], atol=1e-5, rtol=0)


def test_tiny_pretraining_lowers_the_loss_and_loads_with_open_clip(tiny_weights: Path) -> None:
    log = json.loads(tiny_weights.with_suffix(".json").read_text())
    losses = log["losses"]
    assert len(losses) == TINY.steps and log["cache_key"] == TINY.cache_key()
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3
    saved = torch.load(tiny_weights, weights_only=True)
    model, _, _ = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(tiny_weights))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert not list(tiny_weights.parent.glob("*.tmp"))


def test_pretraining_is_deterministic(tmp_path: Path) -> None:
    config = replace(TINY, steps=2)
    a = torch.load(pretrain_miniclip(config, tmp_path / "a.pt"), weights_only=True)
    b = torch.load(pretrain_miniclip(config, tmp_path / "b.pt"), weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cache_key_follows_the_config(tmp_path: Path) -> None:
    assert TINY.cache_key() == replace(TINY).cache_key()
    keys = {TINY.cache_key(), replace(TINY, steps=25).cache_key(), replace(TINY, seed=2).cache_key(),
            replace(TINY, lr=2e-3).cache_key(), MiniClipConfig().cache_key()}
    assert len(keys) == 5
    assert miniclip_path(tmp_path, TINY) != miniclip_path(tmp_path, replace(TINY, seed=2))


def test_ensure_miniclip_trains_once_then_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_pretrain(config: MiniClipConfig, out_path: Path, device: str = "cpu") -> Path:
        calls.append(config)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_bytes(b"weights")
        return out_path

    monkeypatch.setattr(miniclip, "pretrain_miniclip", fake_pretrain)
    first = ensure_miniclip(tmp_path, TINY)
    second = ensure_miniclip(tmp_path, TINY)
    assert first == second == miniclip_path(tmp_path, TINY) and first.is_file()
    assert calls == [TINY]


def test_supported_task_accuracy_of_the_tiny_model(tiny_weights: Path) -> None:
    bundle = load_clip(MODEL_NAME, tiny_weights)
    acc = miniclip.supported_task_accuracy(bundle, "val", num_samples=40)
    assert 0.0 <= acc <= 1.0 and (acc * 40) == pytest.approx(round(acc * 40))


def test_ensure_miniclip_returns_the_shipped_file_for_its_key(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    shipped_dir = tmp_path / "shipped"
    shipped_dir.mkdir()
    shipped = shipped_dir / miniclip_path(tmp_path, TINY).name
    shipped.write_bytes(b"weights")
    monkeypatch.setattr(miniclip, "SHIPPED_DIR", shipped_dir)
    monkeypatch.setattr(miniclip, "pretrain_miniclip", lambda *a, **k: pytest.fail("pretrained, though shipped"))
    assert ensure_miniclip(tmp_path / "cache", TINY) == shipped
    assert miniclip.shipped_weights(replace(TINY, seed=2)) is None


def test_ship_keeps_float16_only_within_the_tolerance(tiny_weights: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    entry = miniclip_path(cache, TINY)
    entry.parent.mkdir(parents=True)
    entry.write_bytes(tiny_weights.read_bytes())
    entry.with_suffix(".json").write_text(tiny_weights.with_suffix(".json").read_text())
    for drop, dtype in ((0.005, torch.float16), (0.02, torch.float32)):
        def fake(weights, device="cpu", drop=drop):
            half = torch.load(weights, weights_only=True)["logit_scale"].dtype == torch.float16
            return {"synthetic": 0.6 - (drop if half else 0.0), "eurosat": 0.3}
        monkeypatch.setattr(miniclip, "zeroshot_accuracies", fake)
        out = miniclip.ship(tmp_path / f"out-{drop}", cache, TINY)
        assert out.name == entry.name
        assert {v.dtype for v in torch.load(out, weights_only=True).values() if v.is_floating_point()} == {dtype}
        record = json.loads(out.with_suffix(".json").read_text())
        assert record["stored_dtype"] == str(dtype).removeprefix("torch.") and "losses" not in record
        log = miniclip.pd.read_csv(out.with_suffix(".csv"))
        assert list(log.columns) == ["step", "lr", "loss"] and len(log) == TINY.steps
        losses = json.loads(entry.with_suffix(".json").read_text())["losses"]
        assert log.loss.tolist() == pytest.approx(losses, rel=1e-5)


def test_shipped_weights_match_the_default_config_and_their_record() -> None:
    path = miniclip.shipped_weights()
    assert path is not None, f"no weights for the default MiniClipConfig in {miniclip.SHIPPED_DIR}"
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["cache_key"] == MiniClipConfig().cache_key()
    top1 = record["zeroshot_top1"]
    assert all(abs(top1["float16"][k] - top1["float32"][k]) <= miniclip.FP16_TOLERANCE for k in top1["float32"])
    state = torch.load(path, weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    register_model_config(miniclip.MODEL_CONFIG_DIR)
    model, _, _ = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(path))
    assert all(torch.equal(v.half(), state[k]) for k, v in model.state_dict().items())
    log = miniclip.shipped_pretraining_log()
    assert len(log) == MiniClipConfig().steps and log.step.iloc[-1] == MiniClipConfig().steps
    assert log.loss.tail(50).mean() < log.loss.head(50).mean() - 1.0

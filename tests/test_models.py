"""CLIP loading from a tag, a file and a local directory; missing weights; the classifier; devices."""

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mtmg.core.device import autocast, resolve_device
from mtmg.models.clip import (
    RANDOM_INIT,
    ImageClassifier,
    WeightsFileError,
    WeightsUnavailableError,
    ZeroShotHead,
    load_clip,
    random_init_file,
    register_model_config,
)

TINY_CONFIG = Path(__file__).parent / "model_configs" / "TinyCLIP-test.json"


@pytest.fixture(scope="module")
def tiny_name():
    return register_model_config(TINY_CONFIG)[0]


def _random_tiny(name, seed=0):
    torch.manual_seed(seed)
    with pytest.warns(UserWarning, match="randomly initialised"):
        return load_clip(name, None)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_random_init_warns_and_gives_transforms(tiny_name):
    bundle = _random_tiny(tiny_name)
    assert bundle.weights == RANDOM_INIT and bundle.model_name == tiny_name
    assert not bundle.model.training
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert bundle.preprocess_val(image).shape == (3, 32, 32)
    assert bundle.tokenizer(["a photo of a river."]).shape == (1, 32)


def test_checkpoint_file(tmp_path, tiny_name, no_network):
    source = _random_tiny(tiny_name, seed=1)
    path = tmp_path / "tiny.pt"
    torch.save(source.model.state_dict(), path)
    _random_tiny(tiny_name, seed=2)  # a different initialisation must be overwritten
    loaded = load_clip(tiny_name, path)
    _assert_same_weights(source.model, loaded.model)
    assert loaded.weights.startswith("tiny.pt@sha256:")
    torch.save(_random_tiny(tiny_name, seed=3).model.state_dict(), path)
    assert load_clip(tiny_name, str(path)).weights != loaded.weights  # the id follows the content


def test_a_checkpoint_file_is_loaded_without_drawing_the_weights_it_replaces(tmp_path, tiny_name, monkeypatch):
    source = _random_tiny(tiny_name, seed=5)
    path = tmp_path / "tiny.pt"
    torch.save(source.model.state_dict(), path)
    drawn = []

    def counting(tensor, *args, **kwargs):
        drawn.append(tuple(tensor.shape))
        return tensor

    monkeypatch.setattr(torch.nn.init, "normal_", counting)
    loaded = load_clip(tiny_name, path)
    _assert_same_weights(source.model, loaded.model)
    assert drawn == []  # open_clip's initialisation was skipped: the file's state dict replaces all of it
    assert torch.nn.init.normal_ is counting  # and the initialisers are back afterwards
    with pytest.warns(UserWarning, match="randomly initialised"):
        load_clip(tiny_name, None)
    assert drawn  # a model without weights is initialised as before
    monkeypatch.undo()
    broken = tmp_path / "broken.pt"
    torch.save({k: v for k, v in source.model.state_dict().items() if "visual" not in k}, broken)
    with pytest.raises(WeightsFileError, match="Missing key"):  # strict loading: no weight is left undrawn
        load_clip(tiny_name, broken)
    assert torch.nn.init.normal_.__module__ == "torch.nn.init"


def test_local_directory(tmp_path, tiny_name, no_network):
    source = _random_tiny(tiny_name, seed=4)
    directory = tmp_path / "tiny-model"
    directory.mkdir()
    config = {"model_cfg": json.loads(TINY_CONFIG.read_text()), "preprocess_cfg": {}}
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(source.model.state_dict(), directory / "open_clip_pytorch_model.bin")
    for bundle in (load_clip(tiny_name, f"local-dir:{directory}"), load_clip(tiny_name, directory),
                   load_clip(f"local-dir:{directory}")):
        _assert_same_weights(source.model, bundle.model)
        assert bundle.weights.startswith("tiny-model/open_clip_pytorch_model.bin@sha256:")
        assert bundle.tokenizer(["forest"]).shape == (1, 32)


def test_local_directory_without_weights(tmp_path, tiny_name):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": json.loads(TINY_CONFIG.read_text())}))
    with pytest.raises(WeightsUnavailableError, match="open_clip_pytorch_model.bin"):
        load_clip(tiny_name, f"local-dir:{tmp_path}")
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_clip(tiny_name, f"local-dir:{tmp_path / 'missing'}")
    (tmp_path / "open_clip_config.json").unlink()
    with pytest.raises(WeightsUnavailableError, match="open_clip_config.json"):
        load_clip(tiny_name, tmp_path)


def test_unknown_tag(no_network):
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="not a known open_clip tag") as error:
        load_clip("ViT-B-32", "no-such-tag")
    assert "openai" in str(error.value) and "--pretrained /path/to/" in str(error.value)
    assert time.monotonic() - start < 2


def test_missing_checkpoint_file(tmp_path, no_network):
    missing = tmp_path / "patched.pt"
    with pytest.raises(WeightsUnavailableError, match="not found") as error:
        load_clip("ViT-B-32", missing)
    assert str(missing) in str(error.value)


def test_offline_hub_tag_fails_at_once(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the weights were found")
    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_model)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE") as error:
        load_clip("ViT-B-32", "openai", cache_dir=tmp_path)
    message = str(error.value)
    assert "ViT-B-32/openai" in message and "open_clip_pytorch_model.bin" in message
    assert "huggingface.co/timm/vit_base_patch32_clip_224.openai" in message and "--pretrained" in message
    assert time.monotonic() - start < 1


def test_offline_tag_found_in_hub_cache(tmp_path, monkeypatch, tiny_name, no_network):
    """A tag whose file is in the Hugging Face cache loads offline, with the tag's QuickGELU setting."""
    source = _random_tiny(tiny_name, seed=5)
    snapshot = tmp_path / "models--example--tiny-clip" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "models--example--tiny-clip" / "refs").mkdir()
    (tmp_path / "models--example--tiny-clip" / "refs" / "main").write_text("0" * 40)
    torch.save(source.model.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    tag = {"example": {"hf_hub": "example/tiny-clip/", "quick_gelu": True, "mean": (0.5, 0.5, 0.5),
                       "std": (0.25, 0.25, 0.25), "interpolation": "bilinear", "resize_mode": "shortest"}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, tiny_name, tag)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bundle = load_clip(tiny_name, "example", cache_dir=tmp_path)
    assert bundle.weights == "example"
    _assert_same_weights(source.model, bundle.model)
    assert isinstance(bundle.model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert "mean=(0.5, 0.5, 0.5)" in str(bundle.preprocess_val)


def test_unknown_model_and_bad_config(tmp_path):
    with pytest.raises(ValueError, match="--model-config"):
        load_clip("NoSuchModel-1", None)
    bad = tmp_path / "Broken.json"
    bad.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ValueError, match="vision_cfg"):
        register_model_config(bad)
    with pytest.raises(FileNotFoundError, match="Missing.json"):
        register_model_config(tmp_path / "Missing.json")


def test_image_classifier_is_head_of_encoder(tiny_name):
    bundle = _random_tiny(tiny_name, seed=6)
    head = ZeroShotHead(torch.randn(5, 32), 10.0)
    classifier = ImageClassifier(bundle.model.visual, head)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = 10.0 * F.normalize(bundle.model.encode_image(images), dim=-1) @ head.weight.T
        torch.testing.assert_close(classifier(images), expected)
    assert classifier(images).shape == (3, 5)


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="Unknown device"):
        resolve_device("gpu0")
    with autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_random_init_file_is_drawn_once_per_seed_and_leaves_the_global_generator(tmp_path, tiny_name):
    from mtmg.core.config import ClipSpec
    from mtmg.method.clip_weights import clip_source

    state = torch.random.get_rng_state()
    path = random_init_file(tiny_name, tmp_path)
    assert torch.equal(torch.random.get_rng_state(), state)
    stamp = path.stat().st_mtime_ns
    assert random_init_file(tiny_name, tmp_path) == path and path.stat().st_mtime_ns == stamp  # reused, not redrawn
    other = random_init_file(tiny_name, tmp_path, seed=1)
    first, second = torch.load(path, weights_only=True), torch.load(other, weights_only=True)
    assert first.keys() == second.keys() and any(not torch.equal(first[k], second[k]) for k in first)
    with pytest.warns(UserWarning, match="random initialisation"):
        source = clip_source(ClipSpec(name=tiny_name, pretrained=None), tmp_path)
    assert source == str(path)
    bundle = load_clip(tiny_name, source)
    assert bundle.weights.startswith(f"{path.name}@sha256:")  # a content id: its zero-shot heads can be cached
    _assert_same_weights(bundle.model, load_clip(tiny_name, path).model)

"""A CLIP model named by the path of its open_clip config file: loaded in any process that gets the path
(e.g. a notebook kernel), and identified by the file's content in the run store."""

import json
import warnings
from pathlib import Path

import pytest

from mtmg.core.config import ClipSpec
from mtmg.core.errors import ArgumentError
from mtmg.method.clip_weights import clip_identity
from mtmg.models.clip import load_clip
from mtmg.runs import pipeline, probe
from mtmg.runs.profiles import load_profile

TINY_CONFIG = Path(__file__).parent / "model_configs" / "TinyCLIP-test.json"


def _config(folder: Path, width: int) -> Path:
    cfg = json.loads(TINY_CONFIG.read_text())
    cfg["vision_cfg"]["width"] = width
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "Smoke-CLIP.json"
    path.write_text(json.dumps(cfg))
    return path


def _random_clip(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_clip(str(path), None)


def test_a_config_file_path_loads_its_architecture(tmp_path):
    narrow, wide = _config(tmp_path / "a", 64), _config(tmp_path / "b", 128)
    for path, width in ((narrow, 64), (wide, 128), (narrow, 64)):  # same stem: the file named is the one built
        bundle = _random_clip(path)
        assert bundle.model.visual.conv1.out_channels == width
        assert bundle.model_name.startswith("Smoke-CLIP.json@sha256:")
    assert _random_clip(narrow).model_name != _random_clip(wide).model_name


def test_config_content_is_part_of_the_run_key(tmp_path, isolated):
    narrow, wide = _config(tmp_path / "a", 64), _config(tmp_path / "b", 128)
    assert clip_identity(ClipSpec(str(narrow), None)) != clip_identity(ClipSpec(str(wide), None))

    def folder(path: Path) -> Path:
        return pipeline.stage_folder(load_profile("default", clip_model=str(path), clip_weights="weights.pt"),
                                     "zeroshot")

    before = folder(narrow)
    assert folder(wide) != before
    narrow.write_text(wide.read_text())  # same path, other content
    assert folder(narrow) != before


def test_a_missing_config_file_fails_when_the_profile_loads(tmp_path):
    with pytest.raises(ArgumentError, match="nowhere.json"):
        load_profile("default", clip_model=str(tmp_path / "nowhere.json"))


def test_probe_settings_are_overridable():
    prof = load_profile("paper", overrides={"probe.seeds": [0], "probe.Cs": [1.0]})
    cfg = probe.load_probe_config(prof)
    assert cfg.seeds == (0,) and cfg.Cs == (1.0,)
    assert cfg.shots == probe.load_probe_config(load_profile("paper")).shots  # the rest from probe.yaml
    with pytest.raises(TypeError):
        load_profile("paper", overrides={"probe.seeds": "zero"})

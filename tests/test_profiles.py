"""Profiles, notebook parameters and dotted overrides, and the checks that run before any file is written."""
from __future__ import annotations

import textwrap

import pytest
import torch

from mtmg.core.config import AlignConfig, PatchConfig, TrainConfig, load_config
from mtmg.core.errors import ConfigError
from mtmg.runs import pipeline, profiles

pytestmark = pytest.mark.usefixtures("isolated")


def test_default_profile_derives_the_zeroshot_stage():
    prof = profiles.load_profile("default")
    assert prof.name == "default" and prof.patch.clip.name == "MiniCLIP-64"
    assert [s.name for s in prof.zeroshot.tasks] == ["eurosat_ms"]  # patching task and eval set are one
    assert [s.name for s in prof.zeroshot.supported] == ["synthetic"] and prof.zeroshot.extra_tasks == ()
    assert prof.embed_data.name == "eurosat_ms"


def test_stage_1_overrides_reach_the_derived_zeroshot_stage(eurosat_copy):
    """Chapter 1 compares its zero-shot scores with stage 1: an override of stage 1's CLIP or data must reach
    the zero-shot stage too."""
    prof = profiles.load_profile("default", overrides={"patch.clip.pretrained": None,
                                                       "patch.task.root": str(eurosat_copy)})
    assert prof.patch.clip.pretrained is None and prof.zeroshot.clip == prof.patch.clip
    assert str(eurosat_copy) in [s.root for s in prof.zeroshot.tasks]
    assert prof.zeroshot.tasks[0] == prof.patch.task
    untouched = profiles.load_profile("default")
    assert untouched.zeroshot.clip.pretrained == "miniclip" and str(eurosat_copy) not in [
        s.root for s in untouched.zeroshot.tasks]


@pytest.mark.parametrize("changes, key", [({"probe.shots": [-1]}, "shots"), ({"probe.Cs": [0.0]}, "Cs"),
                                           ({"probe.seeds": []}, "seeds"), ({"probe.bootstrap": 0}, "bootstrap"),
                                           ({"probe.max_items": 1}, "max_items")])
def test_out_of_range_probe_values_are_rejected_at_load(changes, key):
    with pytest.raises(ConfigError, match=rf"probe\.{key}: expected"):
        profiles.load_profile("default", overrides=changes)


def test_paper_profile_zeroshot_covers_the_papers_datasets():
    prof = profiles.load_profile("paper")
    names = {s.name for s in prof.zeroshot.tasks + prof.zeroshot.extra_tasks}
    assert {"bigearthnet19", "bigearthnet5", "bigearthnet43", "eurosat_ms", "sen12ms", "resisc45"} <= names
    assert prof.zeroshot.supported[0].name == "folder" and prof.zeroshot.clip.pretrained == "openai"


def test_notebook_parameters_reach_every_stage():
    prof = profiles.load_profile("paper", data_roots={"bigearthnet19": "/data/ben", "sen12ms": "/data/s12",
                                                      "resisc45": "/data/r45"},
                                 clip_model="ViT-L-14", clip_weights="/w/vit.pt", eval_batch_size=7, seed=3,
                                 train_batch_size=16)
    assert prof.patch.task.root == "/data/ben" and prof.align.data.root == "/data/ben"
    assert {s.name: s.root for s in prof.align.eval_sets}["sen12ms"] == "/data/s12"
    assert {s.name: s.root for s in prof.zeroshot.tasks}["bigearthnet19"] == "/data/ben"
    assert {s.name: s.root for s in prof.zeroshot.extra_tasks}["resisc45"] == "/data/r45"
    assert (prof.patch.clip.name, prof.patch.clip.pretrained) == ("ViT-L-14", "/w/vit.pt")
    assert prof.zeroshot.clip == prof.patch.clip
    assert prof.patch.eval_batch_size == prof.align.eval_batch_size == prof.zeroshot.batch_size == 7
    assert prof.patch.train.seed == prof.align.train.seed == 3
    assert prof.patch.train.batch_size == prof.align.train.batch_size == 16
    assert prof.align.train.lr == profiles.load_profile("paper").align.train.lr


def test_dotted_overrides_are_type_checked_and_do_not_touch_the_input():
    cfg = PatchConfig()
    out = profiles.override(cfg, {"train.epochs": 2, "supported.0.options": {"num_samples": 5}, "alphas": [0, 1]})
    assert out.train.epochs == 2 and out.supported[0].options == {"num_samples": 5}
    assert out.alphas == (0.0, 1.0) and cfg.train.epochs == 30
    with pytest.raises(KeyError, match="trian"):
        profiles.override(cfg, {"trian.epochs": 2})
    with pytest.raises(KeyError, match="index"):
        profiles.override(cfg, {"supported.3.root": "x"})
    with pytest.raises(TypeError):
        profiles.override(cfg, {"train.epochs": "two"})


def test_load_profile_rejects_unknown_profiles_and_override_prefixes():
    with pytest.raises(FileNotFoundError, match="no such profile"):
        profiles.load_profile("nonexistent")
    with pytest.raises(KeyError, match="prefix"):
        profiles.load_profile("default", overrides={"epochs": 3})
    prof = profiles.load_profile("default", overrides={"embeddings.max_items": 9, "align.train.epochs": 1})
    assert prof.embeddings.max_items == 9 and prof.align.train.epochs == 1


def test_describe_feeds_the_banner():
    info = profiles.load_profile("default").describe()
    assert info["profile"] == "default" and info["model"] == "MiniCLIP-64" and info["device"] == "cpu"
    assert any("eurosat_ms" in d for d in info["data"]) and "synthetic (test split)" in info["data"]


def test_set_threads():
    before = torch.get_num_threads()
    try:
        assert profiles.set_threads(None) == before
        assert profiles.set_threads(1) == 1 == torch.get_num_threads()
        with pytest.raises(ValueError, match="positive"):
            profiles.set_threads(0)
    finally:
        torch.set_num_threads(before)


# --- validation before anything is written -----------------------------------------------------------------

def test_yaml_numbers_written_as_text_are_read_as_numbers_or_rejected_with_the_key(tmp_path):
    path = tmp_path / "patch.yaml"
    path.write_text("train:\n  lr: 1e-4\n  weight_decay: 5e-2\n")  # YAML 1.1 reads both as strings
    cfg = load_config(path, PatchConfig)
    assert cfg.train.lr == 0.0001 and isinstance(cfg.train.lr, float) and cfg.train.weight_decay == 0.05
    path.write_text("train:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"patch\.yaml\.train\.lr: expected a number, got 'fast'"):
        load_config(path, PatchConfig)


@pytest.mark.parametrize("text, key", [
    ("train:\n  epochs: 0\n", "train.epochs"), ("train:\n  batch_size: 0\n", "train.batch_size"),
    ("alphas: [0.0, 1.5]\n", "alphas"), ("augment: rotate\n", "augment"), ("train:\n  lr: -1.0\n", "train.lr"),
])
def test_out_of_range_patch_values_are_rejected_at_load(tmp_path, text, key):
    path = tmp_path / "patch.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path, PatchConfig)


def test_out_of_range_align_values_are_rejected_at_load(tmp_path):
    path = tmp_path / "align.yaml"
    for text, key in (("feature_loss: l1\n", "feature_loss"), ("cls_weight: -0.1\n", "cls_weight"),
                      ("carve_fraction: 1.0\n", "carve_fraction")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=key):
            load_config(path, AlignConfig)
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)


@pytest.mark.parametrize("kwargs", [
    {"seed": "abc"}, {"seed": -1}, {"train_batch_size": 0}, {"eval_batch_size": "8"}, {"data_roots": ["x"]},
    {"overrides": {"patch.train.seed": "abc"}}, {"overrides": {"align.cls_weight": "heavy"}},
    {"overrides": {"patch.train.epochs": 0}}, {"overrides": {"embeddings.max_items": 0}},
])
def test_bad_notebook_parameters_fail_before_any_file_is_written(isolated, kwargs):
    with pytest.raises((ValueError, TypeError)):
        prof = profiles.load_profile("default", **kwargs)
        pipeline.ensure_patch(prof)  # not reached: the parameters are checked when the profile is loaded
    assert not (isolated / "runs").exists() and not (isolated / "cache").exists()


def test_zeroshot_yaml_changes_keys_of_the_derived_stage(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "patch.yaml").write_text("profile: mine\n")
    (folder / "align.yaml").write_text("profile: mine\n")
    (folder / "zeroshot.yaml").write_text(textwrap.dedent("""\
        extra_tasks:
          - name: eurosat_rgb
            root: data/eurosat_rgb_sample
        batch_size: 8
        """))
    prof = profiles.load_profile(str(folder))
    assert [s.name for s in prof.zeroshot.extra_tasks] == ["eurosat_rgb"] and prof.zeroshot.batch_size == 8
    assert prof.zeroshot.tasks == (prof.patch.task,)

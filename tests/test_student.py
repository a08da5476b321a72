"""The multispectral student: architecture, strict weight loading, offline behaviour."""
from __future__ import annotations

import warnings

import pytest
import timm
import torch

from mtmg.core.config import StudentConfig
from mtmg.models import student as student_mod
from mtmg.models.student import WeightsMismatchError, build_student, load_backbone_weights, read_weights

SMALL = StudentConfig(overrides={"img_size": 64, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2})


def _quiet_build(cfg: StudentConfig, out_dim: int = 32):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_student(cfg, out_dim)


def _donor_state(cfg: StudentConfig = SMALL, classes: int = 5) -> dict[str, torch.Tensor]:
    """A state dict of the same architecture with a classification head, as published weights have."""
    torch.manual_seed(123)
    donor = timm.create_model(cfg.arch, pretrained=False, num_classes=classes, in_chans=13, **cfg.overrides)
    return donor.state_dict()


def test_default_student_shapes_and_warning():
    with pytest.warns(UserWarning, match="random initialisation"):
        s = build_student(StudentConfig(), 128)
    assert s(torch.rand(2, 13, 64, 64)).shape == (2, 128)
    assert s.backbone.patch_embed.proj.in_channels == 13 and s.proj.in_features == 128
    assert 0.5e6 < sum(p.numel() for p in s.parameters()) < 1.5e6
    assert _quiet_build(StudentConfig(out_dim=7), 128)(torch.rand(1, 13, 64, 64)).shape == (1, 7)


def test_weights_with_only_head_differences_load_exactly(tmp_path):
    state = _donor_state()
    assert "head.weight" in state
    path = tmp_path / "w.pt"
    torch.save({"state_dict": state}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no random-initialisation warning
        s = build_student(StudentConfig(**{**SMALL.__dict__, "weights": str(path)}), 32)
    own = s.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("head."))
    without_head = {k: v for k, v in state.items() if not k.startswith("head.")}
    load_backbone_weights(_quiet_build(SMALL).backbone, without_head, "no-head.pt")


def test_renamed_key_is_rejected():
    state = _donor_state()
    state["blocks.0.attn.qkv.weight_renamed"] = state.pop("blocks.0.attn.qkv.weight")
    backbone = _quiet_build(SMALL).backbone
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(WeightsMismatchError, match="renamed.pt.*missing keys \\['blocks.0.attn.qkv.weight'\\]"
                                                   ".*unexpected keys \\['blocks.0.attn.qkv.weight_renamed'\\]"):
        load_backbone_weights(backbone, state, "renamed.pt")
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())  # nothing half-loaded


def test_missing_extra_or_misshaped_keys_are_rejected():
    backbone = _quiet_build(SMALL).backbone
    state = _donor_state()
    with pytest.raises(WeightsMismatchError, match="missing keys \\['norm.bias'\\]"):
        load_backbone_weights(backbone, {k: v for k, v in state.items() if k != "norm.bias"}, "f")
    with pytest.raises(WeightsMismatchError, match="unexpected keys \\['extra.weight'\\]"):
        load_backbone_weights(backbone, {**state, "extra.weight": torch.zeros(1)}, "f")
    three_band = _donor_state(StudentConfig(**{**SMALL.__dict__}))
    three_band["patch_embed.proj.weight"] = three_band["patch_embed.proj.weight"][:, :3]
    with pytest.raises(WeightsMismatchError, match="patch_embed.proj.weight: file \\(64, 3, 16, 16\\)"):
        load_backbone_weights(backbone, three_band, "rgb.pt")


def test_paper_student_accepts_published_layout():
    cfg = StudentConfig(arch="vit_small_patch16_224", overrides={}, drop_path=0.2)
    s = _quiet_build(cfg, 512)
    assert s.backbone.num_features == 384 and s.proj.out_features == 512
    load_backbone_weights(s.backbone, _donor_state(cfg, classes=1000), "vit_small_patch16_224 with head")


def test_missing_files_and_offline_ssl4eo_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_weights(str(tmp_path / "nope.pt"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1.*student.weights"):
        read_weights(student_mod.SSL4EO_MOCO)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"], ids=["empty", "truncated"])
def test_an_empty_or_truncated_student_file_names_the_file_and_the_fix(tmp_path, content):
    from mtmg.core.checkpoint import CorruptCheckpointError

    path = tmp_path / "student.pth"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match=r"student\.pth.*student\.weights"):
        read_weights(str(path))

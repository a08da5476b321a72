"""Stage 2: teacher cache, frozen teacher and head, resume, learning on the shipped tiles, the CLI end to end."""
from __future__ import annotations

import copy
import json
import warnings

import pandas as pd
import pytest
import torch

from mtmg import cli
from mtmg.core import checkpoint
from mtmg.core.config import AlignConfig, StudentConfig, TrainConfig
from mtmg.data import tasks
from mtmg.method import alignment, losses
from mtmg.method.training import InMemoryDataset
from mtmg.models.clip import ZeroShotHead, load_clip
from mtmg.models.student import build_student

from conftest import EUROSAT, ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = StudentConfig(overrides={"img_size": 64, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2})
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    """A random-init MiniCLIP tower as teacher, a random text head, and the shipped tiles in memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        bundle = load_clip("MiniCLIP-64", None)
    tiles = {split: InMemoryDataset(tasks.open_split(EUROSAT, split, bundle.preprocess_val),
                                    ("rgb", "ms", "target")) for split in ("train", "val")}
    head = ZeroShotHead(torch.randn(10, 128, generator=torch.Generator().manual_seed(0)), 20.0)
    return bundle.model.visual.eval(), head, tiles


def _student(cfg: StudentConfig = SMALL):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return build_student(cfg, 128)


def _cfg(**kw) -> AlignConfig:
    train = kw.pop("train", TrainConfig(epochs=2, batch_size=25, lr=1e-3, warmup_steps=2, checkpoint_every=3))
    return AlignConfig(student=SMALL, train=train, **kw)


@pytest.mark.parametrize("augment", ["d4", "d4_student", "none"])
def test_cached_teacher_equals_recomputed_teacher(setup, tmp_path, augment):
    teacher, head, tiles = setup
    runs = {}
    for cache in (True, False):
        student = _student()
        alignment.align(teacher, student, head, False, tiles["train"], _cfg(augment=augment, teacher_cache=cache),
                        tmp_path / str(cache), device=CPU)
        runs[cache] = student.state_dict()
    assert (tmp_path / "True" / alignment.TEACHER_CACHE).is_file()
    assert not (tmp_path / "False" / alignment.TEACHER_CACHE).exists()
    for k, v in runs[True].items():
        assert torch.allclose(v, runs[False][k], rtol=0, atol=1e-6), k


def test_teacher_cache_holds_every_d4_view(setup):
    teacher, _, tiles = setup
    emb = alignment.teacher_embeddings(teacher, tiles["val"], 8, device=CPU, batch_size=64)
    assert emb.shape == (50, 8, 128)
    with torch.no_grad():
        rotated = teacher(torch.rot90(tiles["val"][3]["rgb"], 1, dims=(-2, -1))[None])
    assert torch.allclose(emb[3, 1], rotated[0], atol=1e-5)
    assert not torch.allclose(emb[3, 0], emb[3, 1], atol=1e-3)


def test_teacher_and_head_are_unchanged_by_training(setup, tmp_path):
    teacher, head, tiles = setup
    teacher_before = copy.deepcopy(teacher.state_dict())
    head_before = copy.deepcopy(head.state_dict())
    student = _student()
    student_before = copy.deepcopy(student.state_dict())
    alignment.align(teacher, student, head, False, tiles["train"], _cfg(teacher_cache=False), tmp_path, device=CPU)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in head_before.items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in student_before.items())


class _Crash(Exception):
    pass


def test_resume_after_crash_equals_uninterrupted(setup, tmp_path, monkeypatch):
    teacher, head, tiles = setup
    cfg = _cfg(train=TrainConfig(epochs=3, batch_size=25, lr=1e-3, warmup_steps=2, checkpoint_every=4))
    reference = _student()
    alignment.align(teacher, reference, head, False, tiles["train"], cfg, tmp_path / "ref", device=CPU)

    real, calls = alignment.feature_loss, [0]

    def crashing(kind, s, t):
        calls[0] += 1
        if calls[0] > 9:
            raise _Crash
        return real(kind, s, t)
    monkeypatch.setattr(alignment, "feature_loss", crashing)
    with pytest.raises(_Crash):
        alignment.align(teacher, _student(), head, False, tiles["train"], cfg, tmp_path / "run", device=CPU)
    monkeypatch.setattr(alignment, "feature_loss", real)
    assert checkpoint.load(tmp_path / "run" / "train" / "checkpoint.pt")["step"] == 8
    resumed = _student()
    alignment.align(teacher, resumed, head, False, tiles["train"], cfg, tmp_path / "run", device=CPU, resume=True)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in reference.state_dict().items())


def _mean_recall(rows: list[dict], ks=(1, 5)) -> float:
    table = pd.DataFrame(rows)
    chosen = table[table["metric"].isin([f"recall@{k}" for k in ks])]
    assert set(chosen["modality"]) == {"ms->rgb", "rgb->ms"}
    return float(chosen["value"].mean())


def test_short_alignment_lowers_feature_loss_and_raises_retrieval(setup, tmp_path):
    teacher, head, tiles = setup
    train = tiles["train"]
    ms = torch.stack([it["ms"] for it in train.items])
    with torch.no_grad():
        target = teacher(torch.stack([it["rgb"] for it in train.items]))
    student = _student()

    def feature_mse() -> float:
        student.eval()
        with torch.no_grad():
            return losses.feature_loss("mse", student(ms), target).item()

    def recall() -> float:
        return _mean_recall(alignment.evaluate_alignment({"s": student}, {"t": teacher}, head, False, tiles["val"],
                                                         name="eurosat_ms", split="val", device=CPU))
    before_loss, before_recall = feature_mse(), recall()
    cfg = _cfg(train=TrainConfig(epochs=20, batch_size=10, lr=1e-3, warmup_steps=4, checkpoint_every=0), augment="none")
    alignment.align(teacher, student, head, False, train, cfg, tmp_path, device=CPU)
    after_loss, after_recall = feature_mse(), recall()
    assert after_loss < 0.5 * before_loss, (before_loss, after_loss)
    assert after_recall > max(2 * before_recall, before_recall + 0.04), (before_recall, after_recall)
    log = pd.read_csv(tmp_path / "train" / "train_log.csv")
    assert {"feature_loss", "cls_loss"} <= set(log.columns) and len(log) == 200


def test_feature_losses():
    s, t = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[2.0, 0.0], [0.0, -2.0]])
    assert losses.feature_loss("mse", s, t).item() == pytest.approx((1 + 16) / 4)
    assert losses.feature_loss("cosine", s, t).item() == pytest.approx((0 + 2) / 2)
    with pytest.raises(ValueError, match="feature_loss"):
        losses.feature_loss("l1", s, t)


def test_cli_runs_both_stages_and_resumes(tmp_path, capsys):
    patch_yaml, align_yaml = tmp_path / "patch.yaml", tmp_path / "align.yaml"
    patch_yaml.write_text(f"""
clip: {{name: MiniCLIP-64, pretrained: null}}
task: {{name: eurosat_ms, root: {EUROSAT.root}}}
supported: [{{name: synthetic, options: {{num_samples: 20}}}}]
train: {{epochs: 1, batch_size: 50, warmup_steps: 1}}
alphas: [0.0, 0.5, 1.0]
cache_dir: {tmp_path / 'cache'}
""")
    align_yaml.write_text(f"""
teacher_dir: {tmp_path / 'patch'}
student: {{overrides: {{img_size: 64, patch_size: 16, embed_dim: 32, depth: 1, num_heads: 2}}}}
data: {{name: eurosat_ms, root: {EUROSAT.root}}}
eval_sets: [{{name: eurosat_ms, root: {EUROSAT.root}}}]
train: {{epochs: 2, batch_size: 50, warmup_steps: 1, checkpoint_every: 2}}
cache_dir: {tmp_path / 'cache'}
""")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["patch", "--config", str(patch_yaml), "--out", str(tmp_path / "patch"),
                         "--device", "cpu"]) == 0
        assert "selected alpha" in capsys.readouterr().out
        assert cli.main(["align", "--config", str(align_yaml), "--out", str(tmp_path / "align"),
                         "--device", "cpu"]) == 0
        first = checkpoint.load(tmp_path / "align" / "student.pt")
        assert cli.main(["align", "--config", str(align_yaml), "--out", str(tmp_path / "align"),
                         "--device", "cpu", "--resume"]) == 0
    again = checkpoint.load(tmp_path / "align" / "student.pt")
    assert all(torch.equal(v, again[k]) for k, v in first.items())
    results = pd.read_csv(tmp_path / "align" / "results.csv")
    assert list(results.columns) == ["model", "modality", "dataset", "split", "metric", "value"]
    assert {"student", "student_init", "clip_patched", "clip_zeroshot"} == set(results["model"])
    assert {"rgb", "ms", "ms->rgb", "rgb->ms"} == set(results["modality"])
    assert {"top1", "recall@1", "recall@5", "recall@10", "recall@20", "recall@50"} == set(results["metric"])
    assert set(results["split"]) == {"val", "test"}
    run = json.loads((tmp_path / "align" / "run.json").read_text())
    chosen = json.loads((tmp_path / "patch" / "selected_alpha.json").read_text())
    assert run["teacher_alpha"] == chosen["alpha"]
    capsys.readouterr()
    orphan = tmp_path / "orphan.yaml"
    orphan.write_text(align_yaml.read_text().replace(str(tmp_path / "patch"), str(tmp_path / "nowhere")))
    assert cli.main(["align", "--config", str(orphan), "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2
    assert "no finished stage recorded" in capsys.readouterr().err


def test_stage_2_imports_nothing_from_stage_1_but_load_patched():
    import ast

    tree = ast.parse((ROOT / "mtmg" / "method" / "alignment.py").read_text())
    from_patching = [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     and node.module == "mtmg.method.patching" for alias in node.names]
    plain = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert from_patching == ["load_patched"] and "mtmg.method.patching" not in plain

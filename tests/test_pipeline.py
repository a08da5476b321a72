"""Profiles, overrides, stage reuse and staleness, and the data views of the book's figures."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mtmg import pipeline
from mtmg.config import PatchConfig, save_config
from mtmg.sentinel2 import SSL4EO_BANDS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test writes its runs and caches under its own temporary folder, on one thread."""
    monkeypatch.setenv("MTMG_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("MTMG_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- profiles and overrides ------------------------------------------------------------------------------

def test_default_profile_derives_the_zeroshot_stage():
    prof = pipeline.load_profile("default")
    assert prof.name == "default" and prof.patch.clip.name == "MiniCLIP-64"
    assert [s.name for s in prof.zeroshot.tasks] == ["eurosat_ms"]  # patching task and eval set are one
    assert [s.name for s in prof.zeroshot.supported] == ["synthetic"]
    assert prof.stage_dir("patch") == Path(pipeline.paths.runs_dir()) / "default" / "patch"
    assert prof.embed_data.name == "eurosat_ms"


def test_paper_profile_zeroshot_covers_the_papers_datasets():
    prof = pipeline.load_profile("paper")
    names = {s.name for s in prof.zeroshot.tasks}
    assert {"bigearthnet19", "bigearthnet5", "bigearthnet43", "eurosat_ms", "sen12ms", "resisc45"} <= names
    assert prof.zeroshot.supported[0].name == "folder" and prof.zeroshot.clip.pretrained == "openai"


def test_notebook_parameters_reach_every_stage():
    prof = pipeline.load_profile("paper", data_roots={"bigearthnet19": "/data/ben", "sen12ms": "/data/s12"},
                                 clip_model="ViT-L-14", clip_weights="/w/vit.pt", eval_batch_size=7, seed=3,
                                 train_batch_size=16)
    assert prof.patch.task.root == "/data/ben" and prof.align.data.root == "/data/ben"
    assert {s.name: s.root for s in prof.align.eval_sets}["sen12ms"] == "/data/s12"
    assert {s.name: s.root for s in prof.zeroshot.tasks}["bigearthnet19"] == "/data/ben"
    assert (prof.patch.clip.name, prof.patch.clip.pretrained) == ("ViT-L-14", "/w/vit.pt")
    assert prof.zeroshot.clip == prof.patch.clip
    assert prof.patch.eval_batch_size == prof.align.eval_batch_size == prof.zeroshot.batch_size == 7
    assert prof.patch.train.seed == prof.align.train.seed == 3
    assert prof.patch.train.batch_size == prof.align.train.batch_size == 16
    assert prof.align.train.lr == pipeline.load_profile("paper").align.train.lr


def test_dotted_overrides_are_type_checked_and_do_not_touch_the_input():
    cfg = PatchConfig()
    out = pipeline.override(cfg, {"train.epochs": 2, "supported.0.options": {"num_samples": 5}, "alphas": [0, 1]})
    assert out.train.epochs == 2 and out.supported[0].options == {"num_samples": 5}
    assert out.alphas == (0.0, 1.0) and cfg.train.epochs == 30
    with pytest.raises(KeyError, match="trian"):
        pipeline.override(cfg, {"trian.epochs": 2})
    with pytest.raises(KeyError, match="index"):
        pipeline.override(cfg, {"supported.3.root": "x"})
    with pytest.raises(TypeError):
        pipeline.override(cfg, {"train.epochs": "two"})


def test_load_profile_rejects_unknown_profiles_and_override_prefixes():
    with pytest.raises(FileNotFoundError, match="no such profile"):
        pipeline.load_profile("nonexistent")
    with pytest.raises(KeyError, match="prefix"):
        pipeline.load_profile("default", overrides={"epochs": 3})
    prof = pipeline.load_profile("default", overrides={"embed_max": 9, "align.train.epochs": 1})
    assert prof.embed_max == 9 and prof.align.train.epochs == 1


def test_describe_feeds_the_banner():
    info = pipeline.load_profile("default").describe()
    assert info["profile"] == "default" and info["model"] == "MiniCLIP-64" and info["device"] == "cpu"
    assert any("eurosat_ms" in d for d in info["data"]) and "synthetic (test split)" in info["data"]


def test_fingerprint_tracks_config_weights_and_upstream():
    a, b = PatchConfig(), pipeline.override(PatchConfig(), {"train.lr": 1e-3})
    assert pipeline.fingerprint("patch", a) == pipeline.fingerprint("patch", PatchConfig())
    assert pipeline.fingerprint("patch", a) != pipeline.fingerprint("patch", b)
    assert pipeline.fingerprint("patch", a, ["x"]) != pipeline.fingerprint("patch", a, ["y"])
    assert pipeline.fingerprint("patch", a) != pipeline.fingerprint("align", a)
    assert "miniclip" in pipeline.clip_identity(a.clip)
    assert pipeline.clip_identity(pipeline.override(a, {"clip.pretrained": "openai"}).clip) == {"tag": "openai"}


# --- stage reuse with stand-in stages --------------------------------------------------------------------

class FakeStages:
    """Stand-ins for run_patching / run_alignment that write the files a stage leaves, and count calls."""

    def __init__(self):
        self.calls = {"patch": 0, "align": 0}

    def patch(self, cfg, *, device="auto", out_dir=None, resume=False):
        self.calls["patch"] += 1
        out = pipeline.paths.runs_dir() / cfg.profile / "patch"
        out.mkdir(parents=True, exist_ok=True)
        for name in ("patched.pt", "zeroshot.pt"):
            torch.save({"w": torch.zeros(1)}, out / name)
        (out / "clip.json").write_text("{}")
        (out / "selected_alpha.json").write_text(json.dumps({"alpha": 0.5, "paper_alpha": 0.5, "criterion": "c"}))
        pd.DataFrame([{"task": "eurosat_ms", "split": "val", "alpha": 0.0, "metric": "top1", "value": 0.5}]
                     ).to_csv(out / "scores.csv", index=False)
        save_config(cfg, out / "config.yaml")
        (out / "run.json").write_text("{}")

    def align(self, cfg, *, device="auto", out_dir=None, resume=False):
        self.calls["align"] += 1
        out = pipeline.paths.runs_dir() / cfg.profile / "align"
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.zeros(1)}, out / "student.pt")
        pd.DataFrame([{"model": "student", "modality": "ms", "dataset": "eurosat_ms", "split": "test",
                       "metric": "top1", "value": 0.3}]).to_csv(out / "results.csv", index=False)
        save_config(cfg, out / "config.yaml")
        (out / "run.json").write_text("{}")


@pytest.fixture
def fake(monkeypatch):
    stages = FakeStages()
    monkeypatch.setattr("mtmg.patching.run_patching", stages.patch)
    monkeypatch.setattr("mtmg.alignment.run_alignment", stages.align)
    return stages


def test_ensure_reuses_current_outputs_and_reruns_stale_ones(fake):
    prof = pipeline.load_profile("default")
    first = pipeline.ensure_patch(prof)
    assert fake.calls["patch"] == 1 and first.alpha == 0.5 and len(first.scores) == 1
    pipeline.ensure_patch(prof)
    assert fake.calls["patch"] == 1, "current outputs must be reused"
    pipeline.ensure_patch(pipeline.load_profile("default", seed=5))
    assert fake.calls["patch"] == 2, "a changed config must rerun the stage"
    pipeline.ensure_patch(prof)
    assert fake.calls["patch"] == 3, "changing back is another change"
    (prof.stage_dir("patch") / "scores.csv").unlink()
    pipeline.ensure_patch(prof)
    assert fake.calls["patch"] == 4, "missing outputs must rerun the stage"
    pipeline.ensure_patch(prof, force=True)
    assert fake.calls["patch"] == 5


def test_alignment_reruns_when_its_teacher_was_patched_again(fake):
    prof = pipeline.load_profile("default")
    pipeline.ensure_align(prof)
    assert fake.calls == {"patch": 1, "align": 1}
    pipeline.ensure_align(prof)
    assert fake.calls == {"patch": 1, "align": 1}
    pipeline.ensure_patch(prof, force=True)
    pipeline.ensure_align(prof)
    assert fake.calls == {"patch": 2, "align": 2}, "a new teacher makes the student stale"
    pipeline.ensure_align(pipeline.load_profile("default", overrides={"align.cls_weight": 0.1}))
    assert fake.calls == {"patch": 2, "align": 3}


def test_command_line_outputs_with_the_same_config_are_adopted(fake):
    prof = pipeline.load_profile("default")
    fake.patch(prof.patch)  # as `python -m mtmg patch --config configs/default/patch.yaml` leaves it
    pipeline.ensure_patch(prof)
    status = pipeline.read_status(prof.stage_dir("patch"))
    assert fake.calls["patch"] == 1 and "adopted" in status["note"]
    other = pipeline.load_profile("default", overrides={"align.train.epochs": 3})
    fake.align(pipeline.override(other.align, {"train.epochs": 4}))  # a run with another config
    pipeline.ensure_align(other)
    assert fake.calls["align"] == 2, "outputs of another config must not be adopted"


def test_run_times_lists_finished_stages(fake):
    prof = pipeline.load_profile("default")
    pipeline.ensure_align(prof)
    times = pipeline.run_times(prof)
    assert list(times["stage"]) == ["patch", "align"] and times["seconds"].notna().all()


# --- real stages, tiny ------------------------------------------------------------------------------------

TINY = {"patch.clip.pretrained": None, "patch.train.max_steps": 2, "patch.alphas": [0.0, 1.0],
        "patch.supported.0.options": {"num_samples": 20}, "align.train.max_steps": 2, "align.augment": "none",
        "align.student.overrides": {"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2},
        "zeroshot.clip.pretrained": None, "zeroshot.supported.0.options": {"num_samples": 20}}


@pytest.fixture
def tiny():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield pipeline.load_profile("default", overrides=TINY)


def test_zeroshot_stage_writes_per_class_results(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = pipeline.ensure_zeroshot(tiny)
    eurosat, synthetic = results["datasets"]
    assert (eurosat["dataset"], eurosat["role"], eurosat["n_samples"]) == ("eurosat_ms", "remote sensing", 50)
    assert (synthetic["role"], synthetic["n_samples"]) == ("supported", 20)
    cm = np.array(eurosat["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 50 and (cm.sum(axis=1) == 5).all()
    assert eurosat["value"] == pytest.approx(np.trace(cm) / 50)
    assert eurosat["per_class"] == pytest.approx(list(np.diag(cm) / 5))
    csv = pd.read_csv(tiny.stage_dir("zeroshot") / "results.csv")
    assert list(csv["dataset"]) == ["eurosat_ms", "synthetic"]


def test_tiny_end_to_end_embeddings_and_layout(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = pipeline.ensure_embeddings(tiny)
    n, d = emb.rgb_patched.shape
    assert n == 50 and emb.ms_student.shape == (n, d) and emb.rgb_zeroshot.shape == (n, d)
    assert emb.text.shape == (10 * 3, d) and emb.class_text.shape == (10, d)
    assert torch.allclose(emb.class_text.norm(dim=1), torch.ones(10))
    assert emb.labels.tolist() == sorted(emb.labels.tolist())  # class folders in label order
    assert len(set(emb.ids)) == n and emb.alpha in (0.0, 1.0)
    # the zero-shot tower is the alpha=0 endpoint, the patched one the selected alpha
    same = torch.allclose(emb.rgb_zeroshot, emb.rgb_patched)
    assert same == (emb.alpha == 0.0)
    status = pipeline.read_status(emb.out_dir)
    again = pipeline.ensure_embeddings(tiny)
    assert pipeline.read_status(emb.out_dir) == status and torch.equal(again.ms_student, emb.ms_student)
    layout = pipeline.ensure_layout(tiny, emb, "pca")
    assert len(layout) == 30 + 3 * n and set(layout["modality"]) == set(pipeline.embedding_sets(emb)[0])
    assert pipeline.ensure_layout(tiny, emb, "pca").equals(layout)


# --- data views -------------------------------------------------------------------------------------------

def test_example_tiles_one_per_class_from_the_shipped_sample():
    tiles = pipeline.example_tiles(pipeline.load_profile("default"), per_class=2)
    assert [t.label for t in tiles] == [c for c in range(10) for _ in range(2)]
    assert all(t.array13.shape == (13, 64, 64) and t.array13.dtype == np.uint16 for t in tiles)
    assert all(t.id.startswith(t.classname) and t.level == "L1C" for t in tiles)


def test_class_spectra_are_mean_reflectances():
    prof = pipeline.load_profile("default")
    spectra = pipeline.class_spectra(prof)
    assert list(spectra.columns) == list(SSL4EO_BANDS) and len(spectra) == 10
    assert ((spectra >= 0) & (spectra <= 1)).all().all()
    # water is dark in the near infrared, vegetation bright (B08)
    assert spectra.loc["SeaLake", "B08"] < spectra.loc["Forest", "B08"]
    tiles = [t for t in pipeline.example_tiles(prof, per_class=5) if t.classname == "River"]
    expected = np.mean([t.array13.reshape(13, -1).mean(axis=1) / 10000 for t in tiles], axis=0)
    assert spectra.loc["River"].to_numpy() == pytest.approx(expected)


def test_tiles_by_id_finds_tiles_and_names_missing_ones():
    prof = pipeline.load_profile("default")
    tiles = pipeline.example_tiles(prof)
    found = pipeline.tiles_by_id(prof, [tiles[3].id, tiles[7].id])
    assert np.array_equal(found[tiles[3].id].array13, tiles[3].array13)
    with pytest.raises(KeyError, match="Nowhere_1"):
        pipeline.tiles_by_id(prof, ["Nowhere_1"])


def test_subset_indices_are_fixed_and_capped():
    assert pipeline.subset_indices(5, 10, 0) == [0, 1, 2, 3, 4]
    picked = pipeline.subset_indices(100, 10, 1)
    assert len(set(picked)) == 10 and picked == sorted(picked) and picked == pipeline.subset_indices(100, 10, 1)
    assert picked != pipeline.subset_indices(100, 10, 2)


def _embeddings(ms, rgb, labels, tmp_path):
    n, d = rgb.shape
    return pipeline.Embeddings(
        text=torch.eye(d)[:2], text_labels=torch.tensor([0, 1]), class_text=torch.eye(d)[:2], logit_scale=100.0,
        rgb_zeroshot=rgb, rgb_patched=rgb, ms_student=ms, targets=torch.tensor(labels),
        ids=[f"t{i}" for i in range(n)], classnames=["a", "b"], classes=["A", "B"], dataset="x", root="", split="test",
        multilabel=False, level="L1C", alpha=0.5, n_total=n, out_dir=tmp_path)


def test_retrieval_examples_rank_by_cosine(tmp_path):
    g = torch.Generator().manual_seed(0)
    rgb = torch.randn(12, 8, generator=g)
    ms = rgb + 0.01 * torch.randn(12, 8, generator=g)
    ms[3] = -rgb[3]  # query 3 points away from its own tile
    emb = _embeddings(ms, rgb, [0] * 6 + [1] * 6, tmp_path)
    examples = pipeline.retrieval_examples(emb, n_queries=12, k=4)
    by_query = {ex.query: ex for ex in examples}
    assert all(by_query[f"t{i}"].hits[0] == f"t{i}" and by_query[f"t{i}"].positive_rank == 0
               for i in range(12) if i != 3)
    assert by_query["t3"].positive_rank == 11 and "t3" not in by_query["t3"].hits
    for ex in examples:
        assert ex.similarities == sorted(ex.similarities, reverse=True)
        assert ex.hit_labels == [0 if int(h[1:]) < 6 else 1 for h in ex.hits]


def test_embedding_sets_label_images_and_prompts(tmp_path):
    rgb = torch.randn(4, 8)
    sets, labels = pipeline.embedding_sets(_embeddings(rgb, rgb, [0, 1, 1, 0], tmp_path))
    assert list(sets) == ["text (class prompts)", "RGB, zero-shot CLIP", "RGB, patched CLIP", "MS, student"]
    assert labels["text (class prompts)"] == ["a", "b"] and labels["MS, student"] == ["a", "b", "b", "a"]


def test_status_files_are_plain_json(fake):
    prof = pipeline.load_profile("default")
    pipeline.ensure_patch(prof)
    status = json.loads((prof.stage_dir("patch") / pipeline.STATUS_FILE).read_text())
    assert status["stage"] == "patch" and status["fingerprint"] == pipeline.patch_fingerprint(prof)
    assert yaml.safe_load((prof.stage_dir("patch") / "config.yaml").read_text())["profile"] == "default"


def test_query_picks_prefer_distinct_classes():
    labels = [0] * 10 + [1] * 10 + [2] * 2
    picks = pipeline.query_picks(labels, 3, seed=4)
    assert sorted(labels[i] for i in picks) == [0, 1, 2]
    more = pipeline.query_picks(labels, 6, seed=4)
    assert more[:3] == picks and len(set(more)) == 6
    assert pipeline.query_picks(labels, 30) == pipeline.query_picks(labels, 30)
    assert len(pipeline.query_picks(labels, 30)) == 22


def test_code_hash_covers_the_stage_modules(tmp_path, monkeypatch):
    for stage in pipeline.STAGE_CODE:
        assert len(pipeline.code_hash(stage)) == 16
    assert pipeline.code_hash("patch") != pipeline.code_hash("align")
    package = tmp_path / "pkg"
    (package / "datasets").mkdir(parents=True)
    for name in pipeline.STAGE_CODE["align"]:
        if name != "datasets":
            (package / name).write_text("x = 1\n")
    (package / "datasets" / "a.py").write_text("y = 1\n")
    monkeypatch.setattr(pipeline, "__file__", str(package / "pipeline.py"))
    before = pipeline.code_hash("align")
    (package / "datasets" / "a.py").write_text("y = 2\n")
    assert pipeline.code_hash("align") != before
    (package / "datasets" / "a.py").write_text("y = 1\n")
    assert pipeline.code_hash("align") == before


def test_set_threads():
    before = torch.get_num_threads()
    assert pipeline.set_threads(None) == before
    assert pipeline.set_threads(1) == 1 == torch.get_num_threads()
    with pytest.raises(ValueError, match="positive"):
        pipeline.set_threads(0)

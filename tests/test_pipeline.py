"""The run store behind the chapters: reuse, side-by-side parameter sets, keys that follow the data,
command-line runs, and the real stages end to end on tiny settings."""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mtmg import cli
from mtmg.book import views
from mtmg.book.views import embedding_sets
from mtmg.core import checkpoint, paths, runstore
from mtmg.core.config import save_config
from mtmg.method import alignment
from mtmg.runs import pipeline, probe
from mtmg.runs.profiles import load_profile, override

from conftest import ROOT, TINY

pytestmark = pytest.mark.usefixtures("isolated", "one_thread")


# --- stage reuse with stand-in stage bodies ---------------------------------------------------------------

class FakeStages:
    """Stand-ins for the bodies of stages 1 and 2 that write the files a stage leaves, and count calls;
    folders, locks and keys stay the real ones of run_patching / run_alignment."""

    def __init__(self):
        self.calls = {"patch": 0, "align": 0}

    def patch(self, cfg, out, dev, resume):
        self.calls["patch"] += 1
        for name in ("patched.pt", "zeroshot.pt"):
            torch.save({"w": torch.full((1,), float(cfg.train.seed))}, out / name)
        (out / "clip.json").write_text("{}")
        (out / "selected_alpha.json").write_text(json.dumps({"alpha": 0.5, "paper_alpha": 0.5, "criterion": "c"}))
        pd.DataFrame([{"task": "eurosat_ms", "split": "val", "alpha": 0.0, "metric": "top1", "value": 0.5}]
                     ).to_csv(out / "scores.csv", index=False)
        save_config(cfg, out / "config.yaml")
        (out / "run.json").write_text("{}")

    def align(self, cfg, teacher_dir, out, dev, resume):
        self.calls["align"] += 1
        torch.save({"w": torch.zeros(1)}, out / "student.pt")
        pd.DataFrame([{"model": "student", "modality": "ms", "dataset": "eurosat_ms", "split": "test",
                       "metric": "top1", "value": 0.3}]).to_csv(out / "results.csv", index=False)
        save_config(cfg, out / "config.yaml")
        (out / "run.json").write_text("{}")


@pytest.fixture
def fake(monkeypatch):
    stages = FakeStages()
    monkeypatch.setattr("mtmg.method.patching._patch", stages.patch)
    monkeypatch.setattr("mtmg.method.alignment._align", stages.align)
    return stages


def _contents(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ensure_reuses_current_outputs_and_reruns_stale_ones(fake):
    prof = load_profile("default")
    first = pipeline.ensure_patch(prof)
    assert fake.calls["patch"] == 1 and first.alpha == 0.5 and len(first.scores) == 1
    assert first.out_dir.parent == paths.runs_dir() / "default" / "patch"
    pipeline.ensure_patch(prof)
    assert fake.calls["patch"] == 1, "current outputs must be reused"
    other = pipeline.ensure_patch(load_profile("default", seed=5))
    assert fake.calls["patch"] == 2 and other.out_dir != first.out_dir, "a changed config runs into its own folder"
    pipeline.ensure_patch(prof)
    assert fake.calls["patch"] == 2, "going back to a parameter set that ran reuses it"
    (first.out_dir / "scores.csv").unlink()
    pipeline.ensure_patch(prof)
    assert fake.calls["patch"] == 3, "missing outputs must rerun the stage"
    pipeline.ensure_patch(prof, force=True)
    assert fake.calls["patch"] == 4


def test_alignment_follows_the_key_of_its_teacher(fake):
    prof = load_profile("default")
    first = pipeline.ensure_align(prof)
    assert fake.calls == {"patch": 1, "align": 1}
    pipeline.ensure_align(prof)
    assert fake.calls == {"patch": 1, "align": 1}
    changed = load_profile("default", overrides={"patch.train.lr": 1e-3})
    assert pipeline.ensure_align(changed).out_dir != first.out_dir
    assert fake.calls == {"patch": 2, "align": 2}, "another teacher makes another student"
    pipeline.ensure_align(load_profile("default", overrides={"align.cls_weight": 0.1}))
    assert fake.calls == {"patch": 2, "align": 3}


def test_seed_1_leaves_the_seed_0_outputs_byte_identical_and_both_are_listed(fake, capsys):
    book = load_profile("default")
    patch0, align0 = pipeline.ensure_patch(book), pipeline.ensure_align(book)
    before = {f: _contents(f) for f in (patch0.out_dir, align0.out_dir)}
    student = load_profile("default", seed=1)
    patch1, align1 = pipeline.ensure_patch(student), pipeline.ensure_align(student)
    assert {patch1.out_dir, align1.out_dir}.isdisjoint(before)
    assert {f: _contents(f) for f in before} == before
    assert float(checkpoint.load(patch1.out_dir / "patched.pt")["w"]) == 1.0
    pipeline.ensure_align(book)  # the book's chapter 3 after a student's seed-1 run: nothing to redo
    assert fake.calls == {"patch": 2, "align": 2} and {f: _contents(f) for f in before} == before
    capsys.readouterr()
    assert cli.main(["runs", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(f.name in listed for f in (patch0.out_dir, patch1.out_dir, align0.out_dir, align1.out_dir))


def test_a_command_line_run_into_a_stage_folder_with_another_config_is_never_served(fake, tmp_path):
    prof = load_profile("default")
    folder = pipeline.stage_folder(prof, "patch")
    other = override(prof.patch, {"train.epochs": 5, "train.seed": 7})
    config = tmp_path / "other.yaml"
    save_config(other, config)
    assert cli.main(["patch", "--config", str(config), "--out", str(folder)]) == 0
    assert runstore.read_status(folder)["key"] != folder.name
    served = pipeline.ensure_patch(prof)
    assert fake.calls["patch"] == 2, "outputs of another config must not be served"
    assert yaml.safe_load((served.out_dir / "config.yaml").read_text())["train"]["epochs"] == prof.patch.train.epochs


def test_a_command_line_run_of_the_profile_config_is_what_the_pipeline_reuses(fake, capsys):
    assert cli.main(["patch", "--config", str(ROOT / "configs/default/patch.yaml")]) == 0
    printed = capsys.readouterr().out
    prof = load_profile("default")
    assert str(pipeline.stage_folder(prof, "patch")) in printed
    pipeline.ensure_patch(prof)
    assert fake.calls["patch"] == 1
    assert cli.main(["align", "--config", str(ROOT / "configs/default/align.yaml")]) == 0
    pipeline.ensure_align(prof)
    assert fake.calls == {"patch": 1, "align": 1}


def test_run_times_and_clean_keep_the_current_runs(fake, capsys):
    prof = load_profile("default")
    pipeline.ensure_align(prof)
    times = pipeline.run_times(prof)
    assert list(times["stage"]) == ["patch", "align"] and times["seconds"].notna().all()
    assert times["folder"].tolist() == [str(pipeline.stage_folder(prof, s)) for s in ("patch", "align")]
    old = pipeline.ensure_patch(load_profile("default", seed=3)).out_dir
    assert cli.main(["runs", "clean", "--dry-run"]) == 0 and old.is_dir()
    assert cli.main(["runs", "clean"]) == 0
    assert not old.exists() and all(pipeline.stage_folder(prof, s).is_dir() for s in ("patch", "align"))


def test_one_ensure_probe_walks_each_dataset_once(fake, monkeypatch):
    """A call computes each stage key once and walks each dataset's files once, however many keys name it."""
    def fake_probe(prof, patch_dir, align_dir, out_dir, cfg=None):
        for name in probe.FILES:
            (out_dir / name).write_text("dataset,shots\n")

    monkeypatch.setattr(probe, "run_probe", fake_probe)
    monkeypatch.setattr(probe, "load_differences", lambda folder: pd.DataFrame())
    walks: list[str] = []
    real = runstore.data_manifest
    monkeypatch.setattr(runstore, "data_manifest", lambda spec: walks.append(spec.name) or real(spec))
    prof = load_profile("default")
    first = pipeline.ensure_probe(prof)
    assert fake.calls == {"patch": 1, "align": 1} and first.out_dir.parent.name == "probe"
    assert sorted(walks) == sorted(set(walks)), f"a dataset walked more than once in one call: {walks}"
    walks.clear()
    assert pipeline.ensure_probe(prof).out_dir == first.out_dir and fake.calls == {"patch": 1, "align": 1}
    assert sorted(walks) == sorted(set(walks)) and "eurosat_ms" in walks


def test_the_registry_is_the_one_list_of_stages(fake, capsys):
    assert cli.main(["runs", "list", "--stage", "patches"]) == 2
    assert capsys.readouterr().err.strip() == ("mtmg runs: error: --stage 'patches': expected one of zeroshot, patch, "
                                               "align, embeddings, zeroshot_patched, probe")
    assert list(pipeline.STAGES) == ["zeroshot", "patch", "align", "embeddings", "zeroshot_patched", "probe"]
    assert pipeline.chapter_stages(5) == ("zeroshot_patched", "probe")
    assert set(pipeline.STAGES["probe"].upstream) == {"patch", "align"}
    prof = load_profile("default")
    with pytest.raises(KeyError, match="unknown stage 'patches'"):
        pipeline.stage_folder(prof, "patches")
    with pytest.raises(FileNotFoundError):  # stage 1 has not run: the key of stage 2 cannot be known
        pipeline.stage_folder(prof, "align")


# --- real stages, tiny ------------------------------------------------------------------------------------

@pytest.fixture
def tiny():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield load_profile("default", overrides=TINY)


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
    csv = pd.read_csv(results.out_dir / "results.csv")
    assert list(csv["dataset"]) == ["eurosat_ms", "synthetic"]


def test_without_weights_the_zeroshot_stage_scores_the_clip_that_stage_1_starts_from(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zeroshot, patch = pipeline.ensure_zeroshot(tiny), pipeline.ensure_patch(tiny)
    assert zeroshot["weights"] == json.loads((patch.out_dir / "clip.json").read_text())["weights"]
    alpha0 = patch.scores[(patch.scores["alpha"] == 0.0) & (patch.scores["split"] == "test")]
    by_task = {e["dataset"]: e["value"] for e in zeroshot["datasets"]}
    assert dict(zip(alpha0["task"], alpha0["value"])) == pytest.approx(by_task)


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
    status = runstore.read_status(emb.out_dir)
    again = pipeline.ensure_embeddings(tiny)
    assert runstore.read_status(emb.out_dir) == status and torch.equal(again.ms_student, emb.ms_student)
    layout = views.ensure_layout(tiny, emb, "pca")
    assert len(layout) == 30 + 3 * n and set(layout["modality"]) == set(embedding_sets(emb)[0])
    assert views.ensure_layout(tiny, emb, "pca").equals(layout)


def test_changing_one_tile_reruns_every_stage_and_the_teacher_cache(eurosat_copy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prof = load_profile("default", data_roots={"eurosat_ms": str(eurosat_copy)},
                            overrides={**TINY, "align.augment": "d4"})

        def run_all():
            torch.manual_seed(0)  # the random-init CLIP is drawn from the global generator
            return pipeline.ensure_zeroshot(prof), pipeline.ensure_patch(prof), pipeline.ensure_align(prof)

        before = run_all()
        tile = sorted((eurosat_copy / "Forest").glob("*.tif"))[0]
        train_ids = (eurosat_copy / "eurosat-train.txt").read_text().split()
        assert tile.name in train_ids
        shutil.copy(sorted((eurosat_copy / "SeaLake").glob("*.tif"))[0], tile)  # new contents, same file name
        after = run_all()
    for old, new in zip(before, after):
        assert new.out_dir != old.out_dir and old.out_dir.is_dir(), "a changed tile must run every stage again"
    ft_old, ft_new = (checkpoint.load(r.out_dir / "finetuned.pt") for r in (before[1], after[1]))
    assert any(not torch.equal(ft_old[k], ft_new[k]) for k in ft_old), "fine-tuning must see the new tile"
    s_old, s_new = (checkpoint.load(r.out_dir / "student.pt") for r in (before[2], after[2]))
    assert any(not torch.equal(s_old[k], s_new[k]) for k in s_old), "distillation must see the new tile"

    # stage 2 again into the folder whose teacher cache was built before the change, same teacher
    cache_path = before[2].out_dir / alignment.TEACHER_CACHE
    old_cache = checkpoint.load(cache_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alignment.run_alignment(prof.align, teacher_dir=before[1].out_dir, out_dir=before[2].out_dir)
    new_cache = checkpoint.load(cache_path)
    assert new_cache["key"] != old_cache["key"]
    assert not torch.equal(new_cache["embeddings"], old_cache["embeddings"]), "the teacher must embed the new tile"

"""The book's teaching frame: exercises are valid changes, solutions show measured numbers, times are read
from the recorded stage times."""
import json
import os

import pandas as pd
import pytest

from mtmg.book import teaching
from mtmg.core import runstore
from mtmg.runs import pipeline, profiles


def test_enough_exercises_per_chapter_with_unique_labels():
    labels = [ex.label for ex in teaching.EXERCISES]
    assert len(labels) == len(set(labels))
    assert len(labels) >= 15
    for chapter in range(1, 6):
        assert len(teaching.chapter_exercises(chapter)) >= 3, chapter


@pytest.mark.parametrize("exercise", teaching.EXERCISES, ids=lambda ex: ex.label)
def test_every_exercise_is_a_valid_override_that_changes_the_profile(exercise):
    book = profiles.load_profile("default")
    changed = profiles.load_profile("default", overrides=dict(exercise.overrides))
    assert changed != book
    assert teaching.MEASURES[exercise.measure]


def test_overrides_text_is_python():
    ex = teaching.Exercise("x", 1, "t", {"zeroshot.clip.pretrained": None, "patch.alphas": [0.0, 1.0]},
                           "zeroshot", "task", "why")
    namespace: dict = {}
    exec(ex.overrides_text(), namespace)  # noqa: S102 - the text a learner pastes must run
    assert namespace["overrides"] == {"zeroshot.clip.pretrained": None, "patch.alphas": [0.0, 1.0]}


def test_solution_shows_both_runs_and_the_difference():
    ex = teaching.Exercise("x", 3, "t", {"align.cls_weight": 0.0}, "align", "task", "Because of the labels.")
    result = teaching.ExerciseResult(ex, {"student (%)": 58.0, "selected α": 0.6, "only in book (%)": 1.0},
                                     {"student (%)": 52.0, "selected α": 0.6}, seconds=41.2)
    table = teaching.comparison_table(result)
    assert table["quantity"].tolist() == ["student (%)", "selected α"]
    assert table["change"].tolist() == ["-6.0", "±0"]
    text = teaching.solution(result)
    assert "| student (%) | 58.0 | 52.0 | -6.0 |" in text
    assert "41 s" in text and "Because of the labels." in text


def test_new_seconds_count_only_the_stages_a_change_ran_itself():
    book = pd.DataFrame({"stage": ["zeroshot", "patch", "align"], "seconds": [5.0, 60.0, 40.0],
                         "folder": ["z/1", "p/1", "a/1"]})
    changed = pd.DataFrame({"stage": ["zeroshot", "patch", "align"], "seconds": [5.0, 60.0, 38.5],
                            "folder": ["z/1", "p/1", "a/2"]})
    assert teaching.new_seconds(book, changed) == 38.5
    assert teaching.new_seconds(book, book) == 0.0


def _record(prof, stage, seconds):
    folder = pipeline.stage_folder(prof, stage)
    folder.mkdir(parents=True)
    (folder / runstore.STATUS_FILE).write_text(json.dumps(
        {"stage": stage, "key": folder.name, "finished": "2026-01-01 00:00:00", "seconds": seconds}))


def test_time_box_reads_recorded_stage_times(tmp_path, monkeypatch):
    monkeypatch.setenv("MTMG_RUNS", str(tmp_path))
    prof = profiles.load_profile("default")
    assert teaching.chapter_seconds(prof, 2) is None
    assert "reused" in teaching.time_box(prof, 2)
    _record(prof, "patch", 48.0)
    assert teaching.chapter_seconds(prof, 2) == 48.0
    box = teaching.time_box(prof, 2, threads=1)
    assert "48 s" in box and "1 torch thread" in box
    cores = os.cpu_count()
    assert teaching.solutions_time({1: 0.0, 2: 125.0, 3: 30.0}, threads=1) == (
        f"The changes ran in 2.6 min in all when this page was built ({cores} CPU core{'s' if cores != 1 else ''}, "
        "1 torch thread): chapter 2 2.1 min, chapter 3 30 s. A second build reuses them.")
    assert "reused" in teaching.solutions_time({1: 0.0})
    table = teaching.run_time_table(prof)
    assert table["chapter"].tolist() == [2]


def test_benchmark_views_pivot_per_chapter_with_real_dataset_names():
    long = pd.DataFrame([
        {"profile": "default", "chapter": "1 zero-shot", "quantity": "top-1 (test)", "dataset": "EuroSAT",
         "model": "CLIP zero-shot on RGB", "value": 20.0, "unit": "%"},
        {"profile": "default", "chapter": "1 zero-shot", "quantity": "top-1 (test)", "dataset": "synthetic",
         "model": "CLIP zero-shot on RGB", "value": 70.0, "unit": "%"},
        {"profile": "default", "chapter": "1 zero-shot", "quantity": "selected α", "dataset": "all tasks",
         "model": "CLIP patched", "value": 0.6, "unit": ""},
        {"profile": "default", "chapter": "4 modality gap", "quantity": "centroid gap text↔rgb", "dataset": "test",
         "model": "CLIP patched", "value": 0.8, "unit": "L2 distance"}])
    views = teaching.benchmark_views(long, "EuroSAT test")
    first = views["1 zero-shot"]
    assert list(first.columns) == ["EuroSAT", "synthetic", "all tasks"] and len(first) == 2
    assert "profile" not in first.columns and "default" not in first.to_string()
    assert list(views["4 modality gap"].columns) == ["EuroSAT test"]
    assert "nan" not in views["1 zero-shot"].to_string().lower()


def test_glue_markdown_writes_what_myst_nb_glue_writes(monkeypatch):
    import IPython.display
    from IPython.display import Markdown
    from myst_nb.ext import glue as myst_glue

    ours, theirs = [], []
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: ours.append((a, k)))
    monkeypatch.setattr(myst_glue, "ipy_display", lambda *a, **k: theirs.append((a, k)))
    teaching.glue_markdown({"time-box": "**12 s**", "ex-a-task": "Do *this*."})
    myst_glue.glue("time-box", Markdown("**12 s**"), display=False)
    myst_glue.glue("ex-a-task", Markdown("Do *this*."), display=False)
    assert ours == theirs and len(ours) == 2


def test_chapter_4_time_box_gives_the_time_of_its_maps(tmp_path, monkeypatch):
    monkeypatch.setenv("MTMG_RUNS", str(tmp_path / "runs"))
    prof = profiles.load_profile("default")
    assert "no time was recorded" in teaching.time_box(prof, 4)  # nothing has run: no embeddings, no maps
    (tmp_path / "layout-umap-seed0.json").write_text(json.dumps({"seconds": 11.6}))
    (tmp_path / "layout-pca-seed0.json").write_text(json.dumps({"seconds": 0.4}))
    monkeypatch.setattr(pipeline, "stage_folder", lambda prof, stage: tmp_path)
    assert "12 s to fit the UMAP and PCA maps" in teaching.time_box(prof, 4)


def test_chapter_5_time_box_counts_the_probe_stage():
    assert "probe" in teaching.CHAPTER_STAGES[5] and "zeroshot_patched" in teaching.CHAPTER_STAGES[5]

"""The workshop as a participant lives it: a fresh run store, the warm-up (chapters 1-5, not the solutions),
then chapter 2 through papermill's own command line with ``-p overrides '{"patch.train.seed": 1}'``. The
exercise's stage must really run (the warm-up must not have run it) and give the numbers the solutions
page computes for that exercise (the same change, run again in a copy of the warm-up's store).

Slow tier (``make test-all``): the warm-up trains both stages of the miniature. ``MTMG_TEST_WARM_RUNS``
names a run store that the warm-up (chapters 1-5 only) has already filled: it is copied, never changed,
and the warm-up is skipped.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("0[1-6]_*.ipynb"))
EXERCISE = "ex-patch-seed"


@pytest.mark.slow
def test_a_participant_exercise_runs_after_the_warm_up_and_matches_the_solutions_page(tmp_path, monkeypatch):
    from mtmg.book import teaching
    from mtmg.core import runstore
    from mtmg.runs import pipeline, profiles

    exercise = next(ex for ex in teaching.EXERCISES if ex.label == EXERCISE)
    assert exercise.overrides == {"patch.train.seed": 1} and exercise.chapter == 2
    store = tmp_path / "runs"
    env = {**os.environ, "MTMG_RUNS": str(store), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    monkeypatch.setenv("MTMG_RUNS", str(store))

    # the warm-up: what `make warmup` and `python workshop.py warmup` run
    if os.environ.get("MTMG_TEST_WARM_RUNS"):
        shutil.copytree(os.environ["MTMG_TEST_WARM_RUNS"], store, symlinks=True)
    else:
        warm = subprocess.run([sys.executable, "-m", "mtmg.book.notebook", "--into", str(tmp_path / "executed"),
                               *map(str, CHAPTERS), "--profile", "default"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=1800)
        assert warm.returncode == 0, warm.stderr[-3000:]
    book = profiles.load_profile("default")
    changed = profiles.load_profile("default", overrides=dict(exercise.overrides))
    assert "patch" not in set(pipeline.run_times(changed)["stage"]), "the warm-up already ran the exercise"
    solutions_store = tmp_path / "solutions_runs"
    shutil.copytree(store, solutions_store, symlinks=True)

    # the participant: papermill's command line, the override as the string -p passes
    started = time.time()
    papermill = Path(sys.executable).with_name("papermill")
    run = subprocess.run([str(papermill), str(ROOT / "notebooks" / "02_paint_patching.ipynb"),
                          str(tmp_path / "02_seed_1.ipynb"), "-p", "overrides", '{"patch.train.seed": 1}'],
                         env=env, cwd=ROOT / "notebooks", capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    times = pipeline.run_times(changed).set_index("stage")
    book_folders = set(pipeline.run_times(book)["folder"])
    assert times.loc["patch", "folder"] not in book_folders, "the exercise reused the book's patch run"
    assert float(times.loc["patch", "seconds"]) > 0
    print(f"chapter 2 with the exercise: {time.time() - started:.0f} s through papermill, "
          f"its patch stage {float(times.loc['patch', 'seconds']):.0f} s")
    status = Path(times.loc["patch", "folder"]) / runstore.STATUS_FILE
    assert status.stat().st_mtime >= started, "the patch stage finished before the participant ran it"
    participant = teaching.measure_patch(changed)
    executed = nbformat.read(tmp_path / "02_seed_1.ipynb", as_version=4)
    assert executed.metadata["papermill"]["parameters"] == {"overrides": '{"patch.train.seed": 1}'}

    # the solutions page: the same exercise through its own code, in a store where it has not run yet
    monkeypatch.setenv("MTMG_RUNS", str(solutions_store))
    result = teaching.run_exercise(profiles.load_profile("default"), exercise)
    assert result.seconds > 0, "the solutions page reused a run instead of running the change"
    assert result.changed == pytest.approx(participant, abs=1e-9), (result.changed, participant)

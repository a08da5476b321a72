"""Side-by-side exercise runs: as many at once as the cores hold at the thread count each run's key records."""
from __future__ import annotations

import pytest

from mtmg.book import exercise_runs


def test_changes_run_side_by_side_only_where_each_keeps_its_threads():
    assert exercise_runs.auto_jobs(threads=2, cores=2) == 1
    assert exercise_runs.auto_jobs(threads=1, cores=2) == 2  # the default profile on this project's machine
    assert exercise_runs.auto_jobs(threads=2, cores=8) == 4
    assert exercise_runs.auto_jobs(threads=4, cores=2) == 1
    assert exercise_runs.auto_jobs(threads=1, cores=3) == 3


def test_with_one_change_at_a_time_the_solutions_page_runs_the_changes_itself(capsys, monkeypatch):
    monkeypatch.setattr(exercise_runs.os, "cpu_count", lambda: 1)
    monkeypatch.setattr(exercise_runs, "run_all", lambda *a: pytest.fail("no change may run here"))
    assert exercise_runs.main(["--jobs", "auto"]) == 0
    assert "the solutions page runs them itself" in capsys.readouterr().out

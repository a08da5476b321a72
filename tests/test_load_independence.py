"""The default book's numbers do not depend on how busy the machine is: the stages behind the README's tables
(both training stages and the probe, seed 0) run twice from empty run stores, the second time beside a
process that keeps one core busy, and print identical tables."""
import os
import subprocess
import sys

import pytest

from mtmg.core.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow


def _tables(runs, env):
    out = subprocess.run([sys.executable, "-m", "mtmg", "results", "--seeds", "0"], cwd=PROJECT_ROOT,
                         env={**env, "MTMG_RUNS": str(runs)}, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    return [line for line in out.stdout.splitlines() if line.startswith("|")]  # the tables, not the folders


def test_tables_are_identical_on_an_idle_and_a_busy_machine(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    idle = _tables(tmp_path / "idle", env)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = _tables(tmp_path / "busy", env)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy == idle and len(idle) == 6

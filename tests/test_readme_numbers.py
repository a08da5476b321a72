"""The README's seed-0 rows equal what the current code gives: both stages and the probe of the default profile
with training seed 0, read from the run store (the learning checks' run, reused; run here if missing)."""
import pytest

from mtmg.book import readme
from mtmg.core.paths import PROJECT_ROOT

pytestmark = pytest.mark.learning


def _row(header: str, seed: int) -> list[str]:
    """The cells of the row for ``seed`` of the README table that starts with ``header``'s first line."""
    lines = (PROJECT_ROOT / "README.md").read_text().splitlines()
    title = header.splitlines()[0]
    assert title in lines, f"README.md: no table headed {title!r}; print it with python -m mtmg results --seeds 0"
    for line in lines[lines.index(title) + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == str(seed):
            return cells
    raise AssertionError(f"README.md: the table headed {title!r} has no row for seed {seed}")


def test_readme_results_row_of_seed_0_is_what_the_code_gives():
    assert _row(readme.RESULTS_HEADER, 0) == readme.results_row(0)


def test_readme_probe_row_of_seed_0_is_what_the_code_gives():
    assert _row(readme.PROBE_HEADER, 0) == readme.probe_row(0)

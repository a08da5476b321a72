"""The book's notebooks: sources are thin and clean; executed copies (book/executed/, written by
``make notebooks``) open with the run banner, have no errors and show readable figures."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from mtmg.book.report import BANNER_TITLE

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHAPTERS = SOURCES[:6]
SOLUTIONS = ROOT / "notebooks" / "07_exercise_solutions.ipynb"
EXECUTED_DIR = ROOT / "book" / "executed"
MIN_SIDE = 100  # pixels


def _executed() -> list:
    """The executed copies; the solutions page's belongs to the slow tier (``make test`` executes the chapters)."""
    return [pytest.param(EXECUTED_DIR / p.name, marks=pytest.mark.slow) if p == SOLUTIONS else EXECUTED_DIR / p.name
            for p in SOURCES]


def _outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from cell.get("outputs", [])


# --- sources ----------------------------------------------------------------------------------------------

def test_there_are_six_chapters_and_the_solutions():
    assert [p.stem[:2] for p in SOURCES] == ["01", "02", "03", "04", "05", "06", "07"]
    assert SOURCES[-1] == SOLUTIONS


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_source_is_clean_with_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
    assert 'profile: str = "default"' in tagged[0].source and "device" in tagged[0].source
    assert not list(_outputs(nb)), f"{path.name}: clear the outputs before saving the source"
    assert all(c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), f"{path.name}: start with a # title"
    titles = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
              if line.startswith("# ")]
    assert len(titles) == 1, f"{path.name}: exactly one top-level heading, found {titles}"
    headings = [len(line) - len(line.lstrip("#")) for c in nb.cells if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("#")]
    assert all(b - a <= 1 for a, b in zip(headings, headings[1:])), f"{path.name}: heading levels skip"


# --- executed copies --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", _executed(), ids=lambda p: p.stem)
def test_executed_notebook_opens_with_a_banner_and_has_no_errors(path):
    assert path.is_file(), f"{path} is missing; run `make notebooks` first"
    nb = nbformat.read(path, as_version=4)
    outputs = list(_outputs(nb))
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: error output {errors[0].get('ename')}: {errors[0].get('evalue')}"
    first = next(o for o in outputs if o.output_type in ("display_data", "execute_result"))
    banner = first.get("data", {}).get("text/markdown", "")
    assert banner.startswith(f"> **{BANNER_TITLE}:"), f"{path.name}: the first output must be the run banner"
    for part in ("device", "CLIP model", "weights", "data"):
        assert part in banner, f"{path.name}: banner lacks {part!r}"
    profile = nb.metadata.get("papermill", {}).get("parameters", {}).get("profile", "default")
    assert (profile == "default") == ("not the paper's numbers" in banner)


def _pngs(path: Path) -> list[bytes]:
    nb = nbformat.read(path, as_version=4)
    return [base64.b64decode(o["data"]["image/png"]) for o in _outputs(nb)
            if "image/png" in o.get("data", {})]


@pytest.mark.parametrize("path", [EXECUTED_DIR / p.name for p in CHAPTERS], ids=lambda p: p.stem)
def test_executed_chapter_figures_are_readable(path):
    assert path.is_file(), f"{path} is missing; run `make notebooks` first"
    pngs = _pngs(path)
    assert pngs, f"{path.name}: no image/png output"
    for i, data in enumerate(pngs):
        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        h, w, _ = image.shape
        assert h >= MIN_SIDE and w >= MIN_SIDE, f"{path.name}: figure {i} is only {w}x{h} px"
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1, f"{path.name}: figure {i} is one flat colour"
        assert image.std() > 5, f"{path.name}: figure {i} has almost no contrast"


@pytest.mark.parametrize("path", _executed(), ids=lambda p: p.stem)
def test_no_figure_is_shown_twice(path):
    assert path.is_file(), f"{path} is missing; run `make notebooks` first"
    pngs = _pngs(path)
    assert len(set(pngs)) == len(pngs), f"{path.name}: the same figure appears more than once"


# --- the teaching frame -----------------------------------------------------------------------------------

def _chapter(path: Path) -> int:
    return int(path.stem[:2])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_source_hides_set_up_and_takes_overrides(path):
    nb = nbformat.read(path, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert not {"remove-cell", "remove-input"} & set(params.metadata["tags"]), \
        f"{path.name}: the parameters cell must be shown in the book (the text refers readers to it)"
    assert 'overrides: "Union[dict, str]" = {}' in params.source, f"{path.name}: add the typed overrides parameter"
    setup_first = next(c for c in nb.cells if c.cell_type == "code" and c is not params)
    assert "use_parameters(globals())" in setup_first.source, \
        f"{path.name}: the cell after the parameters must start with use_parameters(globals())"
    setup = next(c for c in nb.cells if c.cell_type == "code" and "load_profile(profile" in c.source)
    assert "overrides=overrides" in setup.source, f"{path.name}: pass overrides to load_profile"
    assert "remove-input" in setup.metadata.get("tags", []), f"{path.name}: hide the set-up code"
    if path in CHAPTERS:
        assert "{glue:md}`time-box`" in nb.cells[0].source and "Prerequisites" in nb.cells[0].source, \
            f"{path.name}: the chapter must open with its goals, prerequisites and time"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_its_exercises_each_linked_to_its_solution(path):
    from mtmg.book import teaching

    text = "\n".join(c.source for c in nb_cells(path) if c.cell_type == "markdown")
    # Chapter 6's exercises change the notebook's own parameters (stride, product level, classes) on one
    # scene, so the chapter measures them in its own run and folds the answers into dropdowns.
    if _chapter(path) == 6:
        assert text.count("{solution}") == text.count(":class: dropdown"), f"{path.name}: fold every solution"
    else:
        assert "{solution}" not in text, f"{path.name}: solutions belong on {SOLUTIONS.name}, not in the chapter"
    for ex in teaching.chapter_exercises(_chapter(path)):
        assert f":label: {ex.label}" in text, f"{path.name}: exercise {ex.label} missing"
        assert f"{{glue:md}} {ex.label}-task" in text, f"{path.name}: task of {ex.label} not glued"
        assert f"<sol-{ex.label}>`" in text, f"{path.name}: exercise {ex.label} does not link to its solution"


def test_solutions_page_has_every_solution_toggled_and_glued_from_its_run():
    from mtmg.book import teaching

    text = "\n".join(c.source for c in nb_cells(SOLUTIONS) if c.cell_type == "markdown")
    for ex in teaching.EXERCISES:
        assert f"{{solution}} {ex.label}\n:label: sol-{ex.label}\n:class: dropdown" in text, \
            f"{SOLUTIONS.name}: solution of {ex.label} missing, unlabelled or not toggled"
        assert f"{{glue:md}} {ex.label}-solution" in text, f"{SOLUTIONS.name}: solution of {ex.label} not glued"


def nb_cells(path: Path):
    return nbformat.read(path, as_version=4).cells


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_every_figure_cell_has_a_caption_and_alt_text(path):
    for cell in nb_cells(path):
        last_line = "\n" + cell.source.splitlines()[-1] if cell.source else ""
        if cell.cell_type == "code" and "figures." in cell.source and "\nfigures." in last_line:
            meta = cell.metadata.get("mystnb", {})
            assert meta.get("figure", {}).get("caption"), f"{path.name}: figure cell without caption:\n{cell.source}"
            assert len(meta.get("image", {}).get("alt", "")) > 30, f"{path.name}: figure cell without alt text"


def _glued(nb) -> dict[str, str]:
    return {o.get("metadata", {}).get("scrapbook", {}).get("name"):
            next((v for k, v in o.get("data", {}).items() if k.endswith("text/markdown")), "")
            for o in _outputs(nb)}


@pytest.mark.parametrize("path", _executed(), ids=lambda p: p.stem)
def test_executed_notebook_hides_injected_parameters_and_glues_its_teaching_frame(path):
    from mtmg.book import teaching

    assert path.is_file(), f"{path} is missing; run `make notebooks` first"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            assert "remove-cell" in cell.metadata["tags"], f"{path.name}: papermill's cell is not hidden"
    glued = _glued(nb)
    if path.stem == SOLUTIONS.stem:
        assert glued.get("solutions-time"), f"{path.name}: no measured time of the exercises' runs"
        for ex in teaching.EXERCISES:
            solution = glued.get(f"{ex.label}-solution", "")
            assert "| quantity | book's run | with the change | change |" in solution, \
                f"{path.name}: the solution of {ex.label} has no measured comparison"
        return
    assert glued.get("time-box"), f"{path.name}: no measured time for the opening box"
    for ex in teaching.chapter_exercises(_chapter(path)):
        assert glued.get(f"{ex.label}-task", "").startswith(ex.task[:40]), f"{path.name}: task of {ex.label} missing"

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

from mtmg.report import BANNER_TITLE

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXECUTED_DIR = ROOT / "book" / "executed"
MIN_SIDE = 100  # pixels


def _executed() -> list[Path]:
    return [EXECUTED_DIR / p.name for p in SOURCES]


def _outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from cell.get("outputs", [])


# --- sources ----------------------------------------------------------------------------------------------

def test_there_are_five_chapters():
    assert [p.stem[:2] for p in SOURCES] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_source_is_clean_with_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
    assert 'profile = "default"' in tagged[0].source and "device" in tagged[0].source
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


@pytest.mark.parametrize("path", _executed(), ids=lambda p: p.stem)
def test_executed_notebook_figures_are_readable(path):
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

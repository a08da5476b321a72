"""The exercises' data file and the coding exercises: every shown solution passes its check, wrong answers do
not, and a broken data file is reported with its place and fix."""
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtmg.book import figures, teaching
from mtmg.core import paths
from mtmg.core.errors import ConfigError


def _solution(exercise):
    namespace: dict = {}
    exec(exercise.solution, namespace)  # noqa: S102 - the code the solutions page shows must run
    return namespace[teaching._function_name(exercise.starter)]


@pytest.mark.parametrize("exercise", teaching.CODE_EXERCISES, ids=lambda ex: ex.label)
def test_every_shown_solution_agrees_with_the_library(exercise):
    assert teaching.check_code(exercise.label, _solution(exercise)).startswith("Correct")


def _ndvi_swapped(tile):
    return (tile[3] - tile[7]) / (tile[3] + tile[7])


def _head_unnormalised(features, class_text, logit_scale):
    return logit_scale * features @ F.normalize(class_text, dim=-1).T


def _cosine_without_one_minus(student, teacher):
    return F.cosine_similarity(student, teacher, dim=-1).mean()


def _cone_with_diagonal(x):
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return float((unit @ unit.T).mean())


def _recall_unnormalised(query, gallery):
    return (torch.argmax(query @ gallery.T, dim=1) == torch.arange(len(query))).float().mean().item()


@pytest.mark.parametrize("label, wrong", [
    ("code-ndvi", _ndvi_swapped), ("code-head-logits", _head_unnormalised),
    ("code-cosine-loss", _cosine_without_one_minus), ("code-cone", _cone_with_diagonal),
    ("code-recall-at-1", _recall_unnormalised)])
def test_a_plausible_mistake_is_not_accepted(label, wrong):
    verdict = teaching.check_code(label, wrong)
    assert verdict.startswith("Not yet"), verdict


def test_a_function_that_raises_or_returns_the_wrong_shape_is_reported():
    assert "ZeroDivisionError" in teaching.check_code("code-cone", lambda x: 1 / 0)
    assert "shape" in teaching.check_code("code-ndvi", lambda tile: tile[0:2])
    with pytest.raises(ValueError, match="code-ndvi"):
        teaching.check_code("code-nothing", len)


def test_every_chapter_has_a_coding_exercise_questions_and_two_discussion_prompts():
    data = teaching.load_exercises()
    for chapter in range(1, 6):
        assert teaching.chapter_code_exercises(chapter), chapter
        assert len(data.questions[chapter]) >= 3, chapter
        assert len(data.discussion[chapter]) == 2, chapter
        assert all(ex.expect for ex in teaching.chapter_exercises(chapter)), chapter


def test_the_chapter_glue_carries_code_tasks_and_questions():
    text = teaching.code_exercise_text(teaching.chapter_code_exercises(4)[0])
    assert 'teaching.check_code("code-cone", cone)' in text and "def cone(x):" in text
    questions = teaching.questions_text(3)
    assert questions.count("{admonition} Answer") == len(teaching.load_exercises().questions[3])


def test_a_reused_run_names_an_exercise_with_the_same_overrides():
    by_label = {ex.label: ex for ex in teaching.EXERCISES}
    reusing = [ex for ex in teaching.EXERCISES if ex.reuses]
    assert reusing
    for ex in reusing:
        assert dict(by_label[ex.reuses].overrides) == dict(ex.overrides), ex.label
        assert by_label[ex.reuses].chapter < ex.chapter


def test_the_first_exercise_of_chapter_1_is_the_one_on_sampling_noise():
    # the workshop agenda runs the noise exercise first; the page numbers the exercises in file order
    assert [ex.label for ex in teaching.chapter_exercises(1)][:2] == ["ex-validation-tiles", "ex-untrained-clip"]


def test_a_missing_field_names_the_file_the_entry_and_the_field(tmp_path):
    bad = tmp_path / "exercises.yaml"
    bad.write_text("runs:\n  - id: ex-x\n    chapter: 1\n    title: T\n    overrides: {patch.alphas: [0.0]}\n"
                   "    measure: patch\n    question: Q\n    explanation: E\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"exercises.yaml: runs\[0\] \(ex-x\) has no 'expect'"):
        teaching.load_exercises(bad)
    bad.write_text(bad.read_text().replace("measure: patch", "measure: speed") + "    expect: X\n")
    with pytest.raises(ConfigError, match="measures 'speed'; use one of"):
        teaching.load_exercises(bad)


def test_the_two_stage_diagram_in_the_book_is_the_generated_one():
    stored = (paths.PROJECT_ROOT / figures.DIAGRAM_FILE).read_text(encoding="utf-8")
    assert stored == figures.two_stage_diagram(), "regenerate with figures.write_two_stage_diagram()"
    root = ET.fromstring(stored)
    strokes = {el.get("stroke") for el in root.iter("{http://www.w3.org/2000/svg}rect")}
    for model in ("text", "zero-shot CLIP", "patched CLIP", "student"):
        assert figures.MODEL_COLOURS[model] in strokes, model
    assert "PAINT" in stored and "patching with interpolation" in stored


def test_the_solutions_page_glues_every_tested_code_solution():
    from types import SimpleNamespace

    glued = teaching.solutions_glue(SimpleNamespace(name="another profile"))  # no exercise run under it
    for ex in teaching.CODE_EXERCISES:
        assert glued[f"{ex.label}-solution"].startswith(f"```python\n{ex.solution.rstrip()}\n```"), ex.label

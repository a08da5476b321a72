"""The workshop handout and facilitator notes are generated from the exercises' data file."""
from __future__ import annotations

import nbformat

from mtmg.book import handout, teaching


def test_the_handout_lists_every_exercise_with_its_override_line_and_no_answers():
    data = teaching.EXERCISE_DATA
    page = handout.handout_html(data)
    for ex in data.runs:
        assert handout.html.escape(ex.overrides_text()) in page, ex.label
        assert handout.html.escape(ex.expect, quote=False) not in page, f"{ex.label}: the handout gives the answer away"
    assert "git checkout notebooks/" in page and "runs clean" in page


def test_the_facilitator_notes_carry_the_measured_numbers_of_the_executed_solutions_page(tmp_path):
    data = teaching.EXERCISE_DATA
    first = data.runs[0]
    record = nbformat.v4.new_output("display_data", data={
        teaching.GLUE_PREFIX + "text/markdown": "| quantity | book's run |\n|---|---|\n| `accuracy` | 41.0 |"},
        metadata={"scrapbook": {"name": f"{first.label}-solution"}})
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("", outputs=[record])])
    executed = tmp_path / "solutions.ipynb"
    nbformat.write(nb, executed)
    measured = handout.measured_solutions(executed)
    assert set(measured) == {first.label}
    notes = handout.facilitator_html(data, measured)
    assert "<td><code>accuracy</code></td><td>41.0</td>" in notes
    assert handout.html.escape(first.expect, quote=False).split(" ")[0] in notes
    assert notes.count("Not measured yet") == len(data.runs) - 1
    for chapter, prompts in data.discussion.items():
        assert len(prompts) >= 2, f"chapter {chapter}: two discussion prompts"
    assert handout.measured_solutions(tmp_path / "missing.ipynb") == {}

"""The workshop's paper: a one-page handout for participants and the facilitator's notes, both generated
from the exercises' data file (``book/exercises.yaml``) so that they never disagree with the book.

    python -m mtmg.book.handout --into _build

writes ``_build/handout.html`` (print it: one A4 page) and, once the solutions page has been executed
(``make notebooks``), ``_build/facilitator.html``: each exercise's expected outcome with the numbers the
solutions page measured, and the chapters' discussion prompts.
"""
from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path

import nbformat

from mtmg.book import teaching
from mtmg.core import paths
from mtmg.core.checkpoint import atomic_write_text

CHAPTER_TITLES = {1: "The distribution shift", 2: "PAINT patching", 3: "Cross-modal distillation",
                  4: "The modality gap", 5: "Benchmark results"}
SOLUTIONS_EXECUTED = paths.PROJECT_ROOT / "book" / "executed" / f"{teaching.SOLUTIONS_DOC}.ipynb"

STYLE = """
@page { size: A4; margin: 11mm; }
body { font: 9.5pt/1.3 system-ui, sans-serif; margin: 0 auto; max-width: 190mm; color: #111; }
h1 { font-size: 14pt; margin: 0 0 2mm; } h2 { font-size: 10.5pt; margin: 2.5mm 0 1mm; }
.cols { columns: 2; column-gap: 6mm; } section { break-inside: avoid; }
code { font: 8.5pt ui-monospace, monospace; background: #f1f1f1; padding: 0 2px; word-break: break-all; }
.box { border: 1px solid #888; padding: 1.5mm 3mm; margin-bottom: 2mm; }
.ex { margin: 0 0 1.5mm; } .predict { color: #555; }
table { border-collapse: collapse; margin: 1mm 0; font-size: 8.5pt; }
td, th { border: 1px solid #bbb; padding: 0 2mm; text-align: left; }
"""


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _inline(text: str) -> str:
    """Markdown's code spans and bold in ``text`` as HTML (everything else escaped)."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def markdown_html(text: str) -> str:
    """The small Markdown of the solutions (paragraphs, pipe tables, code spans) as HTML."""
    blocks, table = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                table.append(cells)
            continue
        if table:
            head, *rows = table
            blocks.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                          + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                          + "</table>")
            table = []
        if line.strip():
            blocks.append(f"<p>{_inline(line)}</p>")
    return "\n".join(blocks)


def handout_html(data: teaching.Exercises) -> str:
    """One printable page: how to run an exercise, how to reset, and every exercise's override line."""
    intro = (
        "<div class=\"box\"><strong>Predict, then run.</strong> Open a chapter in JupyterLab "
        "(<code>python workshop.py lab</code> or <code>make lab</code>), paste the exercise's line into the "
        "parameters cell, write your prediction below, then <em>Run &gt; Run All Cells</em>. "
        "Without JupyterLab: <code>papermill notebooks/02_paint_patching.ipynb out.ipynb -p overrides "
        "'{\"patch.train.seed\": 1}'</code>. Start over: <code>git checkout notebooks/</code> and "
        "<code>python -m mtmg runs clean</code> (or <code>python workshop.py reset</code>).</div>")
    sections = []
    for chapter in sorted({ex.chapter for ex in data.runs}):
        items = []
        for ex in (e for e in data.runs if e.chapter == chapter):
            items.append(f"<p class=\"ex\"><strong>{html.escape(ex.title)}</strong><br>"
                         f"<code>{html.escape(ex.overrides_text())}</code><br>"
                         "<span class=\"predict\">My prediction: ______________________________</span></p>")
        for code in (c for c in data.code if c.chapter == chapter):
            items.append(f"<p class=\"ex\"><strong>Code: {html.escape(code.title)}</strong> "
                         "(in the chapter's coding exercise cell)</p>")
        title = CHAPTER_TITLES.get(chapter, f"Chapter {chapter}")
        notebook = next(iter(sorted((paths.PROJECT_ROOT / "notebooks").glob(f"{chapter:02d}_*.ipynb"))), None)
        where = f" <code>{notebook.name}</code>" if notebook else ""
        sections.append(f"<section><h2>{chapter}. {html.escape(title)}{where}</h2>\n" + "\n".join(items)
                        + "</section>")
    return _page("Mind the Modality Gap: workshop exercises", intro + "<div class=\"cols\">"
                 + "\n".join(sections) + "</div>")


def measured_solutions(executed: Path) -> dict[str, str]:
    """``{exercise label: solution Markdown}`` as the executed solutions page glued them; {} if not executed."""
    if not executed.is_file():
        return {}
    found = {}
    for cell in nbformat.read(str(executed), as_version=4).cells:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name", "")
            text = next((v for k, v in output.get("data", {}).items() if k.endswith("text/markdown")), None)
            if name.endswith("-solution") and text is not None:
                found[name[: -len("-solution")]] = text
    return found


def facilitator_html(data: teaching.Exercises, solutions: dict[str, str]) -> str:
    """Per chapter: the discussion prompts, and each exercise's expected outcome with its measured numbers."""
    sections = []
    for chapter in sorted({ex.chapter for ex in data.runs}):
        parts = [f"<h2>{chapter}. {html.escape(CHAPTER_TITLES.get(chapter, f'Chapter {chapter}'))}</h2>"]
        prompts = data.discussion.get(chapter, ())
        if prompts:
            parts.append("<p><strong>Discussion</strong></p><ol>"
                         + "".join(f"<li>{_inline(p)}</li>" for p in prompts) + "</ol>")
        for ex in (e for e in data.runs if e.chapter == chapter):
            parts.append(f"<h3>{html.escape(ex.title)} <code>{html.escape(ex.overrides_text())}</code></h3>"
                         f"<p><strong>Expect:</strong> {_inline(ex.expect)}</p>")
            measured = solutions.get(ex.label)
            parts.append(markdown_html(measured) if measured else
                         "<p><em>Not measured yet: run <code>make notebooks</code> (the solutions page), then "
                         "generate these notes again.</em></p>")
        sections.append("<section>" + "\n".join(parts) + "</section>")
    return _page("Mind the Modality Gap: facilitator notes", "\n".join(sections))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtmg.book.handout", description=__doc__.splitlines()[0])
    parser.add_argument("--into", type=Path, default=Path("_build"), help="folder of the two HTML files")
    parser.add_argument("--solutions", type=Path, default=SOLUTIONS_EXECUTED,
                        help="the executed solutions page to take the measured numbers from")
    args = parser.parse_args(argv)
    data = teaching.EXERCISE_DATA
    args.into.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.into / "handout.html", handout_html(data))
    solutions = measured_solutions(args.solutions)
    atomic_write_text(args.into / "facilitator.html", facilitator_html(data, solutions))
    print(f"wrote {args.into / 'handout.html'} and {args.into / 'facilitator.html'} "
          f"({sum(ex.label in solutions for ex in data.runs)} of {len(data.runs)} exercises with measured numbers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

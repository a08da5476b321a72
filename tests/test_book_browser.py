"""The built book in a real browser: Debian's Chromium opens every page of ``_build/html`` from disk with
networking disabled, at a laptop's width (1280 px) and a phone's (400 px), and checks that formulas are
typeset, images load, no script fails, exercise solutions are present and collapsed, the interactive map
renders, no text is cut off at the window's edge, figure text stays legible and wide tables scroll.
A screenshot of every page at both widths is saved under ``_build/screenshots/`` (``<page>@<width>.png``).

Runs after ``jupyter-book build`` (``make book``); skipped when the book is not built or Chromium is absent.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("MTMG_BOOK_HTML", ROOT / "_build" / "html"))  # another built book to check
SCREENSHOTS = HTML.parent / "screenshots"
CHROMIUM = os.environ.get("MTMG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
PAGE_WIDTH = 1280  # a laptop screen: the text column is at its normal width
PHONE_WIDTH = 400  # a phone held upright
#: Smallest figure text, in CSS pixels as displayed, that still reads comfortably.
LEGIBLE_PX = 8.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found: install it with `apt-get install -y chromium` "
                                                "(Debian) or set MTMG_CHROMIUM to its executable"),
    pytest.mark.skipif(not (HTML / "index.html").is_file(),
                       reason="the book is not built: run `make book` first"),
]


def _pages() -> list[Path]:
    if not HTML.is_dir():
        return []
    skip = {"genindex.html", "search.html"}
    return sorted(p for p in HTML.rglob("*.html") if not p.relative_to(HTML).parts[0].startswith("_")
                  and p.name not in skip)


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python package; "
                                                                       "the browser is Debian's chromium)")
    profile = tempfile.mkdtemp(prefix="mtmg-chromium-")
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS, offline=True,
            viewport={"width": PAGE_WIDTH, "height": 900})
        # anything but a file: URL is a network request; refuse it so the test sees what an offline reader sees
        context.route(lambda url: not url.startswith("file:") and not url.startswith("data:"),
                      lambda route: route.abort())
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


def _open(browser, page_path: Path, width: int = PAGE_WIDTH):
    page = browser.new_page()
    page.set_viewport_size({"width": width, "height": 900})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(page_path.as_uri(), wait_until="load")
    return page, errors


def _wait_for_maths(page) -> None:
    page.wait_for_function("""() => {
        if (!document.querySelector('.math')) return true;
        return window.MathJax && MathJax.startup && MathJax.startup.promise
            && document.querySelectorAll('mjx-container').length > 0;
    }""", timeout=30_000)
    page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null")


def smallest_figure_text_px() -> float:
    """Height in the PNG's own pixels of the smallest text a book figure draws (its style and resolution)."""
    from matplotlib.font_manager import font_scalings

    from mtmg.book.figures import BOOK_STYLE, DPI

    points = min(min(BOOK_STYLE.values()), font_scalings["small"] * BOOK_STYLE["font.size"])
    return points * DPI / 72


LAYOUT_PROBLEMS = """([figureTextPx, legiblePx]) => {
    const width = document.documentElement.clientWidth, problems = [];
    const article = document.querySelector('article') || document.body;
    const columnRight = article.getBoundingClientRect().right;
    const scrolls = (el) => {  // el or an ancestor is a scroll container that actually scrolls sideways
        for (let e = el; e && e !== document.body; e = e.parentElement) {
            const s = getComputedStyle(e);
            if (['auto', 'scroll'].includes(s.overflowX) && e.scrollWidth > e.clientWidth) return true;
        }
        return false;
    };
    const shown = (el) => el.getClientRects().length > 0 && !el.closest('.mtmg-interactive-map, mjx-container');
    const name = (el) => `${el.tagName.toLowerCase()} "${el.textContent.trim().replace(/\\s+/g, ' ').slice(0, 50)}"`;
    if (document.documentElement.scrollWidth > width + 1)
        problems.push(`the page is ${document.documentElement.scrollWidth} px wide in a ${width} px window`);
    for (const el of article.querySelectorAll('p, li, dt, dd, th, td, pre, code, h1, h2, h3, h4, caption')) {
        if (!shown(el)) continue;
        const r = el.getBoundingClientRect(), s = getComputedStyle(el);
        if (r.right > width + 1 && !scrolls(el)) problems.push(`cut off at the window's edge: ${name(el)}`);
        else if (['hidden', 'clip'].includes(s.overflowX) && el.scrollWidth > el.clientWidth + 1)
            problems.push(`clipped by its own box: ${name(el)}`);
    }
    for (const table of article.querySelectorAll('table')) {
        if (shown(table) && table.getBoundingClientRect().right > columnRight + 1 && !scrolls(table))
            problems.push(`a table wider than the text column does not scroll: ${name(table)}`);
    }
    for (const img of article.querySelectorAll('.cell_output img')) {
        if (!shown(img) || !img.naturalWidth) continue;
        const px = figureTextPx * img.getBoundingClientRect().width / img.naturalWidth;
        if (px < legiblePx) problems.push(`figure text ${px.toFixed(1)} px high: "${img.alt.slice(0, 60)}"`);
    }
    return problems;
}"""


@pytest.mark.parametrize("width", [PAGE_WIDTH, PHONE_WIDTH], ids=lambda w: f"{w}px")
@pytest.mark.parametrize("page_path", _pages(), ids=lambda p: str(p.relative_to(HTML)))
def test_page_renders_offline(browser, page_path, width):
    page, errors = _open(browser, page_path, width)
    try:
        _wait_for_maths(page)
        page.wait_for_timeout(300)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = str(page_path.relative_to(HTML).with_suffix("")).replace(os.sep, "__")
        page.screenshot(path=str(SCREENSHOTS / f"{name}@{width}.png"), full_page=True)
        problems = page.evaluate(LAYOUT_PROBLEMS, [smallest_figure_text_px(), LEGIBLE_PX])
        assert not problems, f"{page_path.name} at {width} px: " + "; ".join(problems[:8])

        maths = page.locator(".math").count()
        typeset = page.locator("mjx-container").count()
        assert typeset >= maths, f"{page_path.name}: {maths} formulas but only {typeset} typeset"
        text = page.locator("article").first.inner_text() if page.locator("article").count() else ""
        for raw in ("\\(", "\\)", "$$", "\\[", "\\begin{"):
            assert raw not in text, f"{page_path.name}: raw maths {raw!r} left in the rendered text"

        images = page.evaluate("""() => Array.from(document.images).map(
            i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0, alt: i.alt}))""")
        broken = [i["src"][:80] for i in images if not i["ok"]]
        assert not broken, f"{page_path.name}: images that did not load: {broken}"
        article_images = page.evaluate("""() => Array.from(document.querySelectorAll('article img'))
            .filter(i => !i.closest('.bk-Canvas, .mtmg-interactive-map')).map(i => i.alt)""")
        assert all(alt and not alt.endswith(".png") for alt in article_images), \
            f"{page_path.name}: an image has no real alt text: {article_images}"

        assert not errors, f"{page_path.name}: JavaScript errors: {errors}"

        solutions = page.locator(".solution")
        if solutions.count():
            from mtmg.book.teaching import EXERCISES, SOLUTIONS_DOC

            if page_path.stem == SOLUTIONS_DOC:
                assert solutions.count() >= len(EXERCISES), (
                    f"{page_path.name}: {len(EXERCISES)} exercises, {solutions.count()} solutions")
            else:  # the exercises of chapters 1-5 link to the solutions page; others may carry their own
                assert page_path.stem[:2] not in {f"{ex.chapter:02d}" for ex in EXERCISES}, \
                    f"{page_path.name}: the solutions of this chapter's exercises belong on {SOLUTIONS_DOC}"
            for i in range(solutions.count()):
                body = solutions.nth(i).locator(".solution-content, section, .admonition-body").first
                assert solutions.nth(i).evaluate("e => e.classList.contains('toggle-hidden') || "
                                                 "!!e.closest('details:not([open])') || "
                                                 "!!e.querySelector('.toggle-hidden')"), \
                    f"{page_path.name}: solution {i + 1} is not collapsed"
                assert body.count() or solutions.nth(i).inner_text().strip(), f"{page_path.name}: empty solution"

        if page.locator(".mtmg-interactive-map").count():
            # BokehJS draws into a canvas inside shadow roots; Playwright's locators pierce them
            canvas = page.locator(".mtmg-interactive-map canvas").first
            canvas.wait_for(state="attached", timeout=20_000)
            box = canvas.bounding_box()
            assert box and box["width"] > 100 and box["height"] > 100, \
                f"{page_path.name}: the interactive map did not render: {box}"
    finally:
        page.close()


def test_book_pages_were_found():
    assert len(_pages()) >= 10, f"expected the book's pages under {HTML}, found {len(_pages())}"


def test_chapters_have_exercises_and_an_interactive_map(browser):
    from mtmg.book.teaching import EXERCISES, SOLUTIONS_DOC

    with_runs = {f"{ex.chapter:02d}" for ex in EXERCISES}  # the chapters whose exercises are run changes
    counts = {}
    for page_path in _pages():
        if page_path.parent.name == "executed" and page_path.stem[:2] in with_runs:
            page, _ = _open(browser, page_path)
            counts[page_path.stem] = (page.locator(".exercise").count(),
                                      page.locator(".mtmg-interactive-map").count())
            # every exercise links to its solution on the solutions page
            links = page.locator(f".exercise a[href*='{SOLUTIONS_DOC}.html#sol-']").count()
            assert links == counts[page_path.stem][0], f"{page_path.name}: {links} links to solutions"
            # the download button offers the chapter as its executed notebook, served with the book
            assert page.locator(f"a[href$='_sources/book/executed/{page_path.stem}.ipynb']").count(), \
                f"{page_path.name}: no download of the notebook"
            assert (HTML / "_sources" / "book" / "executed" / f"{page_path.stem}.ipynb").is_file()
            page.close()
    assert len(counts) == len(with_runs), counts
    assert all(n >= 3 for n, _ in counts.values()), counts
    assert sum(n for n, _ in counts.values()) >= 15, counts
    assert counts["04_modality_gap"][1] == 1, counts


def test_the_workshop_handout_prints_on_one_page(browser):
    handout = HTML / "handout.html"
    if not handout.is_file():
        pytest.skip("no handout in the built book: make book writes it (python -m mtmg.book.handout)")
    page = browser.new_page()
    try:
        page.goto(handout.as_uri(), wait_until="load")
        pdf = page.pdf(format="A4", prefer_css_page_size=True)
    finally:
        page.close()
    pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf))
    assert pages == 1, f"the handout prints on {pages} A4 pages; shorten it to one"


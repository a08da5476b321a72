"""The built book in a real browser: Debian's Chromium opens every page of ``_build/html`` from disk with
networking disabled and checks that formulas are typeset, images load, no script fails, exercise
solutions are present and collapsed, and the interactive map renders. A screenshot of every page is
saved under ``_build/screenshots/``.

Runs after ``jupyter-book build`` (``make book``); skipped when the book is not built or Chromium is absent.
"""
from __future__ import annotations

import os
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

pytestmark = [
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


def _open(browser, page_path: Path):
    page = browser.new_page()
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


@pytest.mark.parametrize("page_path", _pages(), ids=lambda p: str(p.relative_to(HTML)))
def test_page_renders_offline(browser, page_path):
    page, errors = _open(browser, page_path)
    try:
        _wait_for_maths(page)
        page.wait_for_timeout(300)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = SCREENSHOTS / (str(page_path.relative_to(HTML).with_suffix("")).replace(os.sep, "__") + ".png")
        page.screenshot(path=str(shot), full_page=True)

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

            assert page_path.stem == SOLUTIONS_DOC, f"{page_path.name}: solutions belong on {SOLUTIONS_DOC}"
            assert solutions.count() == len(EXERCISES), (
                f"{page_path.name}: {len(EXERCISES)} exercises, {solutions.count()} solutions")
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
    from mtmg.book.teaching import SOLUTIONS_DOC

    counts = {}
    for page_path in _pages():
        if page_path.parent.name == "executed" and page_path.stem != SOLUTIONS_DOC:
            page, _ = _open(browser, page_path)
            counts[page_path.stem] = (page.locator(".exercise").count(),
                                      page.locator(".mtmg-interactive-map").count())
            # every exercise links to its solution on the solutions page
            links = page.locator(f".exercise a[href*='{SOLUTIONS_DOC}.html#sol-']").count()
            assert links == counts[page_path.stem][0], f"{page_path.name}: {links} links to solutions"
            page.close()
    assert len(counts) == 5, counts
    assert all(n >= 3 for n, _ in counts.values()), counts
    assert sum(n for n, _ in counts.values()) >= 15, counts
    assert counts["04_modality_gap"][1] == 1, counts

"""``make publish``: the built book (``_build/html``) goes to the pages branch of a repository, here a local
bare one standing in for GitHub; without a built book it fails with one line, pushing nothing."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("make") is None,
                                reason="needs git and make")


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _project(tmp_path: Path) -> Path:
    """A repository with the project's Makefile and one commit, as a clone would be."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "Makefile", work / "Makefile")
    _git("init", "-q", "-b", "main", cwd=work)
    _git("-c", "user.name=t", "-c", "user.email=t@example.org", "add", "Makefile", cwd=work)
    _git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "project", cwd=work)
    return work


def _publish(work: Path, remote: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["make", "--no-print-directory", "publish", f"PY={sys.executable}",
                           f"PAGES_REMOTE={remote}"], cwd=work, env=env, capture_output=True, text=True, timeout=120)


def test_make_publish_pushes_the_built_book_to_the_pages_branch(tmp_path):
    pytest.importorskip("ghp_import", reason="pip install ghp-import (in the dev requirements)")
    work, remote = _project(tmp_path), tmp_path / "remote.git"
    _git("init", "-q", "--bare", str(remote), cwd=tmp_path)

    missing = _publish(work, remote)
    assert missing.returncode == 2 and missing.stderr.splitlines()[0] == \
        "make publish: error: no book in _build/html; run make book first", missing.stderr
    assert not _git("branch", "--list", cwd=remote).strip()  # nothing was pushed

    html = work / "_build" / "html"
    (html / "_static").mkdir(parents=True)
    (html / "index.html").write_text("<html>the book</html>")
    (html / "_static" / "style.css").write_text("body {}")
    done = _publish(work, remote)
    assert done.returncode == 0, done.stderr
    files = set(_git("ls-tree", "-r", "--name-only", "gh-pages", cwd=remote).split())
    assert files == {".nojekyll", "index.html", "_static/style.css"}  # .nojekyll: GitHub serves _static as is
    assert _git("show", "gh-pages:index.html", cwd=remote) == "<html>the book</html>"
    assert "main" not in _git("branch", "--list", cwd=remote)  # only the pages branch is pushed


def _book_build():
    import importlib.util

    spec = importlib.util.spec_from_file_location("book_build", ROOT / "book" / "_ext" / "book_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_buttons_appear_with_the_repository_address_and_open_the_source_notebook(monkeypatch):
    from types import SimpleNamespace

    book_build = _book_build()
    config = SimpleNamespace(html_theme_options={})
    monkeypatch.delenv("MTMG_BOOK_REPOSITORY", raising=False)
    book_build.configure_theme(None, config)
    assert "launch_buttons" not in config.html_theme_options  # no address: no buttons
    monkeypatch.setenv("MTMG_BOOK_REPOSITORY", "https://github.com/example/mtmg")
    monkeypatch.setenv("MTMG_BOOK_JUPYTERHUB", "https://hub.example.org")
    book_build.configure_theme(None, config)
    buttons = config.html_theme_options["launch_buttons"]
    assert {"binderhub_url", "colab_url", "jupyterhub_url"} <= set(buttons)

    context = {"header_buttons": [{"label": "launch-buttons", "buttons": [
        {"url": "https://mybinder.org/v2/gh/example/mtmg/main?urlpath=lab/tree/book/executed/02_paint_patching.ipynb"},
        {"url": "https://hub.example.org/hub/user-redirect/git-pull?urlpath=lab%2Ftree%2Fmtmg%2Fbook%2Fexecuted%2F02"}]}]}
    book_build.launch_sources(context)
    urls = [b["url"] for b in context["header_buttons"][0]["buttons"]]
    assert urls[0].endswith("lab/tree/notebooks/02_paint_patching.ipynb")
    assert "mtmg%2Fnotebooks%2F02" in urls[1] and "executed" not in "".join(urls)

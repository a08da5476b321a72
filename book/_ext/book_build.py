"""Build settings of the book that Jupyter Book's ``_config.yml`` cannot express.

- Colab and Binder launch buttons behind one setting, the repository URL in ``MTMG_BOOK_REPOSITORY``:
  with the variable unset (the default) the book has no repository link and no launch buttons, so a copy
  of the book never points at a repository that does not exist. ``MTMG_BOOK_JUPYTERHUB`` (a hub's URL)
  adds a JupyterHub button. The buttons open a chapter's source in ``notebooks/`` (the executed copies
  the pages are made from are not in the repository).
- ``static/mtmg.css``: wide tables and figures scroll sideways instead of being cut off or shrunk until their
  text is illegible (a phone's 400 px as well as a laptop's 1280 px).
- A light colour scheme by default (the theme otherwise logs an error for its empty default mode).
- Each inline script only once per page (sphinx-thebe registers its configuration twice, which makes the
  browser report a redeclared constant).
"""
from __future__ import annotations

import os
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
LAUNCH_BUTTONS = {"notebook_interface": "jupyterlab", "colab_url": "https://colab.research.google.com",
                  "binderhub_url": "https://mybinder.org"}


def configure_theme(app, config) -> None:
    """Repository and launch buttons from ``MTMG_BOOK_REPOSITORY`` when it is set."""
    options = dict(config.html_theme_options or {})
    url = os.environ.get("MTMG_BOOK_REPOSITORY", "").strip()
    if url:
        hub = os.environ.get("MTMG_BOOK_JUPYTERHUB", "").strip()
        options.update(repository_url=url, repository_branch=os.environ.get("MTMG_BOOK_BRANCH", "main"),
                       path_to_docs="", use_repository_button=True,
                       launch_buttons={**LAUNCH_BUTTONS, **({"jupyterhub_url": hub} if hub else {})})
    config.html_theme_options = options


EXECUTED, SOURCES = "book/executed/", "notebooks/"


def launch_sources(context) -> None:
    """Point the launch buttons of a chapter at its source notebook in ``notebooks/``."""
    for group in context.get("header_buttons") or []:
        if group.get("label") == "launch-buttons":
            for button in group.get("buttons", []):
                if "url" in button:
                    button["url"] = button["url"].replace(EXECUTED, SOURCES).replace(
                        EXECUTED.replace("/", "%2F"), SOURCES.replace("/", "%2F"))


def page_context(app, pagename, templatename, context, doctree) -> None:
    """Light mode by default, and each script of a page only once."""
    context["default_mode"] = "light"
    launch_sources(context)
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        attributes = getattr(script, "attributes", {}) or {}
        identity = (getattr(script, "filename", str(script)) or "",
                    tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if identity in seen:
            continue
        seen.add(identity)
        kept.append(script)
    context["script_files"] = kept


def add_static(app, config) -> None:
    """Serve ``static/`` with the book (``mtmg.css``)."""
    config.html_static_path = [*config.html_static_path, str(STATIC)]


def setup(app):
    app.connect("config-inited", add_static, priority=900)
    app.add_css_file("mtmg.css")
    app.connect("config-inited", configure_theme, priority=900)
    app.connect("html-page-context", page_context, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

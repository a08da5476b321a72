"""Build settings of the book that Jupyter Book's ``_config.yml`` cannot express.

- Colab and Binder launch buttons behind one setting, the repository URL in ``MTMG_BOOK_REPOSITORY``:
  with the variable unset (the default) the book has no repository link and no launch buttons, so a copy
  of the book never points at a repository that does not exist.
- A light colour scheme by default (the theme otherwise logs an error for its empty default mode).
- Each inline script only once per page (sphinx-thebe registers its configuration twice, which makes the
  browser report a redeclared constant).
"""
from __future__ import annotations

import os

LAUNCH_BUTTONS = {"notebook_interface": "jupyterlab", "colab_url": "https://colab.research.google.com",
                  "binderhub_url": "https://mybinder.org"}


def configure_theme(app, config) -> None:
    """Repository and launch buttons from ``MTMG_BOOK_REPOSITORY`` when it is set."""
    options = dict(config.html_theme_options or {})
    url = os.environ.get("MTMG_BOOK_REPOSITORY", "").strip()
    if url:
        options.update(repository_url=url, repository_branch=os.environ.get("MTMG_BOOK_BRANCH", "main"),
                       path_to_docs="", use_repository_button=True, launch_buttons=dict(LAUNCH_BUTTONS))
    config.html_theme_options = options


def page_context(app, pagename, templatename, context, doctree) -> None:
    """Light mode by default, and each script of a page only once."""
    context["default_mode"] = "light"
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        attributes = getattr(script, "attributes", {}) or {}
        identity = (getattr(script, "filename", str(script)) or "", tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if identity in seen:
            continue
        seen.add(identity)
        kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.connect("config-inited", configure_theme, priority=900)
    app.connect("html-page-context", page_context, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

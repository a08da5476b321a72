# mtmg: two commands do everything.
#   make test   create .venv if needed, install, ruff, every test but the slow tier (learning checks of the
#               miniature included), the chapters executed and checked by nbval
#   make test-all  make test, then the slow tier (MiniCLIP regeneration, the paper profiles' smoke run, the
#               solutions page and the browser test; pytest marker slow)
#   make book   create .venv if needed, install, execute the notebooks (embedded default), build the book
#   make warmup the workshop's preparation: chapters 1-6 only, so a participant's exercise runs are new runs
#   make lab    JupyterLab on the notebooks;  make publish  push the built book to the pages branch
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= default
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg

NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
# The solutions page runs every exercise's change: it is built for the book, never by the warm-up.
SOLUTIONS_NB := notebooks/07_exercise_solutions.ipynb
CHAPTER_NBS := $(filter-out $(SOLUTIONS_NB),$(NOTEBOOKS))
EXECUTED_CHAPTERS := $(patsubst notebooks/%,book/executed/%,$(CHAPTER_NBS))
SOURCES := $(shell find mtmg configs -name '*.py' -o -name '*.yaml' -o -name '*.json' 2>/dev/null)

.PHONY: install test test-all unit slow nbval-all warmup notebooks nbval book book-browser handout lab publish clean-book

install: $(STAMP)

# Reinstall only when the dependency files change.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt
	@# numba compiles umap's and pynndescent's cached functions on their first import, and the kernels that
	@# mtmg.evaluation.gap.import_umap adds to its cache on the first fit (about 35 s in all on 2 cores); it keeps them
	@# beside the package, like Python's bytecode: pay that here, not in chapter 4
	$(PY) -c "from mtmg.evaluation.gap import compile_umap; compile_umap()"
	@touch $@

unit: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests -m "not slow" --ignore=tests/test_executed_notebooks.py --durations=15

# The notebooks are executed into book/executed/, one after the other in one kernel (the libraries are
# imported once; each notebook starts from an empty namespace). A failed notebook keeps its previous good
# copy and stops the run. The stamps name the profile the copies were made with: .warm- for the chapters
# (the warm-up), .done- for the whole book (chapters, then the solutions page in a kernel of its own).
WARM := book/executed/.warm-$(PROFILE)
DONE := book/executed/.done-$(PROFILE)

$(WARM): $(CHAPTER_NBS) $(STAMP) $(SOURCES)
	@rm -f book/executed/.warm-* book/executed/.done-*
	$(PY) -m mtmg.book.notebook --into book/executed $(CHAPTER_NBS) --profile $(PROFILE)
	@touch $@

warmup: $(WARM)

# The exercises' changes run side by side first where the cores allow (cores // the profile's threads);
# the solutions page then reuses their runs.
JOBS ?= auto
$(DONE): $(WARM) $(SOLUTIONS_NB)
	@rm -f book/executed/.done-*
	$(PY) -m mtmg.book.exercise_runs --profile $(PROFILE) --jobs $(JOBS)
	$(PY) -m mtmg.book.notebook --into book/executed $(SOLUTIONS_NB) --profile $(PROFILE)
	@touch $@

notebooks: $(DONE)

# make test checks the chapters (the warm-up's copies); make test-all adds the solutions page.
nbval: $(WARM)
	$(PY) -m pytest --nbval-lax -p no:cacheprovider -m "not slow" $(EXECUTED_CHAPTERS) tests/test_executed_notebooks.py

nbval-all: notebooks
	$(PY) -m pytest --nbval-lax -p no:cacheprovider book/executed/$(notdir $(SOLUTIONS_NB)) tests/test_executed_notebooks.py

# The slow tier: tests marked slow (the browser test skips here when the book is not built yet).
# The participant test (tests/test_workshop.py) starts from a copy of the warm-up's run store when make test
# has just made it, instead of warming up a second store.
slow: $(STAMP)
	MTMG_TEST_WARM_RUNS=$(if $(wildcard $(WARM)),$(CURDIR)/runs) $(PY) -m pytest tests -m slow --ignore=tests/test_executed_notebooks.py --durations=15 -rs

test: unit nbval

test-all: test slow nbval-all

book: notebooks
	$(VENV)/bin/jupyter-book build . --warningiserror --nitpick --keep-going
	@test -f _build/html/index.html
	$(PY) -m mtmg.book.handout --into _build/html
	$(MAKE) book-browser

# The workshop's printable handout and facilitator notes (also published with the book).
handout: $(STAMP)
	$(PY) -m mtmg.book.handout --into _build/html

# Every page of the built book in headless Chromium with networking off (skipped, with the install
# command, where Chromium is absent); screenshots go to _build/screenshots/.
book-browser: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider tests/test_book_browser.py -q -rs

# Open the notebooks in JupyterLab (the workshop set-up); as root (a container) with --allow-root.
LAB_ARGS ?=
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Push the book that `make book` built (_build/html) to the pages branch with ghp-import, as CI does
# (.github/workflows/book.yml). PAGES_REMOTE: a remote name, URL or path; PAGES_BRANCH: the branch.
PAGES_REMOTE ?= origin
PAGES_BRANCH ?= gh-pages
publish:
	@test -f _build/html/index.html || { echo "make publish: error: no book in _build/html; run make book first" >&2; exit 2; }
	$(PY) -m ghp_import --no-jekyll --push --force --remote $(PAGES_REMOTE) --branch $(PAGES_BRANCH) \
		--message "Book built from $$(git rev-parse --short HEAD 2>/dev/null || echo a working tree)" _build/html

clean-book:
	rm -rf _build book/executed

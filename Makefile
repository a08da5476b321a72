# mtmg: two commands do everything.
#   make test   create .venv if needed, install, run the unit tests, learning checks and notebook tests
#   make book   create .venv if needed, install, execute the notebooks (embedded default), build the book
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= default
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg

NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
EXECUTED := $(patsubst notebooks/%,book/executed/%,$(NOTEBOOKS))
SOURCES := $(shell find mtmg configs -name '*.py' -o -name '*.yaml' -o -name '*.json' 2>/dev/null)

.PHONY: install test unit notebooks nbval book book-browser lab clean-book

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
	$(PY) -m pytest tests --ignore=tests/test_executed_notebooks.py --ignore=tests/test_book_browser.py --durations=10

# The notebooks are executed into book/executed/, one after the other in one kernel (the libraries are
# imported once; each notebook starts from an empty namespace). A failed notebook keeps its previous good
# copy and stops the run. The stamp names the profile the copies were made with.
DONE := book/executed/.done-$(PROFILE)

$(DONE): $(NOTEBOOKS) $(STAMP) $(SOURCES)
	@rm -f book/executed/.done-*
	$(PY) -m mtmg.book.notebook --into book/executed $(NOTEBOOKS) --profile $(PROFILE)
	@touch $@

notebooks: $(DONE)

nbval: notebooks
	$(PY) -m pytest --nbval-lax -p no:cacheprovider $(EXECUTED) tests/test_executed_notebooks.py

test: unit nbval

book: notebooks
	$(VENV)/bin/jupyter-book build . --warningiserror --nitpick --keep-going
	@test -f _build/html/index.html
	$(MAKE) book-browser

# Every page of the built book in headless Chromium with networking off (skipped, with the install
# command, where Chromium is absent); screenshots go to _build/screenshots/.
book-browser: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider tests/test_book_browser.py -q -rs

# Open the notebooks in JupyterLab (the workshop set-up).
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-book:
	rm -rf _build book/executed

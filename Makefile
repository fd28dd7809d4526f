# sgwsss: two commands do all the set-up (see README.md).
#   make book   build the Jupyter Book (executes every chapter) into _build/html
#   make test   the whole test suite: unit tests + nbval over every chapter
# Both create (or reuse) the virtual environment .venv and install the package
# with the tested versions from requirements/constraints.txt.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sgwsss-installed

# Chapters run with book/ as working directory: make a relative data root absolute.
ifdef SGWSSS_VOC_ROOT
export SGWSSS_VOC_ROOT := $(abspath $(SGWSSS_VOC_ROOT))
endif

.PHONY: book test clean-book

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off -c requirements/constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (sgwsss)" >/dev/null
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . --builder html -W --keep-going

test: $(STAMP)
	$(BIN)/python -m pytest tests book --nbval-lax --durations=15

clean-book:
	rm -rf _build

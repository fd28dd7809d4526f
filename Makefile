# sgwsss: two commands do all the set-up (see README.md).
#   make book   build the Jupyter Book (executes every chapter) into _build/html
#   make test   the whole test suite: unit tests + nbval over every chapter
# Both create (or reuse) the virtual environment .venv and install the package
# with the tested versions from requirements/constraints.txt, then run `make data`.
#   make data   with SGWSSS_VOC_ROOT set: check that copy (nothing is downloaded); unset: download
#               VOC 2012 + SBD into the cache (~/.cache/sgwsss, or SGWSSS_CACHE_DIR) and build
#               SegmentationClassAug and train_aug.txt (resumable; extra mirrors: SGWSSS_VOC_SOURCES)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sgwsss-installed

# Chapters run with book/ as working directory: make a relative data root absolute.
ifdef SGWSSS_VOC_ROOT
export SGWSSS_VOC_ROOT := $(abspath $(SGWSSS_VOC_ROOT))
endif

.PHONY: book test data clean-book

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off -c requirements/constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (sgwsss)" >/dev/null
	touch $(STAMP)

# The data first: a progress bar here, not a silent cell inside the book build.
data: $(STAMP)
	$(BIN)/python -m sgwsss.data.download

# SGWSSS_BUDGET is the one switch that shortens the chapters' training (see
# sgwsss/train/config.py): it scales the iterations of Algorithm 1 and, below 1,
# the images used. The book uses 0.3 so that it builds in under 30 minutes on two
# cores; the tests use 0.05. Override with e.g. `make book SGWSSS_BUDGET=1`.
book: export SGWSSS_BUDGET ?= 0.3
book: $(STAMP) data
	$(BIN)/jupyter-book build . --builder html -W --keep-going

test: export SGWSSS_BUDGET ?= 0.05
test: $(STAMP) data
	$(BIN)/python -m pytest tests book --nbval-lax --durations=15

clean-book:
	rm -rf _build

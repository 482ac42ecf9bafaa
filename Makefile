# Two entry points, each working on a fresh machine from a fresh clone:
#   make demo   - install (if needed) and run `avlens demo`, writing avlens-report/index.html
#   make test   - install (if needed) and run the test suite
# The virtual environment lives in .venv. On a machine without torch, the CPU wheel
# torch==2.13.0 is installed first (a plain `torch` requirement would pull a multi-GB CUDA
# build); the project itself only asks for torch>=2.6.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.avlens-installed

.PHONY: demo test install bench docs tutorials clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

DOCS_STAMP := $(VENV)/.avlens-docs-installed

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e ".[dev,docs]"
	@touch $(DOCS_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/avlens demo --out avlens-report

# the test suite, then the tutorials' solution notebooks executed top to bottom by nbmake (each in
# about 10-30 s on 2 CPU cores; a cell over 120 s fails; outputs are not compared)
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests --nbmake --nbmake-timeout=120 tutorials/solutions

# the docs site (Sphinx, furo, myst-nb) with warnings as errors: docs/_build/html/index.html
docs: $(DOCS_STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

# regenerate the exercise and solution notebooks from tutorials/src/*.py
tutorials: $(STAMP)
	$(PY) -m tutorials.build

bench: $(STAMP)
	$(PY) benchmarks/bench_forward.py

clean:
	rm -rf $(VENV) *.egg-info avlens-report docs/_build

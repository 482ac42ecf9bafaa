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

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/avlens demo --out avlens-report

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: $(STAMP)
	$(PY) benchmarks/bench_forward.py

clean:
	rm -rf $(VENV) *.egg-info avlens-report

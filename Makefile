# The README's two commands: `make demo` and `make test`. Each sets up the
# virtual environment first (once; later runs reuse it).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned and installed first. On the project's build machines pip's
	# configured index holds a local CPU-only wheel of 2.13.0; elsewhere the same
	# pin from PyPI is the CUDA build on Linux (gigabytes). README "Installing
	# torch" says how to choose the CPU-only or a CUDA build from PyTorch's own indexes.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/streamrecon demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info out

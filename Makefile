# The README's two commands: `make demo` and `make test`. Each sets up the
# virtual environment first (once; later runs reuse it).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup triton-env test-deps demo test bench clean

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

# The Triton server's own environment (`streamrecon triton-server`): PyTriton 0.7.0
# bundles tritonserver (needs glibc >= 2.35) and pins numpy<2, so it lives apart
# from .venv; gadgets reach it with tritonclient from .venv.
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed

triton-env: $(TRITON_STAMP)

$(TRITON_STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/pip install --quiet torch==2.13.0
	$(TRITON_VENV)/bin/pip install --quiet -e '.[triton]'
	touch $(TRITON_STAMP)

demo: setup
	$(BIN)/streamrecon demo

# Real Gadgetron, PyTriton, dicom3tools, BART for the tests that use them (best effort: each one
# that cannot be installed leaves its tests skipped with the reason).
test-deps: setup
	.ci/test-deps

test: setup test-deps
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(TRITON_VENV) *.egg-info out

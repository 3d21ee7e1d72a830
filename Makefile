# chipfit developer entry points. README's two commands are `make demo` and `make test`.
# .ci/run runs `make test`.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit crds

# A virtual environment with chipfit and its development tools, rebuilt when pyproject.toml changes.
install: $(STAMP)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The main job on the embedded example fleet.
demo: install
	$(VENV)/bin/chipfit validate -f examples/
	$(VENV)/bin/chipfit plan -f examples/

# Regenerate crds/ (and the chart's copy) from the pydantic API models.
crds: install
	$(VENV)/bin/chipfit crds --write

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check placement operator tests benchmarks

typecheck: install
	$(VENV)/bin/mypy placement operator/chipfit

# Everything CI runs: lint, types, unit tests, then the e2e tier on the real control plane.
test: install lint typecheck
	bash tests/run.sh

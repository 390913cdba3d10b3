# The two commands of the README:  make repro  (install, then run the pipeline)
#                                   make test   (install, then lint, type-check and test)
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# DVC runs stage commands with `python` and starts queue workers with `dvc` from PATH:
# both must be this environment's.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install repro test test-fast lint benchmark push restore

install: $(VENV)/.installed

# requirements.lock: the versions the tests last passed with (constraints, not ranges)
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

repro: install
	dvc repro

lint: install
	ruff check .
	mypy

test: lint
	pytest

# the unit tests only: synthetic data, no dvc, no download, no killed processes (~1 min)
test-fast: lint
	pytest -m "not e2e and not processes"

benchmark: install
	python -m benchmarks.train_speed

# share every run DVC has seen (outputs, metrics and plots) with the default remote
push: install
	python -m stages.share

# after a failed or interrupted run: the last committed params, and their outputs back from
# DVC's cache (nothing is trained again for params DVC has seen)
restore: install
	git checkout HEAD -- params.yaml
	dvc repro

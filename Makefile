# The two commands of the README:  make repro  (install, then run the pipeline)
#                                   make test   (install, then lint and run the tests)
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# DVC runs stage commands with `python` and starts queue workers with `dvc` from PATH:
# both must be this environment's.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install repro test lint benchmark

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

repro: install
	dvc repro

lint: install
	ruff check .

test: lint
	pytest

benchmark: install
	python -m benchmarks.train_speed

# The two commands of the README:  make repro  (install, then run the pipeline)
#                                   make test   (install, then lint and run the tests)
# and, for a pull request:          make review BASE=main [RERUN=1]  (report in review/)
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# DVC runs stage commands with `python` and starts queue workers with `dvc` from PATH:
# both must be this environment's.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
BASE ?= main

.PHONY: install repro test lint benchmark review seed-spread

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

# The workspace's outputs against BASE; RERUN=1 recomputes BASE here first (stages/review.py).
review: install
	python -m stages.review --base $(BASE) $(if $(RERUN),--rerun)

# The defaults' accuracy across seeds 0-4 on this machine, for review's noise band: commit
# the docs/seed_spread.json it writes. Sequential on purpose: threads must stay the default.
seed-spread: install
	dvc exp run --queue -S 'train.seed=range(0, 5)'
	dvc exp run --run-all
	python -m stages.review --seed-spread

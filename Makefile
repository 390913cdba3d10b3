# The two commands of the README:  make repro  (install, then run the pipeline)
#                                   make test   (install, then lint, type-check and test)
# and, for a pull request:          make review BASE=main [SEEDS=5 | RERUN=1]  (in review/)
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# DVC runs stage commands with `python` and starts queue workers with `dvc` from PATH:
# both must be this environment's.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
BASE ?= main

.PHONY: install repro test test-fast lint benchmark push restore review seed-spread \
	review-calibration

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

# the unit tests only: synthetic data, no dvc, no download, no killed processes (~25 s)
test-fast: lint
	pytest -m "not e2e and not processes"

benchmark: install
	python -m benchmarks.train_speed

# share every run DVC has seen (outputs, metrics and plots) with the default remote
push: install
	mnist-dvc push

# after a failed or interrupted run: the last committed params, and their outputs back from
# DVC's cache (nothing is trained again for params DVC has seen)
restore: install
	git checkout HEAD -- params.yaml
	dvc repro

# The workspace's outputs against BASE; RERUN=1 recomputes BASE here first. SEEDS=N trains
# N seeds a side here instead (the same seeds on both, through DVC's queue and run-cache)
# and compares them pair by pair (docs/review-across-seeds.md).
review: install
	mnist-dvc review --base $(BASE) $(if $(RERUN),--rerun) $(if $(SEEDS),--seeds $(SEEDS))

# The defaults' accuracy across seeds 0-9 on this machine, for review's noise band: commit
# the docs/seed_spread.json it writes. Sequential on purpose: threads must stay the default.
seed-spread: install
	dvc exp run --queue -S 'train.seed=range(0, 10)'
	dvc exp run --run-all
	mnist-dvc review --seed-spread

# review --seeds' false-positive rate and power, measured on 20 seeds of the defaults and two
# known changes (needs dvc repro's data/prepared): commit the docs/review_calibration.json it
# writes. 5-20 minutes on 2 cores (docs/review-across-seeds.md).
review-calibration: install
	python -m benchmarks.review_calibration

# The two commands of the README:  make repro  (install, then run the pipeline)
#                                   make test   (install, then lint, type-check and test)
# and, for a pull request:          make review BASE=main [SEEDS=5 | RERUN=1]  (in review/)
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# PYTHON's version and interpreter, found before PATH gains the environment's bin/ (below)
PYTHON_FOUND := $(shell $(PYTHON) -c \
  'import sys; print("%d.%d" % sys.version_info[:2], sys.executable)')
PYTHON_VERSION := $(word 1,$(PYTHON_FOUND))
BASE_PYTHON := $(word 2,$(PYTHON_FOUND))
# DVC runs stage commands with `python` and starts queue workers with `dvc` from PATH:
# both must be this environment's.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
BASE ?= main

.PHONY: install lock repro test test-fast lint benchmark push restore review seed-spread \
	review-calibration

# The Pythons this project supports, oldest first: requirements.lock is resolved for all of
# them, make lock checks a wheel for each, and pyproject.toml's classifiers name the same.
PYTHONS := 3.10 3.11 3.12 3.13

# The stamp names the Python: another PYTHON= rebuilds .venv from scratch.
install: $(VENV)/.installed-$(PYTHON_VERSION)

# requirements.lock: the tested versions for every Python in PYTHONS (constraints with
# environment markers, written by make lock); pip keeps the lines whose markers fit.
$(VENV)/.installed-$(PYTHON_VERSION): pyproject.toml requirements.lock
	@test -n "$(PYTHON_VERSION)" || { echo "error: PYTHON=$(PYTHON) does not run" >&2; exit 1; }
	$(BASE_PYTHON) -m venv $(if $(filter-out $@,$(wildcard $(VENV)/.installed-*)),--clear) $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -c requirements.lock -e '.[dev]'
	touch $@

# Regenerate requirements.lock from pyproject.toml for every Python in PYTHONS, keeping the
# versions it already pins that still fit (uv's preference for its output file), then check
# that each pin has a wheel for each Python on Linux x86_64 and macOS 14+ arm64.
# UPGRADE=all moves every package to its newest fitting release, UPGRADE="numpy scipy" those.
# See docs/install.md.
UV_VERSION := 0.13.9
UV := $(abspath $(VENV))-uv/bin/uv
# published as source only, pure Python (every other package must have a wheel)
SOURCE_ONLY := antlr4-python3-runtime
LOCK_PLATFORMS := x86_64-manylinux_2_28 aarch64-apple-darwin
LOCK_UPGRADE = $(if $(filter all,$(UPGRADE)),--upgrade,$(addprefix --upgrade-package ,$(UPGRADE)))

lock:
	$(BASE_PYTHON) -m venv $(VENV)-uv
	$(VENV)-uv/bin/python -m pip install --quiet uv==$(UV_VERSION)
	$(UV) pip compile pyproject.toml --all-extras --universal --quiet \
	  --python-version $(firstword $(PYTHONS)) --custom-compile-command 'make lock' \
	  --output-file requirements.lock $(LOCK_UPGRADE)
	@for version in $(PYTHONS); do for platform in $(LOCK_PLATFORMS); do \
	  echo "wheels for Python $$version on $$platform"; \
	  MACOSX_DEPLOYMENT_TARGET=14.0 $(UV) pip compile requirements.lock --no-deps --quiet \
	    --output-file /dev/null --python-version $$version --python-platform $$platform \
	    --only-binary :all: $(addprefix --no-binary ,$(SOURCE_ONLY)) || exit 1; \
	done; done

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
	mnist-dvc calibrate

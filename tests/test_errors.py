"""mnist_dvc/errors.py run_stage: how a stage's process ends."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

from mnist_dvc.errors import StageError, run_stage
from tests.conftest import REPO_ROOT

PROGRAM = """
from mnist_dvc.errors import run_stage

class Cycle:
    def __del__(self):
        print("finalized", flush=True)

def main():
    cycle = Cycle()
    cycle.itself = cycle  # garbage only a collection finds

run_stage(main)
"""


def test_a_program_collects_its_garbage_before_freezing_the_rest():
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "finalized\n"


def test_a_call_from_elsewhere_leaves_the_collector_alone():
    frozen = gc.get_freeze_count()
    run_stage(lambda: None)
    assert gc.get_freeze_count() == frozen


def test_a_stage_error_is_one_line_and_exit_1(capsys):
    def fail() -> None:
        raise StageError("params.yaml: train.lr must be > 0")

    with pytest.raises(SystemExit) as info:
        run_stage(fail)
    assert info.value.code == 1
    assert capsys.readouterr().err == "error: params.yaml: train.lr must be > 0\n"

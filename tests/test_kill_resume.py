"""A real train process, killed mid-run, resumes and ends bit-identical to a clean run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_dvc.config.params import parse_params
from mnist_dvc.config.workspace import Layout
from tests.conftest import REPO_ROOT, make_project

pytestmark = pytest.mark.processes

EPOCHS = 4
PARAMS = parse_params({"train": {"epochs": EPOCHS, "batch_size": 32, "threads": 1,
                                 "device": "cpu"}})
OUTPUTS = ("model", "checkpoint", "train_metrics", "train_history", "train_steps")

# `python -m stages.train`, with Ctrl-C handled as in a terminal: a shell that runs this
# suite in the background without job control starts it with SIGINT ignored, and python
# would inherit that.
TRAIN = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "runpy.run_module('stages.train', run_name='__main__', alter_sys=True)")


def start_train(root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-c", TRAIN], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def hashes(layout: Layout) -> dict[str, str]:
    return {name: hashlib.sha256(getattr(layout, name).read_bytes()).hexdigest()
            for name in OUTPUTS}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> dict[str, str]:
    layout = make_project(tmp_path_factory.mktemp("clean"), PARAMS, train_count=3000,
                          test_count=200)
    process = start_train(layout.root)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return hashes(layout)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_killed_training_resumes_bit_identical(tmp_path, clean_run, sig):
    layout = make_project(tmp_path, PARAMS, train_count=3000, test_count=200)
    process = start_train(layout.root)
    assert process.stdout is not None
    first = process.stdout.readline()  # blocks until the first epoch is complete
    assert first.startswith(f"train: epoch 1/{EPOCHS} "), first
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), err
    assert not layout.model_dir.exists()  # no output that looks finished
    live = json.loads(layout.train_metrics.read_text())
    assert live["epoch"] < live["epochs"] == EPOCHS
    (state,) = layout.resume.iterdir()  # one state, no temporary files

    rerun = start_train(layout.root)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert f"train: resuming from {state.relative_to(layout.root)} after epoch" in out
    assert f"epoch 1/{EPOCHS}" not in out  # the completed epoch was not trained again
    assert hashes(layout) == clean_run
    assert not list(layout.resume.iterdir())

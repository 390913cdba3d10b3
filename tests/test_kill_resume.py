"""A real train process, killed mid-run, resumes and ends bit-identical to a clean run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stages.params import parse_params
from stages.prepared import write_split
from stages.preprocess import prepare_split
from tests.conftest import REPO_ROOT, write_raw_dir

EPOCHS = 4
PARAMS = {"train": {"epochs": EPOCHS, "batch_size": 32, "threads": 1, "device": "cpu"}}
OUTPUTS = ("data/model/model.pt", "data/checkpoints/last.pt", "metrics/train.json",
           "metrics/train_history.csv")


def make_project(root: Path) -> Path:
    """A directory laid out like the repository, with synthetic prepared data."""
    raw = write_raw_dir(root / "data" / "raw", train_count=3000, test_count=200)
    for split in ("train", "test"):
        write_split(root / "data" / "prepared", split,
                    *prepare_split(raw, split, parse_params(PARAMS).preprocess))
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return root


# `python -m stages.train`, with Ctrl-C handled as in a terminal: a shell that runs this
# suite in the background without job control starts it with SIGINT ignored, and python
# would inherit that.
TRAIN = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "runpy.run_module('stages.train', run_name='__main__', alter_sys=True)")


def start_train(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-c", TRAIN], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def hashes(root: Path) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in OUTPUTS}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> dict[str, str]:
    root = make_project(tmp_path_factory.mktemp("clean"))
    process = start_train(root)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return hashes(root)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_killed_training_resumes_bit_identical(tmp_path, clean_run, sig):
    root = make_project(tmp_path)
    checkpoint = root / "data" / "checkpoints" / "last.pt"
    process = start_train(root)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "training ended before it could be interrupted"
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), err
    assert not (root / "data" / "model" / "model.pt").exists()
    assert not [p for p in checkpoint.parent.iterdir() if p.name != "last.pt"]  # no temp files

    rerun = start_train(root)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "resuming from data/checkpoints/last.pt after epoch" in out
    assert f"epoch 1/{EPOCHS}" not in out  # the completed epoch was not trained again
    assert hashes(root) == clean_run

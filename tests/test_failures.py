"""Failures a user can cause, across the stages: one line, a non-zero exit, nothing good lost."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_dvc import files
from mnist_dvc.cli import COMMANDS as COMMANDS_OF_THE_CLI
from mnist_dvc.config.params import with_train
from mnist_dvc.config.workspace import Layout
from mnist_dvc.errors import StageError
from stages.evaluate import evaluate
from stages.train import train
from tests.conftest import PIPELINE, REPO_ROOT

# every stage of dvc.yaml, and the commands beside the pipeline
COMMANDS = [["-m", f"stages.{stage}"] for stage in PIPELINE] + [
    ["-m", "mnist_dvc", command] for command in COMMANDS_OF_THE_CLI]


def snapshot(layout: Layout) -> dict[Path, str]:
    return {path: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in layout.root.rglob("*") if path.is_file()}


def full_disk(monkeypatch: pytest.MonkeyPatch, after: int = 0) -> None:
    """Every atomic write after the first ``after`` fails as on a full disk."""
    writes = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        writes.append(fd)
        if len(writes) > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_full_disk_is_one_line_naming_the_file_and_old_outputs_stay(project, tiny_params,
                                                                      monkeypatch, stage):
    train(tiny_params, project)
    evaluate(tiny_params.evaluate, project)
    before = snapshot(project)
    full_disk(monkeypatch)

    with pytest.raises(StageError) as info:
        if stage == "train":
            train(with_train(tiny_params, lr=0.02), project)
        else:
            evaluate(tiny_params.evaluate, project)
    message = str(info.value)
    assert message.startswith("cannot write ") and message.endswith(": No space left on device")
    assert "\n" not in message
    assert snapshot(project) == before  # the old outputs, and no temporary file


def test_a_state_that_cannot_be_removed_is_one_line(project, tiny_params, monkeypatch):
    stale = project.resume / "train-0123456789abcdef.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an unfinished run of other params")
    real_unlink = Path.unlink

    def read_only(path: Path, missing_ok: bool = False) -> None:
        if path == stale:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(StageError) as info:
        train(tiny_params, project)
    assert str(info.value) == f"cannot remove {stale}: Permission denied"
    assert stale.exists() and not project.model_dir.exists()


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_prints_usage_and_runs_nothing(tmp_path, command):
    done = subprocess.run([sys.executable, *command, "--help"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    name = f"python -m {command[1]}" if command[1] != "mnist_dvc" else f"mnist-dvc {command[2]}"
    assert done.stdout.startswith(f"usage: {name}")
    assert done.stderr == "" and list(tmp_path.iterdir()) == []  # nothing read or written


def test_an_argument_a_stage_does_not_take_is_refused(tmp_path):
    done = subprocess.run([sys.executable, "-m", "stages.evaluate", "--batch-size", "5"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unrecognized arguments: --batch-size 5" in done.stderr
    assert list(tmp_path.iterdir()) == []

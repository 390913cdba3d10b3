"""Data-parallel training with real processes: torchrun, gloo, two "nodes" on loopback."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_dvc.config.params import Params, parse_params, with_train
from mnist_dvc.config.workspace import Layout
from tests.conftest import REPO_ROOT, make_project, write_params

pytestmark = [pytest.mark.processes,
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="the kill tests read /proc")]

EPOCHS = 3
DDP = parse_params({"train": {"epochs": EPOCHS, "batch_size": 64, "threads": 1,
                              "device": "cpu", "nproc": 2}})
OUTPUTS = ("model", "checkpoint", "train_metrics", "train_history", "train_steps")
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TQDM_DISABLE": "1"}


def project(root: Path, params: Params = DDP) -> Layout:
    return make_project(root, params, train_count=1024, test_count=256)


def hashes(layout: Layout) -> dict[str, str]:
    return {name: hashlib.sha256(getattr(layout, name).read_bytes()).hexdigest()
            for name in OUTPUTS}


def start(layout: Layout, *command: str) -> subprocess.Popen[str]:
    return subprocess.Popen(command or (sys.executable, "-m", "stages.train"), cwd=layout.root,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out


def processes_in(root: Path) -> list[int]:
    """Processes whose working directory is ``root`` (the stage and its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "cwd") == str(root):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> dict[str, str]:
    """One uninterrupted 2-process run of the stage."""
    layout = project(tmp_path_factory.mktemp("ddp"))
    out = finish(start(layout))
    assert [line.split(" loss")[0] for line in out.splitlines()] == \
        [f"train: epoch {n}/{EPOCHS}" for n in range(1, EPOCHS + 1)]  # rank 0 only
    return hashes(layout)


def test_two_processes_give_the_same_bytes_on_every_run(ddp_run, tmp_path):
    again = project(tmp_path)
    finish(start(again))
    assert hashes(again) == ddp_run
    assert not list(again.resume.iterdir())


def test_two_loopback_nodes_give_the_single_host_bytes(ddp_run, tmp_path):
    first, second = project(tmp_path / "node0"), project(tmp_path / "node1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = [start(layout, sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                   f"--node-rank={rank}", "--nproc-per-node=1", "--master-addr=127.0.0.1",
                   f"--master-port={port}", "-m", "stages.train")
             for rank, layout in enumerate((first, second))]
    for node in nodes:
        finish(node)
    assert hashes(first) == ddp_run
    assert not second.model_dir.exists()  # rank 0 writes every output, on node 0


def test_a_killed_launcher_takes_its_workers_along_and_the_rerun_resumes_exactly(
    ddp_run, tmp_path,
):
    layout = project(tmp_path)
    launcher = start(layout)
    assert launcher.stdout is not None
    first = launcher.stdout.readline()
    assert first.startswith(f"train: epoch 1/{EPOCHS} "), first
    launcher.send_signal(signal.SIGKILL)
    launcher.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while processes_in(layout.root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_in(layout.root) == []  # no orphan goes on training
    assert not layout.model_dir.exists()

    out = finish(start(layout))
    assert "train: resuming from data/resume/" in out and f"epoch 1/{EPOCHS}" not in out
    assert hashes(layout) == ddp_run


@pytest.mark.parametrize("how", ["kill a worker", "Ctrl-C"])
def test_a_stopped_run_says_so_in_one_line_and_resumes_exactly(ddp_run, tmp_path, how):
    layout = project(tmp_path)
    launcher = subprocess.Popen((sys.executable, "-m", "stages.train"), cwd=layout.root,
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    assert launcher.stdout is not None
    launcher.stdout.readline()
    if how == "Ctrl-C":  # a terminal sends it to the whole foreground process group
        os.killpg(launcher.pid, signal.SIGINT)
    else:
        workers = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text()
        os.kill(int(workers.split()[-1]), signal.SIGKILL)
    _, err = launcher.communicate(timeout=60)
    if how == "Ctrl-C":
        assert launcher.returncode == 130
        assert err == "interrupted: rerun to continue (train resumes from its last complete " \
                      "epoch)\n"
    else:
        assert launcher.returncode == 1
        assert err.startswith("error: train: a worker process failed (") and \
            "rank 1 killed by SIGKILL" in err and err.count("\n") == 1

    out = finish(start(layout))
    assert "train: resuming from data/resume/" in out
    assert hashes(layout) == ddp_run


def test_a_state_written_by_two_processes_is_dropped_by_one(tmp_path):
    layout = project(tmp_path)
    launcher = start(layout)
    assert launcher.stdout is not None
    launcher.stdout.readline()
    launcher.send_signal(signal.SIGKILL)
    launcher.communicate(timeout=60)
    (state,) = layout.resume.iterdir()

    write_params(layout.params, with_train(DDP, nproc=1))
    rerun = start(layout)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert err == f"train: dropping {state.relative_to(layout.root)}, the unfinished run of " \
                  "other params, data or code\n"
    assert "resuming" not in out


def test_bad_data_is_refused_before_the_workers_start(tmp_path):
    layout = project(tmp_path, with_train(DDP, nproc=1))
    finish(start(layout))
    before = hashes(layout)
    write_params(layout.params, DDP)
    (layout.prepared / "test_labels.npy").write_bytes(b"\x93NUMPY broken")
    failed = start(layout)
    out, err = failed.communicate(timeout=300)
    assert failed.returncode == 1 and out == ""
    assert err.count("\n") == 1 and "test_labels.npy: unreadable or corrupt" in err
    assert hashes(layout) == before


def test_nproc_beyond_the_cores_is_refused_before_anything_starts(tmp_path):
    layout = project(tmp_path, with_train(DDP, nproc=64))
    failed = start(layout)
    out, err = failed.communicate(timeout=120)
    assert failed.returncode == 1 and out == ""
    assert err.startswith("error: train.nproc is 64 but this machine has ") and \
        err.count("\n") == 1
    assert not layout.model_dir.exists() and not layout.resume.exists()

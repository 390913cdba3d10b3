"""mnist_dvc.commands.revisions: what changed since a revision, in a small temporary git repository;
a temporary worktree that goes afterwards."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from mnist_dvc.commands import revisions
from mnist_dvc.config.schema import dump_yaml, parse_yaml
from mnist_dvc.errors import StageError


@pytest.mark.parametrize(("status", "stale"), [
    ({}, []),
    ({"preprocess": [{"changed deps": {"data/raw": "deleted"}}],  # a fresh clone: no data/
      "train": [{"changed outs": {"data/model": "deleted"}}, "always changed"]}, []),
    ({"train": [{"changed deps": {"params.yaml": {"train.lr": "modified"}}}],
      "evaluate": [{"changed deps": {"data/model": "modified"}}]}, ["evaluate", "train"]),
    ({"train": [{"changed deps": {"stages/new.py": "new"}}],
      "evaluate": [{"changed command": True}]}, ["evaluate", "train"]),
])
def test_stale_stages_are_those_whose_inputs_were_edited(monkeypatch, status, stale):
    monkeypatch.setattr(revisions, "command", lambda *args, **kwargs: json.dumps(status))
    assert revisions.stale_stages() == stale


# --- git-side checks, in a small temporary git repository --------------------------------------
def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def git_repo(tmp_path, monkeypatch) -> Path:
    for key in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{key}_NAME", "test")
        monkeypatch.setenv(f"GIT_{key}_EMAIL", "test@example.com")
    root = tmp_path / "repo"
    (root / "stages").mkdir(parents=True)
    (root / "metrics").mkdir()
    pipeline = {"stages": {"train": {"cmd": "python -m stages.train",
                                     "deps": ["data/prepared", "stages/train.py", "stages/a.py"],
                                     "outs": ["data/model"],
                                     "metrics": [{"metrics/train.json": {"cache": False}}]},
                           "evaluate": {"cmd": "python -m stages.evaluate",
                                        "deps": ["stages/evaluate.py"],
                                        "plots": ["metrics/predictions.csv"]}}}
    (root / "dvc.yaml").write_text(dump_yaml(pipeline))
    for name in ("train.py", "a.py", "evaluate.py", "other.py"):
        (root / "stages" / name).write_text("x = 1\n")
    for name in ("train.json", "predictions.csv"):
        (root / "metrics" / name).write_text("{}\n")
    (root / "params.yaml").write_text("train:\n  lr: 0.1\n")
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    monkeypatch.chdir(root)
    return root


def test_changed_code_lists_the_pipelines_code_deps_that_differ(git_repo):
    (git_repo / "stages" / "train.py").write_text("x = 2\n")
    (git_repo / "stages" / "other.py").write_text("x = 2\n")  # not a dep: not listed
    git(git_repo, "commit", "-qam", "change train")
    (git_repo / "stages" / "evaluate.py").write_text("x = 3\n")
    pipeline = parse_yaml((git_repo / "dvc.yaml").read_text())
    pipeline["stages"]["evaluate"]["deps"].append("stages/new.py")
    (git_repo / "dvc.yaml").write_text(dump_yaml(pipeline))
    (git_repo / "stages" / "new.py").write_text("y = 1\n")  # untracked, and a dep now
    assert revisions.changed_code(git(git_repo, "rev-parse", "main~1").strip()) == [
        ("stages/evaluate.py", True), ("stages/new.py", True), ("stages/train.py", False)]
    assert revisions.changed_code("HEAD") == [("stages/evaluate.py", True),
                                           ("stages/new.py", True)]


def test_rerun_refuses_uncommitted_edits_but_not_rewritten_outputs(git_repo):
    (git_repo / "metrics" / "train.json").write_text('{"a": 1}\n')
    (git_repo / "metrics" / "predictions.csv").write_text("image\n")
    (git_repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    revisions.require_committed()  # what `dvc repro` on another machine leaves: fine
    (git_repo / "params.yaml").write_text("train:\n  lr: 0.2\n")
    with pytest.raises(StageError, match=r"uncommitted changes \(params.yaml\): commit them "
                                         r"\(or git stash them\)"):
        revisions.require_committed()


def test_a_worktree_holds_the_revision_and_goes_also_when_the_work_fails(git_repo):
    base = git(git_repo, "rev-parse", "HEAD").strip()
    (git_repo / "stages" / "train.py").write_text("x = 2\n")
    git(git_repo, "commit", "-qam", "change train")
    with pytest.raises(RuntimeError, match="the work failed"), \
            revisions.worktree(base, "test-") as tree:
        assert (tree / "stages" / "train.py").read_text() == "x = 1\n"  # the revision's
        assert git(tree, "rev-parse", "HEAD").strip() == base
        raise RuntimeError("the work failed")
    assert not tree.exists() and not tree.parent.exists()
    assert git(git_repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_a_revision_git_does_not_know_is_one_line_and_leaves_nothing(git_repo):
    missing = "0123456789abcdef0123456789abcdef01234567"
    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("unknown-rev-*"))
    refused = f"git worktree add: fatal: invalid reference: {missing}$"
    with pytest.raises(StageError, match=refused), revisions.worktree(missing, "unknown-rev-"):
        pass
    assert set(scratch.glob("unknown-rev-*")) == before  # its scratch directory went too
    assert git(git_repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_untracked_code_lists_the_deps_the_queue_would_miss(git_repo):
    assert revisions.untracked_code() == []
    pipeline = parse_yaml((git_repo / "dvc.yaml").read_text())
    pipeline["stages"]["train"]["deps"].append("stages/new.py")
    (git_repo / "dvc.yaml").write_text(dump_yaml(pipeline))
    (git_repo / "stages" / "new.py").write_text("y = 1\n")
    (git_repo / "stages" / "loose.py").write_text("z = 1\n")  # untracked, but no dep
    assert revisions.untracked_code() == ["stages/new.py"]


def test_experiments_are_those_of_the_checkouts_head_with_the_prefix(git_repo):
    head = git(git_repo, "rev-parse", "HEAD").strip()
    git(git_repo, "commit", "-q", "--allow-empty", "-m", "other")
    other = git(git_repo, "rev-parse", "HEAD").strip()
    for baseline, name in ((head, "review-head-100"), (head, "review-head-101"),
                           (head, "review-base-100"), (head, "my-exp"),
                           (other, "review-head-102")):
        git(git_repo, "update-ref", f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}", other)
    git(git_repo, "checkout", "-q", head)
    assert revisions.experiments(None, "review-head-") == {"review-head-100": other,
                                                          "review-head-101": other}
    assert revisions.experiments(None, "nothing-") == {}


@pytest.mark.parametrize(("status", "waiting"), [
    ("No experiment tasks in the queue.\n\nWorker status: 0 active, 0 idle\n", 0),
    ("Task     Name      Created    Status\n"
     "1a2b3c4  lr-0.02   02:28 AM   Queued\n"
     "5d6e7f8  bs-512    02:29 AM   Running\n"
     "9a8b7c6  seed-3    02:20 AM   Success\n"
     "0f1e2d3  seed-4    02:21 AM   Failed\n\nWorker status: 1 active, 0 idle\n", 2),
])
def test_review_refuses_to_run_someone_elses_queued_experiments(monkeypatch, status, waiting):
    monkeypatch.setattr(revisions, "command", lambda *args, **kwargs: status)
    if not waiting:
        revisions.require_empty_queue(None)
        return
    with pytest.raises(StageError, match=rf"queue holds {waiting} queued or running"):
        revisions.require_empty_queue(None)

"""Git and DVC plumbing for the commands beside the pipeline (review, the benchmark): run a
command, what a revision holds and what changed since it, a revision checked out in a
temporary worktree, and recomputed there."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mnist_dvc.config.schema import parse_yaml
from mnist_dvc.config.workspace import Layout
from mnist_dvc.errors import StageError


def command(*args: str, cwd: Path | None = None, failure: str | None = None) -> str:
    """Run a command for its output; a failure is one line: ours, or its last line of stderr."""
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        last = [line for line in result.stderr.splitlines() if line.strip()][-1:]
        raise StageError(failure or f"{' '.join(args[:3])}: {''.join(last) or 'failed'}")
    return result.stdout


def require_committed() -> None:
    """--rerun rebuilds the base from commits alone, and the report should compare commits
    too: refuse uncommitted edits (params, code). Outputs that ``dvc repro`` rewrote here
    (dvc.lock, metrics and plots) are what a rerun wants, e.g. in CI, so they may differ."""
    outputs = {"dvc.lock"}
    for stage in pipeline().values():
        outputs |= {next(iter(out)) if isinstance(out, dict) else out
                    for kind in ("outs", "metrics", "plots") for out in stage.get(kind, [])}
    changed = [line[3:] for line in command("git", "status", "--porcelain",
                                            "--untracked-files=no").splitlines()]
    if edits := [name for name in changed if name not in outputs]:
        names = ", ".join(edits[:3]) + (" ..." if edits[3:] else "")
        raise StageError(f"--rerun needs committed work, but tracked files have uncommitted "
                         f"changes ({names}): commit them (or git stash them) and review again")


def pipeline(text: bytes | None = None) -> dict[str, dict]:
    """The stages of dvc.yaml (this one, or ``text``)."""
    data = parse_yaml((read_bytes(Path("dvc.yaml")) or b"") if text is None else text) or {}
    return data.get("stages", {})


def read_bytes(path: Path) -> bytes | None:
    """A file as the workspace holds it; None where it is not (``git_show``'s counterpart)."""
    return path.read_bytes() if path.is_file() else None


def git_show(rev: str, path: str) -> bytes | None:
    """A file as committed at ``rev``; None where it is not."""
    result = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True)
    return result.stdout if result.returncode == 0 else None


def stale_stages() -> list[str]:
    """Stages whose params, code or data changed since their outputs were made. Missing
    outputs (a fresh clone has no data/) do not count: the committed metrics still agree."""
    def edited(tree: Any) -> bool:
        return any(map(edited, tree.values())) if isinstance(tree, dict) else \
            tree in ("modified", "new")

    status = json.loads(command("dvc", "status", "--json") or "{}")
    return sorted(stage for stage, changes in status.items() if any(
        isinstance(change, dict) and ("changed command" in change
                                      or edited(change.get("changed deps", {})))
        for change in changes))


def changed_code(sha: str) -> list[tuple[str, bool]]:
    """The code deps (*.py in dvc.yaml, here or at the base) that differ from the base, each
    with whether the workspace holds an uncommitted change to it."""
    deps: set[str] = set()
    for stages in (pipeline(), pipeline(git_show(sha, "dvc.yaml") or b"")):
        for stage in stages.values():
            deps |= {dep for dep in stage.get("deps", []) if str(dep).endswith(".py")}
    if not deps:
        return []
    git = ("git", "diff", "--name-only")
    changed = set(command(*git, sha, "--", *sorted(deps)).split())
    loose = set(command(*git, "HEAD", "--", *sorted(deps)).split()) | set(command(
        "git", "ls-files", "--others", "--exclude-standard", "--", *sorted(deps)).split())
    return [(name, name in loose) for name in sorted(changed | loose)]


@contextlib.contextmanager
def recomputed(sha: str) -> Iterator[str]:
    """A revision holding the base's outputs as this machine computes them.

    ``dvc repro`` runs in a temporary worktree of ``sha`` that uses this repository's DVC
    cache, so data and seen stages restore from the run-cache at once. The worktree's
    committed metrics go first: every number then comes from this machine's run-cache or a
    fresh run. ``git stash create`` makes the result a commit that no ref names, which git
    show and dvc plots diff read like any revision. The worktree goes, also on failure.
    """
    cache = Path(command("dvc", "cache", "dir").strip()).resolve()
    with worktree(sha, "review-base-") as tree:
        command("dvc", "config", "--local", "cache.dir", str(cache), cwd=tree)
        shutil.rmtree(Layout(tree).metrics, ignore_errors=True)
        print(f"review: dvc repro of {sha[:10]} in {tree}", file=sys.stderr, flush=True)
        if subprocess.run(["dvc", "repro"], cwd=tree, stdout=sys.stderr).returncode != 0:
            raise StageError("dvc repro of the base failed in its temporary worktree (its "
                             "output is above)")
        command("git", "add", "-A", cwd=tree)
        yield command("git", "-c", "user.name=mnist-dvc review", "-c",
                      "user.email=review@localhost", "stash", "create", cwd=tree).strip() or sha


@contextlib.contextmanager
def worktree(rev: str, prefix: str, repo: Path | None = None) -> Iterator[Path]:
    """A temporary detached git worktree of ``rev`` (of the repository at ``repo``, or
    here); it goes afterwards, also on failure."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    tree = scratch / "tree"
    try:
        command("git", "worktree", "add", "--detach", str(tree), rev, cwd=repo)
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=repo,
                       capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True)

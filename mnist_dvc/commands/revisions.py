"""Git and DVC plumbing for the commands beside the pipeline (review, the benchmark): run a
command, what a revision holds and what changed since it, a revision checked out in a
temporary worktree, recomputed there, and trained over several seeds through DVC's queue."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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


def git_show(rev: str, path: str, cwd: Path | None = None) -> bytes | None:
    """A file as committed at ``rev``; None where it is not."""
    result = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=cwd, capture_output=True)
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


def untracked_code() -> list[str]:
    """Code deps of dvc.yaml that git does not track: DVC's queue copies tracked files only."""
    deps = sorted({str(dep) for stage in pipeline().values() for dep in stage.get("deps", [])
                   if str(dep).endswith(".py")})
    return command("git", "ls-files", "--others", "--exclude-standard", "--", *deps).split() \
        if deps else []


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
    with cache_sharing_worktree(sha, "review-base-") as tree:
        shutil.rmtree(Layout(tree).metrics, ignore_errors=True)
        print(f"review: dvc repro of {sha[:10]} in {tree}", file=sys.stderr, flush=True)
        if subprocess.run(["dvc", "repro"], cwd=tree, stdout=sys.stderr).returncode != 0:
            raise StageError("dvc repro of the base failed in its temporary worktree (its "
                             "output is above)")
        command("git", "add", "-A", cwd=tree)
        yield command("git", "-c", "user.name=mnist-dvc review", "-c",
                      "user.email=review@localhost", "stash", "create", cwd=tree).strip() or sha


@contextlib.contextmanager
def cache_sharing_worktree(rev: str, prefix: str) -> Iterator[Path]:
    """A temporary worktree of ``rev`` whose DVC cache (run-cache included) is this
    repository's: what either has seen, the other restores."""
    cache = Path(command("dvc", "cache", "dir").strip()).resolve()
    with worktree(rev, prefix) as tree:
        command("dvc", "config", "--local", "cache.dir", str(cache), cwd=tree)
        yield tree


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


SEED_EXPERIMENT_PREFIX = "review-"  # review's own experiments: review-<side>-<seed>
RESTORED = re.compile(r"Stage '([^']+)' is cached - skipping run")


@dataclass(frozen=True)
class SeedRuns:
    """The files each seed's run wrote (None: absent), and how many train stages DVC
    restored from its run-cache instead of running."""

    files: dict[int, dict[str, bytes | None]]
    restored: int


def seed_runs(side: str, seeds: Sequence[int], overrides: Sequence[str], jobs: int,
              files: Sequence[str], cwd: Path | None = None) -> SeedRuns:
    """Run the pipeline of the checkout at ``cwd`` (here: the workspace, uncommitted changes
    included) once per seed through DVC's queue, ``jobs`` at a time, with ``-S`` overrides.

    DVC restores every stage it has seen from the run-cache, so seeds run before come back
    without training. The experiments are named ``review-<side>-<seed>``; any of that name
    left by an interrupted review go first, and all go once ``files`` are read from them
    (the run-cache keeps the outputs: running them again restores them).
    """
    require_empty_queue(cwd)
    names = {seed: f"{SEED_EXPERIMENT_PREFIX}{side}-{seed}" for seed in seeds}
    remove_experiments(experiments(cwd, f"{SEED_EXPERIMENT_PREFIX}{side}-"), cwd)
    for seed, name in names.items():
        settings = [arg for value in (f"train.seed={seed}", *overrides) for arg in ("-S", value)]
        command("dvc", "exp", "run", "--queue", "--name", name, *settings, cwd=cwd)
    print(f"review: {side}: seeds {', '.join(map(str, seeds))} through dvc's queue, {jobs} at "
          "a time", file=sys.stderr, flush=True)
    process = subprocess.Popen(["dvc", "exp", "run", "--run-all", "-j", str(jobs)], cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    restored = 0
    assert process.stdout is not None
    for line in process.stdout:  # shown as it comes, for CI logs; counted for the report
        sys.stderr.write(line)
        restored += any(stage == "train" for stage in RESTORED.findall(line))
    process.wait()
    found = experiments(cwd, f"{SEED_EXPERIMENT_PREFIX}{side}-")
    read = {seed: {path: git_show(found[name], path, cwd) for path in files}
            for seed, name in names.items() if name in found}
    remove_experiments(found, cwd)
    if missing := [str(seed) for seed in seeds if seed not in read]:
        subprocess.run(["dvc", "queue", "remove", *(names[int(seed)] for seed in missing)],
                       cwd=cwd, capture_output=True)  # the failed tasks' records
        raise StageError(f"the {side} side's run of seed(s) {', '.join(missing)} failed (its "
                         "output is above)")
    return SeedRuns(read, restored)


def experiments(cwd: Path | None, prefix: str) -> dict[str, str]:
    """The experiments of the checkout's HEAD whose names start with ``prefix``: name ->
    commit (DVC keeps them as refs/exps/<2 hex>/<rest of HEAD's hash>/<name>)."""
    head = command("git", "rev-parse", "HEAD", cwd=cwd).strip()
    refs = command("git", "for-each-ref", "--format=%(objectname) %(refname)",
                   f"refs/exps/{head[:2]}/{head[2:]}/", cwd=cwd)
    found = {}
    for line in refs.splitlines():
        commit, ref = line.split(" ", 1)
        name = ref.rsplit("/", 1)[-1]
        if name.startswith(prefix):
            found[name] = commit
    return found


def remove_experiments(names: dict[str, str], cwd: Path | None) -> None:
    if listed := sorted(names):
        command("dvc", "exp", "remove", *listed, cwd=cwd)


def require_empty_queue(cwd: Path | None) -> None:
    """``dvc exp run --run-all`` runs everything queued: refuse rather than run someone
    else's experiments."""
    waiting = [line for line in command("dvc", "queue", "status", cwd=cwd).splitlines()
               if re.search(r"\b(Queued|Running)\b", line)]
    if waiting:
        raise StageError(f"DVC's experiment queue holds {len(waiting)} queued or running "
                         "experiment(s) (dvc queue status): let them finish or remove them "
                         "(dvc queue remove --queued, dvc queue kill NAME) and review again")

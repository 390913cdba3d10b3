"""CONTRIBUTING.md's recipes, done: add a stage, change one stage's config; each touches
nothing another stage depends on, so DVC reruns nothing else.

``add_stage`` writes the whole of a new stage, ``stats``, as the recipe says: a thin
``stages/stats.py``, its params and its output path in ``mnist_dvc/config/stats.py``, its
section in params.yaml and its entry in dvc.yaml, with the code deps ``code_files`` gives.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from mnist_dvc.code_deps import code_files
from mnist_dvc.config.params import Params
from mnist_dvc.config.schema import parse_yaml
from tests.conftest import PIPELINE, REPO_ROOT
from tests.dvc_repo import DvcRepo

NEW_CONFIG = '''\
"""The stats stage's params (``stats.*``) and its output."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mnist_dvc.config.workspace import Layout


@dataclass(frozen=True)
class StatsParams:
    splits: tuple[Literal["train", "test"], ...] = ("train", "test")


@dataclass(frozen=True)
class StatsConfig:
    """The params.yaml sections the stats stage reads."""

    stats: StatsParams = field(default_factory=StatsParams)


def label_counts(layout: Layout) -> Path:
    """How many images of each digit each split holds."""
    return layout.root / "metrics" / "label_counts.json"
'''

NEW_STAGE = '''\
"""Stage stats: count the images of each digit in the prepared splits."""

from __future__ import annotations

import numpy as np

from mnist_dvc.config.schema import load_config
from mnist_dvc.config.stats import StatsConfig, label_counts
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.prepared import read_split
from mnist_dvc.errors import run_stage
from mnist_dvc.files import write_json_atomic


def main(layout: Layout = Layout()) -> None:
    params = load_config(layout.params, StatsConfig).stats
    write_json_atomic(label_counts(layout), {
        split: np.bincount(read_split(layout.prepared, split).labels, minlength=10).tolist()
        for split in params.splits})


if __name__ == "__main__":
    run_stage(main, __doc__)
'''


def add_stage(root: Path) -> None:
    """The stats stage, added to the project at ``root`` by the recipe."""
    (root / "mnist_dvc" / "config" / "stats.py").write_text(NEW_CONFIG)
    (root / "stages" / "stats.py").write_text(NEW_STAGE)
    with (root / "params.yaml").open("a") as params:
        params.write("stats:\n  splits:\n  - train\n  - test\n")
    deps = "".join(f"      - {path}\n" for path in
                   ["data/prepared", *code_files("stages.stats", root)])
    entry = (f"  stats:\n    cmd: python -m stages.stats\n    deps:\n{deps}"
             "    params:\n      - stats\n"
             "    metrics:\n      - metrics/label_counts.json:\n          cache: false\n\n")
    dvc_yaml = (root / "dvc.yaml").read_text()
    (root / "dvc.yaml").write_text(dvc_yaml.replace("\nartifacts:", f"\n{entry}artifacts:", 1))


def copy_of_the_code(root: Path) -> Path:
    for name in ("stages", "mnist_dvc"):
        shutil.copytree(REPO_ROOT / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO_ROOT / name, root / name)
    return root


def test_adding_a_stage_changes_nothing_another_stage_depends_on(project, tmp_path):
    root = copy_of_the_code(tmp_path / "repo")
    add_stage(root)

    after = parse_yaml((root / "dvc.yaml").read_text())["stages"]
    assert list(after) == [*PIPELINE, "stats"]
    for stage, spec in PIPELINE.items():
        assert after[stage] == spec
        deps = code_files(f"stages.{stage}", root)
        assert deps == code_files(f"stages.{stage}")
        assert all((root / path).read_bytes() == (REPO_ROOT / path).read_bytes()
                   for path in deps)
    params = parse_yaml((root / "params.yaml").read_text())
    assert params.pop("stats") == {"splits": ["train", "test"]}
    assert params == parse_yaml((REPO_ROOT / "params.yaml").read_text())
    assert "mnist_dvc/config/stats.py" in after["stats"]["deps"]

    shutil.copytree(project.prepared, root / "data" / "prepared")
    done = subprocess.run([sys.executable, "-m", "stages.stats"], cwd=root, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = json.loads((root / "metrics" / "label_counts.json").read_text())
    assert [sum(counts[split]) for split in ("train", "test")] == [512, 256]  # the project's


def test_adding_a_param_is_a_field_in_the_stages_config_and_a_line_in_params_yaml(tmp_path):
    root = copy_of_the_code(tmp_path / "repo")
    add_a_key(root, "evaluate")
    read = [sys.executable, "-c", "from mnist_dvc.config.evaluate import EvaluateConfig; "
            "from mnist_dvc.config.schema import load_config; "
            "print(load_config('params.yaml', EvaluateConfig).evaluate.note)"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(read, cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout == "added\n", done.stderr

    shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")  # the field alone
    done = subprocess.run(read, cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].endswith(
        "ParamsError: params.yaml: missing key 'evaluate.note'")


def test_every_param_has_a_row_in_docs_parameters():
    keys = [f"{section}.{f.name}" for section, params in typing.get_type_hints(Params).items()
            for f in dataclasses.fields(params)]
    assert len(keys) > len(typing.get_type_hints(Params))
    documented = (REPO_ROOT / "docs" / "parameters.md").read_text()
    assert [key for key in keys if f"| `{key}` |" not in documented] == []


# --- with DVC itself -------------------------------------------------------------------------

def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


def add_a_key(root: Path, stage: str) -> None:
    """A new key ``<stage>.note`` in the stage's config module and in params.yaml."""
    config = root / "mnist_dvc" / "config" / f"{stage}.py"
    text = config.read_text()
    section = f"class {stage.capitalize()}Params:\n"
    config.write_text(text.replace(section, f'{section}    note: str = "added"\n', 1))
    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params.replace(f"\n{stage}:\n", f"\n{stage}:\n"
                                                                      "  note: added\n", 1))


def run_cache(repo: DvcRepo) -> set[Path]:
    return set((repo.root / ".dvc" / "cache" / "runs").rglob("*"))


def back_to_baseline(repo: DvcRepo, seen_runs: set[Path], *added: str) -> None:
    """The pipeline's repository as the test found it, its run-cache included."""
    repo.git("reset", "-q", "--hard")  # dvc repro stages dvc.lock
    for path in added:
        (repo.root / path).unlink()
    for path in sorted(run_cache(repo) - seen_runs, reverse=True):  # files before their dirs
        path.unlink() if path.is_file() else path.rmdir()
    assert run_cache(repo) == seen_runs
    repo.dvc("checkout", "--force")
    assert repo.git("status", "--porcelain").stdout == ""
    assert "up to date" in repo.dvc("status").stdout


@pytest.mark.e2e
@pytest.mark.parametrize("stage", ["preprocess", "evaluate"])
def test_a_key_added_to_one_stages_config_reruns_that_stage_and_no_earlier_one(pipeline, stage):
    repo, _ = pipeline
    seen_runs = run_cache(repo)
    add_a_key(repo.root, stage)
    assert set(json.loads(repo.dvc("status", "--json").stdout)) == {stage}

    ran = stages_run(repo.dvc("repro").stdout)
    later = list(PIPELINE)[list(PIPELINE).index(stage):]
    assert stage in ran and ran <= set(later)
    back_to_baseline(repo, seen_runs)


@pytest.mark.e2e
def test_an_added_stage_is_the_only_one_dvc_runs(pipeline):
    repo, _ = pipeline
    seen_runs = run_cache(repo)
    add_stage(repo.root)
    assert set(json.loads(repo.dvc("status", "--json").stdout)) == {"stats"}

    assert stages_run(repo.dvc("repro").stdout) == {"stats"}
    counts = json.loads((repo.root / "metrics" / "label_counts.json").read_text())
    assert [sum(counts[split]) for split in ("train", "test")] == [60000, 10000]
    back_to_baseline(repo, seen_runs, "stages/stats.py", "mnist_dvc/config/stats.py",
                     "metrics/label_counts.json")

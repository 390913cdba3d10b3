"""dvc.yaml stays true to the code: each stage depends on exactly the modules it imports and
the params sections it reads, and declares exactly the files it writes (found by running it)."""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import subprocess
from pathlib import Path

import pytest

from mnist_dvc.code_deps import code_files, imported_modules
from mnist_dvc.config.params import Params
from mnist_dvc.config.schema import parse_yaml
from mnist_dvc.config.workspace import Layout
from mnist_dvc.records import stage_config
from tests.conftest import PIPELINE, REPO_ROOT


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_stage_runs_its_own_module_and_imports_no_other_stage(stage):
    assert PIPELINE[stage]["cmd"] == f"python -m stages.{stage}"
    stages = {f"stages.{name}" for name in PIPELINE}
    assert imported_modules(f"stages.{stage}") & stages == {f"stages.{stage}"}


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_code_deps_are_exactly_the_imported_modules(stage):
    declared = [d for d in PIPELINE[stage]["deps"] if d.endswith(".py")]
    imported = code_files(f"stages.{stage}")
    assert declared == imported, f"dvc.yaml: stage {stage}'s code deps should be\n" + \
        "\n".join(f"      - {path}" for path in imported)


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_declared_params_are_the_sections_the_stage_reads(stage):
    sections = [f.name for f in dataclasses.fields(stage_config(stage))]
    assert sorted(PIPELINE[stage]["params"]) == sorted(sections)


def test_the_stage_configs_cover_params_yaml_once():
    owned = [f.name for stage in PIPELINE for f in dataclasses.fields(stage_config(stage))]
    assert sorted(owned) == sorted(f.name for f in dataclasses.fields(Params))


def declared_files(spec: dict, kind: str) -> set[str]:
    return {next(iter(entry)) if isinstance(entry, dict) else entry
            for entry in spec.get(kind, [])}


def declared_outputs(spec: dict) -> set[str]:
    return set().union(*(declared_files(spec, kind) for kind in ("outs", "metrics", "plots")))


def data_deps(spec: dict) -> list[str]:
    return [dep for dep in spec["deps"] if not dep.endswith(".py")]


def test_each_data_dep_is_the_output_of_an_earlier_stage():
    produced: set[str] = set()
    for stage, spec in PIPELINE.items():
        assert set(data_deps(spec)) <= produced, stage
        produced |= declared_files(spec, "outs")


def test_every_stage_is_run_cacheable():
    """DVC never run-caches a stage with a persist output, or with a cache: false output
    that is neither a metric nor a plot (dvc/stage/cache.py, dvc/stage/__init__.py)."""
    for spec in PIPELINE.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in spec.get(kind, []):
                options = next(iter(entry.values())) if isinstance(entry, dict) else {}
                assert not (options or {}).get("persist"), entry
                if kind == "outs":
                    assert (options or {}).get("cache", True), entry


def files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``, relative: (modification time, size)."""
    return {str(path.relative_to(root)): (path.stat().st_mtime_ns, path.stat().st_size)
            for path in root.rglob("*") if path.is_file()}


def owner(path: str, outputs: set[str]) -> str | None:
    """The declared output that ``path`` is or lies in."""
    return next((out for out in outputs if path == out or path.startswith(f"{out}/")), None)


def check_nothing_undeclared(written: set[str], outputs: set[str], scope: Path,
                             root: Path) -> None:
    """Every file in ``written`` (relative to ``root``) lies in a declared output; an empty
    directory under ``scope`` outside them (the resume state's) is ignored by git and DVC."""
    assert {path for path in written if owner(path, outputs) is None} == set(), \
        "written but not declared in dvc.yaml"
    for directory in (d for d in scope.rglob("*") if d.is_dir() and not any(d.iterdir())):
        relative = str(directory.relative_to(root))
        if owner(relative, outputs) is None:
            assert f"/{relative}/" in (REPO_ROOT / ".dvcignore").read_text().split()
            assert subprocess.run(["git", "check-ignore", "-q", f"{relative}/x"],
                                  cwd=REPO_ROOT).returncode == 0, relative


SYNTHETIC_STAGES = ("train", "evaluate")  # download and preprocess need the real MNIST bytes


@pytest.mark.parametrize("stage", SYNTHETIC_STAGES)
def test_a_stage_given_only_its_declared_deps_writes_exactly_its_declared_outputs(
    stage, project, tmp_path,
):
    for earlier in list(PIPELINE)[:list(PIPELINE).index(stage)]:
        if earlier in SYNTHETIC_STAGES:
            importlib.import_module(f"stages.{earlier}").main(project)
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    shutil.copy(project.params, sandbox / "params.yaml")
    for dep in data_deps(PIPELINE[stage]):
        shutil.copytree(project.root / dep, sandbox / dep)
    before = files(sandbox)

    importlib.import_module(f"stages.{stage}").main(Layout(sandbox))

    written = {path for path, stamp in files(sandbox).items() if before.get(path) != stamp}
    outputs = declared_outputs(PIPELINE[stage])
    check_nothing_undeclared(written, outputs, sandbox, sandbox)
    assert {owner(path, outputs) for path in written} == outputs, "declared but not written"


@pytest.mark.e2e
def test_the_pipeline_writes_exactly_what_dvc_yaml_declares(pipeline):
    """The real pipeline, after ``dvc repro`` (the shared e2e run): what the run changed in
    git (the fixture committed it) and everything under data/ (git-ignored)."""
    repo, _ = pipeline
    outputs = set().union(*(declared_outputs(spec) for spec in PIPELINE.values()))
    baseline = repo.git("log", "-1", "--format=%H", "--grep=^baseline$").stdout.strip()
    committed = set(repo.git("diff", "--name-only", f"{baseline}~1", baseline).stdout.split())
    on_disk = {str(Path("data") / path) for path in files(repo.root / "data")}
    check_nothing_undeclared((committed - {"dvc.lock"}) | on_disk, outputs, repo.root / "data",
                             repo.root)
    assert all((repo.root / path).exists() for path in outputs)


def test_the_model_artifact_points_at_the_model():
    artifacts = parse_yaml((REPO_ROOT / "dvc.yaml").read_text())["artifacts"]
    assert artifacts["mnist-cnn"]["path"] == str(Layout(Path()).model)
    assert artifacts["mnist-cnn"]["type"] == "model"


def test_no_curve_is_drawn_twice():
    """DVC draws every stage plot on its own, and again each top-level definition that reads
    the same file: between them, each (file, column) is drawn once."""
    drawn: list[tuple[str, str]] = []
    for spec in PIPELINE.values():
        for path, options in entries(spec.get("plots", [])):
            drawn += [(path, column) for column in as_list(options.get("y"))]
    definitions = parse_yaml((REPO_ROOT / "dvc.yaml").read_text()).get("plots", [])
    for name, options in entries(definitions):
        y = options.get("y", {})
        for path, columns in (y.items() if isinstance(y, dict) else [(name, y)]):
            drawn += [(path, column) for column in as_list(columns)]
    assert len(drawn) == len(set(drawn)), sorted(drawn)
    assert ("metrics/train_history.csv", "test_acc") in drawn


def entries(listed: list) -> list[tuple[str, dict]]:
    """dvc.yaml's list entries, each a bare path or {path: options}."""
    pairs = [(entry, None) if isinstance(entry, str) else next(iter(entry.items()))
             for entry in listed]
    return [(path, options or {}) for path, options in pairs]


def as_list(value: object) -> list:
    return [] if value is None else [value] if isinstance(value, str) else list(value)

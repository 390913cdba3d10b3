"""dvc.yaml stays true to the code: each stage depends on exactly the modules it imports and
declares params keys that exist."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mnist_dvc.code_deps import code_files, imported_modules
from mnist_dvc.config.params import Params
from mnist_dvc.config.schema import parse_yaml
from mnist_dvc.config.workspace import Layout
from tests.conftest import PIPELINE, REPO_ROOT, stage_config


def test_stages_run_in_pipeline_order():
    assert list(PIPELINE) == ["download", "preprocess", "train", "evaluate"]


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_stage_runs_its_own_module_and_imports_no_other_stage(stage):
    assert PIPELINE[stage]["cmd"] == f"python -m stages.{stage}"
    stages = {f"stages.{name}" for name in PIPELINE}
    assert imported_modules(f"stages.{stage}") & stages == {f"stages.{stage}"}


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_code_deps_are_exactly_the_imported_modules(stage):
    declared = [d for d in PIPELINE[stage]["deps"] if d.endswith(".py")]
    assert declared == code_files(f"stages.{stage}")


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


def test_data_flows_through_declared_outs_and_deps():
    outs = {stage: declared_files(spec, "outs") for stage, spec in PIPELINE.items()}
    assert outs == {"download": {"data/raw"}, "preprocess": {"data/prepared"},
                    "train": {"data/model"}, "evaluate": set()}
    assert "data/raw" in PIPELINE["preprocess"]["deps"]
    assert "data/prepared" in PIPELINE["train"]["deps"]
    assert {"data/prepared", "data/model"} <= set(PIPELINE["evaluate"]["deps"])


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


def test_the_layout_matches_dvc_yaml():
    layout = Layout(Path())
    declared = set()
    for spec in PIPELINE.values():
        for kind in ("outs", "metrics", "plots"):
            declared |= declared_files(spec, kind)
    written = {layout.raw, layout.prepared, layout.model_dir, layout.train_metrics,
               layout.train_history, layout.train_steps, layout.eval_metrics,
               layout.predictions, layout.per_class, layout.misclassified}
    assert {str(path) for path in written} == declared
    for path in (layout.model, layout.checkpoint):
        assert path.parent == layout.model_dir
    # the unfinished-run state is no output, and both git and DVC ignore it
    assert not any(str(layout.resume).startswith(d) for d in declared)
    assert f"/{layout.resume}/" in (REPO_ROOT / ".dvcignore").read_text().split()
    assert "/data/" in (REPO_ROOT / ".gitignore").read_text().split()


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

"""dvc.yaml stays true to the code: each stage depends on exactly the modules it imports and
declares params keys that exist."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

from stages.params import Params
from tests.conftest import REPO_ROOT

PIPELINE = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def imported_stage_modules(module: str) -> set[str]:
    """``module`` and every ``stages.*`` module it imports, transitively."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse((REPO_ROOT / "stages" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages."):
                pending.append(node.module.removeprefix("stages."))
    return seen


def test_stages_run_in_pipeline_order():
    assert list(PIPELINE) == ["download", "preprocess", "train", "evaluate"]


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_stage_runs_its_own_module_and_imports_no_other_stage(stage):
    assert PIPELINE[stage]["cmd"] == f"python -m stages.{stage}"
    assert imported_stage_modules(stage) & set(PIPELINE) == {stage}


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_code_deps_are_exactly_the_imported_modules(stage):
    declared = {d for d in PIPELINE[stage]["deps"] if d.startswith("stages/")}
    expected = {f"stages/{m}.py" for m in imported_stage_modules(stage)} - {"stages/__init__.py"}
    assert declared == expected


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_declared_params_exist_in_the_schema(stage):
    defaults = dataclasses.asdict(Params())
    for key in PIPELINE[stage]["params"]:
        section, _, name = key.partition(".")
        assert section in defaults, key
        assert not name or name in defaults[section], key


def test_data_flows_through_declared_outs_and_deps():
    outs = {stage: {next(iter(o)) if isinstance(o, dict) else o for o in spec.get("outs", [])}
            for stage, spec in PIPELINE.items()}
    assert "data/raw" in outs["download"] and "data/raw" in PIPELINE["preprocess"]["deps"]
    assert "data/prepared" in outs["preprocess"]
    assert {"data/prepared"} <= set(PIPELINE["train"]["deps"])
    assert {"data/model", "data/checkpoints"} <= outs["train"]
    assert {"data/prepared", "data/model"} <= set(PIPELINE["evaluate"]["deps"])


def test_paths_module_matches_dvc_yaml():
    from stages import paths

    declared = set()
    for spec in PIPELINE.values():
        for entry in spec.get("outs", []) + spec.get("metrics", []):
            declared.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    for value in vars(paths).values():
        if isinstance(value, Path):
            assert any(str(value) == d or str(value).startswith(d + "/") for d in declared), value

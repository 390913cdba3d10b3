"""mnist_dvc/records.py: a stage whose params or code changed while it ran fails, so DVC
records nothing for it, and leaves no output that reads as a finished run."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from mnist_dvc import errors, records
from mnist_dvc.config.params import parse_params
from mnist_dvc.config.schema import parse_yaml
from mnist_dvc.config.workspace import Layout
from mnist_dvc.errors import StageError, run_stage
from mnist_dvc.files import file_digest
from tests.conftest import PIPELINE, REPO_ROOT, TINY, make_project
from tests.dvc_repo import DvcRepo
from tests.test_e2e import back_to_baseline, output_hashes, ran


def write_params(root: Path, **sections: dict) -> Path:
    """params.yaml holding ``sections`` (each a mapping), as YAML in JSON syntax."""
    path = root / "params.yaml"
    path.write_text(json.dumps(sections))
    return path


PARAMS = {"train": {"lr": 0.03, "seed": 1}, "model": {"net": "compact"},
          "evaluate": {"batch_size": 1000}}


def changed_after(stage: str, root: Path, **edits: dict) -> list[str]:
    """What the check names once ``edits`` (section -> keys) are applied to PARAMS."""
    write_params(root, **PARAMS)
    before = records.take_snapshot(stage, root)
    after_params = {name: {**keys, **edits.get(name, {})} for name, keys in PARAMS.items()}
    write_params(root, **after_params)
    return records.changes(before, records.retake(before, stage, root))


# --- what a snapshot holds, and what counts as a change -----------------------------------

def test_unchanged_inputs_are_no_change(tmp_path):
    assert changed_after("train", tmp_path) == []


def test_a_changed_key_of_the_stage_is_named_with_its_section(tmp_path):
    assert changed_after("train", tmp_path, train={"lr": 0.014}) == ["params.yaml train.lr"]
    assert changed_after("train", tmp_path, model={"net": "seed"}) == ["params.yaml model.net"]
    assert changed_after("train", tmp_path, train={"lr": 0.014, "seed": 2}) == [
        "params.yaml train.lr", "params.yaml train.seed"]


def test_another_stages_section_and_the_files_layout_do_not_count(tmp_path):
    assert changed_after("train", tmp_path, evaluate={"batch_size": 10}) == []
    assert changed_after("evaluate", tmp_path, evaluate={"batch_size": 10}) == [
        "params.yaml evaluate.batch_size"]
    path = write_params(tmp_path, **PARAMS)
    before = records.take_snapshot("train", tmp_path)
    path.write_text("# a comment\n" + _as_block_yaml(PARAMS))
    assert records.changes(before, records.retake(before, "train", tmp_path)) == []


def _as_block_yaml(sections: dict) -> str:
    return "".join(f"{name}:\n" + "".join(f"  {key}: {json.dumps(value)}   # why\n"
                                          for key, value in keys.items())
                   for name, keys in sections.items())


def test_values_compare_by_type_as_dvc_lock_would_spell_them():
    assert records.changed_keys({"a": 1}, {"a": 1.0}) == ["a"]
    assert records.changed_keys({"a": True}, {"a": 1}) == ["a"]
    assert records.changed_keys({"a": [1, 2]}, {"a": [2, 1]}) == ["a"]
    assert records.changed_keys({"a": [1, True]}, {"a": [1, 1]}) == ["a"]
    assert records.changed_keys({"a": {"b": 1}}, {"a": {}}) == ["a.b"]
    assert records.changed_keys({"a": {}}, {"a": {"c": None}}) == []  # absent reads as null
    assert records.changed_keys({"a": {"b": 1}}, {"a": {"c": 2}}) == ["a.b", "a.c"]
    assert records.changed_keys({"a": float("nan")}, {"a": float("nan")}) == []
    assert records.changed_keys({"a": 0.013}, {"a": 1.3e-2}) == []


def test_params_yaml_turning_unreadable_or_missing_is_a_change(tmp_path):
    path = write_params(tmp_path, **PARAMS)
    before = records.take_snapshot("train", tmp_path)
    path.write_text("train: [unclosed\n")
    assert records.changes(before, records.retake(before, "train", tmp_path)) == ["params.yaml"]
    path.unlink()
    assert records.changes(before, records.retake(before, "train", tmp_path)) == ["params.yaml"]


def test_an_unreadable_params_yaml_at_the_start_is_left_to_the_stage(tmp_path):
    before = records.take_snapshot("train", tmp_path)  # no params.yaml: the stage says so
    assert before.params is None
    assert records.changes(before, records.retake(before, "train", tmp_path)) == []


def fake_code_tree(root: Path) -> Path:
    """``stages/fake.py`` importing ``mnist_dvc/helper.py``; no config, so no params."""
    (root / "stages").mkdir(parents=True)
    (root / "mnist_dvc").mkdir()
    (root / "stages" / "fake.py").write_text("from mnist_dvc import helper\n")
    (root / "mnist_dvc" / "helper.py").write_text("VALUE = 1\n")
    return root


def test_a_code_file_edited_or_removed_is_named(tmp_path):
    code = fake_code_tree(tmp_path / "code")
    before = records.take_snapshot("fake", tmp_path, code)
    assert sorted(before.code) == ["mnist_dvc/helper.py", "stages/fake.py"]
    assert records.changes(before, records.retake(before, "fake", tmp_path, code)) == []
    (code / "mnist_dvc" / "helper.py").write_text("VALUE = 2\n")
    assert records.changes(before, records.retake(before, "fake", tmp_path, code)) == [
        "mnist_dvc/helper.py"]
    (code / "stages" / "fake.py").unlink()
    assert records.changes(before, records.retake(before, "fake", tmp_path, code)) == [
        "mnist_dvc/helper.py", "stages/fake.py"]


def test_the_code_snapshot_is_the_code_deps_dvc_yaml_declares():
    for stage, spec in PIPELINE.items():
        declared = [dep for dep in spec["deps"] if dep.endswith(".py")]
        assert list(records.take_snapshot(stage, REPO_ROOT).code) == declared


def test_the_sections_follow_the_config_convention(monkeypatch):
    for stage, spec in PIPELINE.items():
        assert sorted(records.stage_sections(stage)) == sorted(spec["params"])
    assert records.stage_sections("no_such_stage") == ()

    @dataclasses.dataclass
    class ExportOnnxConfig:  # a stage named in snake case
        export: dict
        model: dict

    module = types.ModuleType("mnist_dvc.config.export_onnx")
    module.ExportOnnxConfig = ExportOnnxConfig  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mnist_dvc.config.export_onnx", module)
    assert records.stage_sections("export_onnx") == ("export", "model")


def test_the_declared_outputs_are_the_stages_outs_metrics_and_plots(tmp_path):
    assert records.declared_outputs("train", tmp_path) == []  # no dvc.yaml: no DVC record
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: python -m stages.train\n    outs:\n    - data/model\n"
        "    metrics:\n    - metrics/train.json:\n        cache: false\n"
        "    plots:\n    - metrics/curve.csv:\n        x: epoch\n"
        "  evaluate:\n    cmd: python -m stages.evaluate\n    outs:\n    - data/other\n")
    assert records.declared_outputs("train", tmp_path) == [
        tmp_path / "data/model", tmp_path / "metrics/train.json", tmp_path / "metrics/curve.csv"]


# --- the guard around a stage's main ------------------------------------------------------

def project_with_outputs(root: Path) -> Layout:
    """params.yaml, dvc.yaml and a finished-looking output of every stage."""
    layout = Layout(root)
    write_params(root, **PARAMS)
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    for path in (layout.model, layout.train_metrics, layout.train_history, layout.eval_metrics):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("finished\n")
    return layout


def test_a_stage_whose_params_changed_fails_in_one_line_and_removes_its_outputs(
        tmp_path, capsys):
    layout = project_with_outputs(tmp_path)

    def main() -> None:  # a run during which another terminal set train.lr
        write_params(tmp_path, **{**PARAMS, "train": {"lr": 0.014, "seed": 1}})

    with pytest.raises(SystemExit) as info:
        run_stage(records.guarded("train", main, tmp_path))
    assert info.value.code == 1
    assert capsys.readouterr().err == (
        "error: params.yaml train.lr changed while train ran: its outputs are removed, not "
        "recorded; rerun (docs/concurrent-runs.md)\n")
    assert not layout.model_dir.exists()
    assert not layout.train_metrics.exists() and not layout.train_history.exists()
    assert layout.eval_metrics.read_text() == "finished\n"  # another stage's output


def test_a_stage_whose_code_changed_fails_naming_the_file(tmp_path):
    code = fake_code_tree(tmp_path / "code")

    def main() -> None:
        (code / "mnist_dvc" / "helper.py").write_text("VALUE = 2  # saved by an editor\n")

    with pytest.raises(StageError, match=r"^mnist_dvc/helper.py changed while fake ran: "):
        records.guarded("fake", main, tmp_path, code)()


def test_a_stage_whose_inputs_stayed_keeps_its_outputs(tmp_path):
    layout = project_with_outputs(tmp_path)

    def main() -> None:  # meanwhile, another stage's section changes
        write_params(tmp_path, **{**PARAMS, "evaluate": {"batch_size": 10}})

    records.guarded("train", main, tmp_path)()
    assert layout.model.read_text() == "finished\n"


def test_a_failed_main_is_reported_as_it_is(tmp_path):
    project_with_outputs(tmp_path)

    def main() -> None:
        write_params(tmp_path, **{**PARAMS, "train": {"lr": 0.014, "seed": 1}})
        raise StageError("data/prepared: not found")

    with pytest.raises(StageError, match=r"^data/prepared: not found$"):
        records.guarded("train", main, tmp_path)()


@pytest.mark.parametrize(("main_module", "torchrun", "stage"), [
    ("stages.train", False, "train"),
    ("stages.train", True, None),  # a torchrun worker: the launcher checks
    ("mnist_dvc", False, None),  # the mnist-dvc command
    ("benchmarks.train_speed", False, None),
])
def test_only_a_stage_process_is_guarded(monkeypatch, main_module, torchrun, stage):
    monkeypatch.setattr(sys.modules["__main__"], "__spec__",
                        types.SimpleNamespace(name=main_module), raising=False)
    if torchrun:
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run")
    else:
        monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert errors._stage_run_by_dvc() == stage


# --- a real train process, its params rewritten while it runs ---------------------------

TRAIN = "import runpy; runpy.run_module('stages.train', run_name='__main__', alter_sys=True)"


@pytest.mark.processes
def test_a_train_process_whose_params_change_mid_run_leaves_nothing_finished(tmp_path):
    layout = make_project(tmp_path / "project", parse_params(TINY))
    shutil.copy(REPO_ROOT / "dvc.yaml", layout.root / "dvc.yaml")
    release = tmp_path / "release"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TQDM_DISABLE": "1",
           records.HOLD_ENV: str(release)}
    process = subprocess.Popen([sys.executable, "-c", TRAIN], cwd=layout.root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        epoch = process.stdout.readline()  # printed after the snapshot; the check waits
        assert epoch.startswith("train: epoch 1/1 "), epoch
        text = layout.params.read_text()
        assert "\n  lr: 0.03\n" in text
        layout.params.write_text(text.replace("\n  lr: 0.03\n", "\n  lr: 0.014\n"))
    finally:
        release.touch()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert err.splitlines() == [
        "error: params.yaml train.lr changed while train ran: its outputs are removed, not "
        "recorded; rerun (docs/concurrent-runs.md)"]
    assert not layout.model_dir.exists() and not layout.train_metrics.exists()
    assert not list(layout.resume.iterdir())  # no state a later resume could pick up


# --- end to end: the real dvc CLI, real MNIST (the session's `pipeline` copy) -------------

def train_records(repo: DvcRepo) -> list[dict]:
    """The train stage's entries in dvc.lock and in the run-cache."""
    entries = [parse_yaml((repo.root / "dvc.lock").read_text())["stages"]["train"]]
    for path in sorted((repo.root / ".dvc" / "cache" / "runs").rglob("*")):
        if path.is_file():
            entry = parse_yaml(path.read_text())
            if entry["cmd"] == "python -m stages.train":
                entries.append(entry)
    return entries


def recorded_lrs(repo: DvcRepo) -> set[float]:
    return {entry["params"]["params.yaml"]["train"]["lr"] for entry in train_records(repo)}


def recorded_md5s(repo: DvcRepo, dep: str) -> set[str]:
    return {d["md5"] for entry in train_records(repo) for d in entry["deps"] if d["path"] == dep}


def start_held(repo: DvcRepo, release: Path, *args: str) -> subprocess.Popen[str]:
    """``dvc exp run ARGS`` whose train stage waits for ``release`` before its final check;
    returns once train's first (and last) epoch line is out."""
    running = subprocess.Popen(["dvc", "exp", "run", *args], cwd=repo.root,
                               env={**repo.env, records.HOLD_ENV: str(release)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    assert running.stdout is not None
    for line in running.stdout:
        if line.startswith("train: epoch 1/1 "):
            return running
    raise AssertionError(f"train printed no epoch: exit {running.wait()}")


def finish(running: subprocess.Popen[str], release: Path) -> str:
    release.touch()
    output, _ = running.communicate(timeout=600)
    return output


def file_hashes(repo: DvcRepo) -> dict[str, str]:
    """The files that hold a run's numbers (checkpoint.pt also holds the code's hash)."""
    layout = Layout(repo.root)
    return {str(path.relative_to(repo.root)): file_digest(path)
            for path in (layout.model, layout.train_metrics, layout.train_history,
                         layout.eval_metrics, layout.predictions)}


@pytest.mark.e2e
def test_params_set_by_a_second_exp_run_mid_train_are_never_recorded(pipeline, tmp_path):
    repo, _ = pipeline
    seen = recorded_lrs(repo)
    assert not seen & {0.013, 0.014}
    release = tmp_path / "release"
    running = start_held(repo, release, "-S", "train.lr=0.013")
    try:
        second = repo.dvc("exp", "run", "-S", "train.lr=0.014", check=False)
        assert second.returncode != 0  # the workspace is busy...
        assert parse_yaml((repo.root / "params.yaml").read_text())["train"]["lr"] == 0.014
    finally:  # ...but its -S has rewritten params.yaml under the running train stage
        output = finish(running, release)
    assert running.returncode != 0
    assert ("error: params.yaml train.lr changed while train ran: its outputs are removed, "
            "not recorded; rerun (docs/concurrent-runs.md)\n") in output
    assert "NoneType" not in output
    assert recorded_lrs(repo) == seen  # dvc.lock and the run-cache name neither lr
    layout = Layout(repo.root)
    assert not layout.model_dir.exists() and not layout.train_metrics.exists()
    assert not list(layout.resume.iterdir())

    honest = repo.dvc("exp", "run", "-S", "train.lr=0.014").stdout
    assert "train" in ran(honest) and "resuming" not in honest
    trained = output_hashes(repo)
    repo.dvc("exp", "run", "-f", "-s", "train")  # a clean run of the same params, forced
    assert output_hashes(repo) == trained
    assert recorded_lrs(repo) == seen | {0.014}
    back_to_baseline(repo)


@pytest.mark.e2e
def test_a_code_dep_edited_mid_train_is_never_recorded(pipeline, tmp_path):
    repo, _ = pipeline
    baseline = file_hashes(repo)  # a clean run of the baseline params
    edited = repo.root / "mnist_dvc" / "training" / "trainer.py"
    release = tmp_path / "release"
    running = start_held(repo, release, "-f", "-s", "train")
    try:
        with edited.open("a") as source:
            source.write("# saved by an editor while train ran\n")
    finally:
        output = finish(running, release)
    assert running.returncode != 0
    assert ("error: mnist_dvc/training/trainer.py changed while train ran: its outputs are "
            "removed, not recorded; rerun (docs/concurrent-runs.md)\n") in output
    new_md5 = file_digest(edited)
    assert new_md5 not in recorded_md5s(repo, "mnist_dvc/training/trainer.py")

    honest = repo.dvc("exp", "run").stdout  # the edited code: trained, never restored
    assert "train" in ran(honest) and "resuming" not in honest
    assert file_hashes(repo) == baseline  # a comment changes no number
    assert new_md5 in recorded_md5s(repo, "mnist_dvc/training/trainer.py")
    back_to_baseline(repo)

"""params.yaml against the schema in mnist_dvc/config/params.py: defaults, coercion and
one-line errors."""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAMLError

from mnist_dvc.config.params import Params, load_params, params_yaml, parse_params
from mnist_dvc.config.schema import ParamsError, dump_yaml, load_config, parse_yaml
from mnist_dvc.config.workspace import Layout
from mnist_dvc.errors import StageError
from mnist_dvc.records import stage_config
from tests.conftest import PIPELINE, REPO_ROOT, params_as_dict, write_raw_dir


def _write(tmp_path: Path, content: str | dict[str, Any], name: str = "params.yaml") -> Path:
    """A params file of the defaults with ``content`` merged in (where both are mappings)."""
    path = tmp_path / name
    try:
        raw = parse_yaml(content) if isinstance(content, str) else content
    except YAMLError:
        raw = None
    if isinstance(raw, dict) and raw:
        merged: dict[str, Any] = params_as_dict(Params())
        for section, values in raw.items():
            if isinstance(values, dict) and isinstance(merged.get(section), dict):
                merged[section].update(values)
            else:
                merged[section] = values
        content = dump_yaml(merged)
    path.write_text(content if isinstance(content, str) else dump_yaml(content))
    return path


# --- what loads ------------------------------------------------------------------------------

def test_committed_params_yaml_equals_schema_defaults() -> None:
    committed = REPO_ROOT / "params.yaml"
    assert committed.is_file()
    params = load_params(committed)
    assert params == Params()
    # the comparison above is only meaningful if every section of the schema is in the file
    assert set(parse_yaml(committed.read_text())) == {
        f.name for f in dataclasses.fields(Params)
    }


def test_parse_params_fills_missing_keys_with_defaults() -> None:
    params = parse_params({"train": {"lr": 0.05}})
    assert params == dataclasses.replace(Params(), train=dataclasses.replace(Params().train,
                                                                              lr=0.05))


@pytest.mark.parametrize(("text", "expected"), [
    ("", "empty; it must set every parameter"),
    ("# only a comment\n", "empty; it must set every parameter"),
    ("{}\n", "missing key 'download'"),
])
def test_a_params_file_must_set_every_key(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=expected):
        load_params(tmp_path / "params.yaml")


def test_a_missing_key_is_named(tmp_path: Path) -> None:
    full = params_as_dict(Params())
    del full["train"]["nproc"]
    (tmp_path / "params.yaml").write_text(dump_yaml(full))
    with pytest.raises(ParamsError) as info:
        load_params(tmp_path / "params.yaml")
    assert str(info.value) == f"{tmp_path / 'params.yaml'}: missing key 'train.nproc'"


def test_int_for_float_param_is_accepted_as_float(tmp_path: Path) -> None:
    text = "train: {lr: 1, momentum: 0}\ndownload: {timeout_s: 5}\n"
    params = load_params(_write(tmp_path, text))
    for value, expected in ((params.train.lr, 1.0), (params.train.momentum, 0.0),
                            (params.download.timeout_s, 5.0)):
        assert type(value) is float
        assert value == expected


def test_sources_list_becomes_tuple_in_the_given_order(tmp_path: Path) -> None:
    params = load_params(_write(tmp_path, "download: {sources: [local, mirrors]}\n"))
    assert params.download.sources == ("local", "mirrors")


def test_local_path_null_or_string(tmp_path: Path) -> None:
    assert load_params(_write(tmp_path, "download: {local_path: null}\n")).download.local_path \
        is None
    assert load_params(_write(tmp_path, "download: {local_path: /x/y}\n")).download.local_path \
        == "/x/y"


# --- what is rejected ------------------------------------------------------------------------

BAD_PARAMS: list[tuple[str, str | dict[str, Any], tuple[str, ...]]] = [
    ("unknown-section", {"bogus": {"a": 1}},
     ("unknown key 'bogus'", "allowed: download, preprocess, model, train, evaluate")),
    ("unknown-nested-key", {"train": {"lrr": 0.1}},
     ("unknown key 'train.lrr'", "did you mean 'train.lr'?", "allowed: seed")),
    ("unknown-download-key", {"download": {"source": ["pypi"]}},
     ("unknown key 'download.source'", "did you mean 'download.sources'?")),
    ("lr-negative", {"train": {"lr": -0.5}}, ("train.lr must be > 0", "got -0.5")),
    ("lr-zero", {"train": {"lr": 0}}, ("train.lr must be > 0", "got 0.0")),
    ("batch-size-zero", {"train": {"batch_size": 0}}, ("train.batch_size must be >= 1", "got 0")),
    ("epochs-zero", {"train": {"epochs": 0}}, ("train.epochs must be >= 1",)),
    ("momentum-one", {"train": {"momentum": 1.0}}, ("train.momentum must be < 1", "got 1.0")),
    ("momentum-negative", {"train": {"momentum": -0.1}}, ("train.momentum must be >= 0",)),
    ("unknown-optimizer", {"train": {"optimizer": "rmsprop"}},
     ("train.optimizer must be one of 'adam', 'sgd'", "'rmsprop'")),
    ("unknown-schedule", {"train": {"schedule": "cosine"}},
     ("train.schedule must be one of 'onecycle', 'constant', 'step'", "'cosine'")),
    ("unknown-device", {"train": {"device": "tpu"}},
     ("train.device must be one of 'auto', 'cpu', 'cuda', 'mps'", "'tpu'")),
    ("mean-above-one", {"preprocess": {"mean": 1.5}}, ("preprocess.mean must be <= 1", "1.5")),
    ("std-zero", {"preprocess": {"std": 0}}, ("preprocess.std must be > 0",)),
    ("std-negative", {"preprocess": {"std": -0.3}}, ("preprocess.std must be > 0", "-0.3")),
    ("string-for-int", 'train:\n  batch_size: "64"\n',
     ("train.batch_size must be an integer", "str '64'")),
    ("bool-for-int", "train:\n  epochs: true\n", ("train.epochs must be an integer", "bool True")),
    ("float-for-int", {"train": {"batch_size": 1.5}},
     ("train.batch_size must be an integer", "float 1.5")),
    ("bool-for-float", "train:\n  lr: true\n", ("train.lr must be a number", "bool True")),
    ("lr-nan", "train:\n  lr: .nan\n", ("train.lr must be a finite number", "nan")),
    ("lr-inf", "train:\n  lr: .inf\n", ("train.lr must be a finite number", "inf")),
    ("lr-minus-inf", "train:\n  lr: -.inf\n", ("train.lr must be a finite number", "-inf")),
    ("lr-huge-int", "train:\n  lr: 1" + "0" * 400 + "\n",
     ("train.lr must be a finite number", "too large")),
    ("list-for-scalar", {"train": {"lr": [0.1]}}, ("train.lr must be a number", "list [0.1]")),
    ("section-not-mapping", "train: 3\n", ("train must be a mapping", "int 3")),
    ("section-is-list", "preprocess: [0.1, 0.3]\n", ("preprocess must be a mapping", "list")),
    ("top-level-list", "- train\n- lr\n", ("top level must be a mapping", "list")),
    ("top-level-empty-list", "[]\n", ("top level must be a mapping", "list []")),
    ("top-level-scalar", "0\n", ("top level must be a mapping", "int 0")),
    ("sources-empty", {"download": {"sources": []}},
     ("download.sources must be a non-empty list", "list []")),
    ("sources-not-list", "download:\n  sources: mirrors\n",
     ("download.sources must be a non-empty list", "str 'mirrors'")),
    ("sources-unknown", {"download": {"sources": ["mirrors", "ftp"]}},
     ("download.sources must be one of 'mirrors', 'pypi', 'local'", "got 'ftp'")),
    ("sources-duplicate", {"download": {"sources": ["pypi", "mirrors", "pypi"]}},
     ("download.sources lists an entry twice", "'pypi'")),
    ("threads-zero", {"train": {"threads": 0}}, ("train.threads must be >= 1",)),
    ("retries-eleven", {"download": {"retries": 11}},
     ("download.retries must be <= 10", "got 11")),
    ("retries-negative", {"download": {"retries": -1}}, ("download.retries must be >= 0",)),
    ("timeout-zero", {"download": {"timeout_s": 0}}, ("download.timeout_s must be > 0",)),
    ("local-path-empty", {"download": {"local_path": ""}},
     ("download.local_path must be a non-empty string",)),
    ("local-path-int", {"download": {"local_path": 3}},
     ("download.local_path must be a non-empty string", "int 3")),
    ("evaluate-batch-size-zero", {"evaluate": {"batch_size": 0}},
     ("evaluate.batch_size must be >= 1",)),
    ("bf16-string", 'train:\n  bf16: "yes"\n',
     ("train.bf16 must be true or false", "str 'yes'")),
    ("bf16-int", {"train": {"bf16": 1}}, ("train.bf16 must be true or false", "int 1")),
    ("warmup-one", {"train": {"warmup_fraction": 1}}, ("train.warmup_fraction must be < 1",)),
    ("step-gamma-zero", {"train": {"step_gamma": 0}}, ("train.step_gamma must be > 0",)),
    ("step-gamma-above-one", {"train": {"step_gamma": 1.5}},
     ("train.step_gamma must be <= 1",)),
    ("weight-decay-negative", {"train": {"weight_decay": -0.01}},
     ("train.weight_decay must be >= 0",)),
    ("seed-negative", {"train": {"seed": -1}}, ("train.seed must be >= 0",)),
    ("nproc-zero", {"train": {"nproc": 0}}, ("train.nproc must be >= 1", "got 0")),
    ("evaluate-threads-zero", {"evaluate": {"threads": 0}}, ("evaluate.threads must be >= 1",)),
    ("export-opset-too-old", {"export": {"opset": 17}}, ("export.opset must be >= 18",)),
    ("evaluate-device-unknown", {"evaluate": {"device": "gpu"}},
     ("evaluate.device must be one of 'auto', 'cpu', 'cuda', 'mps'", "'gpu'")),
]


@pytest.mark.parametrize(("content", "expected"), [case[1:] for case in BAD_PARAMS],
                         ids=[case[0] for case in BAD_PARAMS])
def test_bad_params_raise_one_line_naming_the_key(
    tmp_path: Path, content: str | dict[str, Any], expected: tuple[str, ...]
) -> None:
    path = _write(tmp_path, content, name="my-params.yaml")
    with pytest.raises(ParamsError) as info:
        load_params(path)
    message = str(info.value)
    assert isinstance(info.value, StageError)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message


EXISTING_OUTPUTS = ("data/raw/train-images-idx3-ubyte", "data/prepared/train_images.npy",
                    "data/model/model.pt", "data/resume/train-0123456789abcdef.pt",
                    "metrics/train.json", "metrics/eval.json")
# Every stage checks the sections it reads (its config) before it does anything. These cases,
# one per kind of fault, check that the stages owning the faulty section refuse and touch
# nothing, and that the other stages do not care.
STAGE_CASES = {"unknown-nested-key": {"train"}, "unknown-download-key": {"download"},
               "string-for-int": {"train"}, "std-zero": {"preprocess"},
               "lr-nan": {"train"}, "top-level-list": set(PIPELINE)}


@pytest.mark.parametrize(("content", "expected", "refusing"),
                         [(*case[1:], STAGE_CASES[case[0]]) for case in BAD_PARAMS
                          if case[0] in STAGE_CASES], ids=list(STAGE_CASES))
def test_the_stages_owning_a_bad_section_refuse_it_before_touching_outputs(
    tmp_path: Path, content: str | dict[str, Any], expected: tuple[str, ...],
    refusing: set[str],
) -> None:
    for index, name in enumerate(EXISTING_OUTPUTS):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(f"earlier output {index}".encode())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    _write(tmp_path, content)
    for name in PIPELINE:
        config = stage_config(name)
        if name in refusing:
            with pytest.raises(ParamsError) as info:
                load_config(tmp_path / "params.yaml", config)
            assert all(part in str(info.value) for part in expected), name
            stage = importlib.import_module(f"stages.{name}")
            with pytest.raises(ParamsError):
                stage.main(Layout(tmp_path))
        else:
            load_config(tmp_path / "params.yaml", config)  # another stage's section: not its
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == {**before, tmp_path / "params.yaml": (tmp_path / "params.yaml").read_bytes()}


def test_train_refuses_a_net_missing_from_the_registry(tmp_path: Path) -> None:
    from stages import train

    _write(tmp_path, {"model": {"net": "resnet"}})
    with pytest.raises(ParamsError) as info:
        train.main(Layout(tmp_path))
    assert str(info.value) == (f"{tmp_path / 'params.yaml'}: model.net must be one of "
                               "'compact', 'seed', got 'resnet'")
    assert not (tmp_path / "data").exists()


def test_parse_params_names_its_source() -> None:
    with pytest.raises(ParamsError, match=r"^dvc\.yaml vars: train\.lr must be > 0, got -1\.0$"):
        parse_params({"train": {"lr": -1.0}}, source="dvc.yaml vars")


def test_no_suggestion_when_nothing_is_close(tmp_path: Path) -> None:
    with pytest.raises(ParamsError) as info:
        load_params(_write(tmp_path, "train: {zzzzzz: 1}\n"))
    assert "unknown key 'train.zzzzzz'" in str(info.value)
    assert "did you mean" not in str(info.value)


# Scalars that YAML 1.1 (PyYAML) and YAML 1.2 (DVC's ruamel.yaml) read differently
TRICKY_SCALARS = ["5e-3", "1e3", "off", "yes", "on", "010", "0o10", "1_000", "Null", "+.inf"]


def test_params_mean_to_a_stage_what_they_mean_to_dvc() -> None:
    from dvc.utils.serialize import parse_yaml as dvc_parse_yaml

    text = "".join(f"k{i}: {scalar}\n" for i, scalar in enumerate(TRICKY_SCALARS))
    assert parse_yaml(text) == dvc_parse_yaml(text, "params.yaml")


def _defaults_with(tmp_path: Path, line: str, written: str) -> Path:
    """The defaults' params.yaml with ``line`` written as ``written``, byte for byte."""
    text = params_yaml(Params())
    assert text.count(line) == 1
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(line, written))
    return path


def test_a_learning_rate_in_exponent_notation_is_a_number(tmp_path: Path) -> None:
    path = _defaults_with(tmp_path, "  lr: 0.03\n", "  lr: 5e-3\n")
    assert load_params(path).train.lr == 0.005


def test_a_yaml_1_1_boolean_word_is_refused_as_dvc_records_it(tmp_path: Path) -> None:
    # DVC records `off` as the string 'off' (dvc params diff shows it so): no silent False
    path = _defaults_with(tmp_path, "  bf16: false\n", "  bf16: off\n")
    with pytest.raises(ParamsError, match=r"train\.bf16 must be true or false, got str 'off'"):
        load_params(path)


def test_a_params_file_that_is_not_text_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ParamsError, match=r"params\.yaml: not valid YAML \(not UTF-8 text\)$"):
        load_params(path)


@pytest.mark.parametrize(("text", "detail"), [
    ("train:\n  lr: [0.1, 0.2\n  epochs: 3\n", "(line 3; expected ',' or ']'"),
    # named, not silently overridden by the last one
    ("train:\n  lr: 0.1\n  lr: 0.2\n", "(line 3; found duplicate key"),
])
def test_invalid_yaml_is_one_line_with_where_and_what(tmp_path: Path, text: str,
                                                     detail: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}: not valid YAML {detail}")
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ParamsError, match="file not found") as info:
        load_params(path)
    assert str(path) in str(info.value)


# --- a stage run as a command ---------------------------------------------------------------
# Starting python + torch costs seconds, so both runs start together when this module starts
# and go on while the in-process tests above run; each test below then waits for its own run.

OLD_TRAIN_IMAGES = b"an earlier train_images.npy, byte for byte\x00\xff"


def _start_preprocess(cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-m", "stages.preprocess"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module", autouse=True)
def bad_params_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[Path, subprocess.Popen[str]]]]:
    """``python -m stages.preprocess`` in a work dir whose params.yaml has a misspelt key."""
    runs = {}
    for variant in ("fresh", "existing"):
        work = tmp_path_factory.mktemp(f"bad-params-{variant}")
        write_raw_dir(work / "data" / "raw", train_count=32, test_count=16)
        _write(work, {"preprocess": {"sdt": 0.3081}})
        if variant == "existing":
            (work / "data" / "prepared").mkdir(parents=True)
            (work / "data" / "prepared" / "train_images.npy").write_bytes(OLD_TRAIN_IMAGES)
        runs[variant] = (work, _start_preprocess(work))
    yield runs
    for _, process in runs.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def _assert_one_line_params_error(process: subprocess.Popen[str]) -> None:
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert stderr.count("\n") == 1
    assert stderr.endswith("\n")
    assert stderr.startswith("error: params.yaml: unknown key 'preprocess.sdt'")
    assert "did you mean 'preprocess.std'?" in stderr
    assert "Traceback" not in stderr
    assert stdout == ""


def test_stage_with_bad_params_exits_1_with_one_line_and_writes_nothing(
    bad_params_runs: dict[str, tuple[Path, subprocess.Popen[str]]],
) -> None:
    work, process = bad_params_runs["fresh"]
    _assert_one_line_params_error(process)
    assert not (work / "data" / "prepared").exists()


def test_stage_with_bad_params_leaves_existing_outputs_untouched(
    bad_params_runs: dict[str, tuple[Path, subprocess.Popen[str]]],
) -> None:
    work, process = bad_params_runs["existing"]
    _assert_one_line_params_error(process)
    prepared = work / "data" / "prepared"
    assert (prepared / "train_images.npy").read_bytes() == OLD_TRAIN_IMAGES
    assert sorted(p.name for p in prepared.iterdir()) == ["train_images.npy"]

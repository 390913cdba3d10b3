"""The export stage (the model as ONNX, checked against PyTorch) and predict on onnxruntime.

Most tests export a seeded, untrained compact net on synthetic data; those marked e2e use the
real trained model and MNIST test digits (``trained_project``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image, ImageDraw

from mnist_dvc.commands.predict import (
    choose_model,
    load_predictor,
    predict_files,
    to_model_input,
)
from mnist_dvc.commands.serve import make_server
from mnist_dvc.config.export import ExportParams, onnx_model
from mnist_dvc.config.params import parse_params
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.idx import read_idx
from mnist_dvc.data.prepared import Normalization
from mnist_dvc.data.spec import DatasetSpec
from mnist_dvc.errors import StageError, run_stage
from mnist_dvc.files import file_digest
from mnist_dvc.model import onnx_export
from mnist_dvc.model.nets import build_model, load_model, predict_log_probs, save_model
from mnist_dvc.model.onnx_export import Agreement
from mnist_dvc.model.onnx_runtime import CLASS_NAMES, SOURCE_SHA256, OnnxModel
from stages import export as export_stage
from tests.conftest import REPO_ROOT, TINY, make_project, without_torch
from tests.renderings import SUFFIX, render_file
from tests.test_predict import run_main

DEPLOY_DOC = REPO_ROOT / "docs" / "deploy.md"


def save_seeded_model(layout: Layout, seed: int = 0) -> None:
    torch.manual_seed(seed)
    save_model(layout.model, "compact", build_model("compact"),
               Normalization(0.1307, 0.3081))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """A project with synthetic data, an untrained model and its export (run once)."""
    layout = make_project(tmp_path_factory.mktemp("exported"), parse_params(TINY))
    save_seeded_model(layout)
    export_stage.export(ExportParams(), layout)
    return layout


def copy_project(layout: Layout, destination: Path) -> Layout:
    shutil.copytree(layout.root, destination)
    return Layout(destination)


def draw_digit(path: Path, shape: str) -> Path:
    image = Image.new("L", (90, 120), 255)
    draw = ImageDraw.Draw(image)
    if shape == "seven":
        draw.line([(10, 10), (50, 10), (25, 70)], fill=0, width=7)
    else:
        draw.ellipse((15, 15, 65, 95), outline=0, width=7)
    image.save(path)
    return path


@pytest.fixture
def drawings(tmp_path: Path) -> list[Path]:
    return [draw_digit(tmp_path / f"{shape}.png", shape) for shape in ("seven", "zero")]


# --- the stage ------------------------------------------------------------------------------

def test_the_graph_takes_pixels_at_any_batch_size_and_scores_as_pytorch_does(exported):
    session = onnxruntime.InferenceSession(str(onnx_model(exported)),
                                           providers=["CPUExecutionProvider"])
    (given,), (returned,) = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, given.shape[1:]) == ("pixels", "tensor(float)", [1, 28, 28])
    assert isinstance(given.shape[0], str) and returned.shape[1:] == [10]
    # the raw test bytes, as a caller holds them: nothing of this project's preprocessing
    images = read_idx(exported.raw / "t10k-images-idx3-ubyte", 3, (28, 28))
    model, _, normalization, dataset = load_model(exported.model)
    expected = predict_log_probs(model, to_model_input(images, *normalization), 1000).numpy()
    for batch in (1, 5, len(images)):
        pixels = images[:batch, None].astype(np.float32) / 255
        (scores,) = session.run(["log_probs"], {"pixels": pixels})
        assert scores.shape == (batch, 10)
        np.testing.assert_allclose(scores, expected[:batch], atol=1e-5)
        assert np.array_equal(scores.argmax(1), expected[:batch].argmax(1))
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata[SOURCE_SHA256] == file_digest(exported.model, "sha256")
    assert OnnxModel.load(onnx_model(exported)).class_names == dataset.class_names


def test_a_model_of_another_shape_and_classes_predicts_alike_in_both_runtimes(tmp_path,
                                                                              drawings):
    dataset = DatasetSpec("idx", (20, 24), ("ant", "bee", "cat"))
    torch.manual_seed(2)
    model = build_model("compact", image_shape=dataset.image_shape, num_classes=3)
    save_model(tmp_path / "model.pt", "compact", model, Normalization(0.2, 0.3), dataset)
    saved = load_model(tmp_path / "model.pt")
    graph = onnx_export.export_onnx(saved, (1, 20, 24), ExportParams().opset, {
        CLASS_NAMES: json.dumps(list(dataset.class_names))})
    (tmp_path / "model.onnx").write_bytes(graph)

    torch_predictor = load_predictor(tmp_path / "model.pt")
    onnx_predictor = load_predictor(tmp_path / "model.onnx")

    for predictor in (torch_predictor, onnx_predictor):
        assert (predictor.image_shape, predictor.class_names) == ((20, 24), dataset.class_names)
    with_torch = predict_files(drawings, tmp_path / "model.pt")
    with_onnx = predict_files(drawings, tmp_path / "model.onnx")
    assert [r["class"] for r in with_onnx] == [r["class"] for r in with_torch]
    assert {r["class"] for r in with_onnx} <= set(dataset.class_names)


def test_the_stage_reports_its_check_and_its_output_is_an_ordinary_onnx_model(exported, capsys):
    layout = copy_project(exported, exported.root.parent / "again")

    agreement = export_stage.export(ExportParams(), layout)

    assert agreement.ok and agreement.same_digit == agreement.images == 256
    assert agreement.max_difference < 1e-5
    line = capsys.readouterr().out
    assert line.startswith(f"export: {onnx_model(layout)} (") and "256 of 256" in line
    graph = onnx.load(onnx_model(layout))
    onnx.checker.check_model(graph, full_check=True)
    assert [(o.domain, o.version) for o in graph.opset_import if o.domain == ""] == [("", 18)]
    assert onnx_model(layout).read_bytes() == onnx_model(exported).read_bytes()  # repeatable
    # ... in any clone: no path of this checkout (the exporter's stack traces) in the bytes
    assert str(Path(export_stage.__file__).resolve().parent.parent).encode() \
        not in onnx_model(layout).read_bytes()


def wrong_normalization(saved, image_shape, opset, metadata):
    """The graph of a model whose normalization got lost."""
    return real_export_onnx(saved._replace(normalization=Normalization(0.0, 1.0)),
                            image_shape, opset, metadata)


def other_weights(saved, image_shape, opset, metadata):
    """The graph of another model than the one checked."""
    torch.manual_seed(1)
    return real_export_onnx(saved._replace(model=build_model("compact").eval()),
                            image_shape, opset, metadata)


real_export_onnx = onnx_export.export_onnx


@pytest.mark.parametrize("wrong_graph", [wrong_normalization, other_weights])
def test_a_graph_that_disagrees_with_pytorch_fails_in_one_line_and_writes_nothing(
        exported, tmp_path, monkeypatch, capsys, wrong_graph):
    layout = copy_project(exported, tmp_path / "project")
    earlier = onnx_model(layout).read_bytes()
    monkeypatch.setattr(export_stage, "export_onnx", wrong_graph)

    with pytest.raises(SystemExit) as exit_:
        run_stage(lambda: export_stage.main(layout))

    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert re.fullmatch(
        rf"error: {re.escape(str(onnx_model(layout)))}: not written: onnxruntime and PyTorch "
        r"disagree: the same digit on \d+ of 256 test images \(256 needed\), log-probabilities "
        r"apart by up to \S+ \(tolerance 0\.0001 \+ 0\.0001 x \|score\|\)\n", err), err
    assert onnx_model(layout).read_bytes() == earlier  # left as it was
    assert os.listdir(onnx_model(layout).parent) == ["model.onnx"]  # no temporary file


@pytest.mark.parametrize(("images", "same", "within", "ok"), [
    (10_000, 10_000, True, True), (10_000, 9_999, True, True), (10_000, 9_998, True, False),
    (256, 255, True, False), (10_000, 10_000, False, False)])
def test_at_most_one_digit_in_10000_may_differ_and_every_score_must_be_close(
        images, same, within, ok):
    assert Agreement(images, same, 1e-6, within).ok is ok


def test_an_opset_the_exporter_cannot_write_is_one_line_and_writes_nothing(exported, tmp_path):
    layout = copy_project(exported, tmp_path / "project")
    onnx_model(layout).unlink()
    with pytest.raises(StageError) as info:
        export_stage.export(ExportParams(opset=99), layout)
    message = str(info.value)
    assert message.startswith("cannot export net 'compact' to ONNX opset 99: the exporter wrote "
                              "opset 18") and "\n" not in message
    assert not onnx_model(layout).exists()


# --- predict on onnxruntime -----------------------------------------------------------------

def test_predict_uses_the_onnx_model_without_importing_torch(exported, drawings, tmp_path):
    env = without_torch(tmp_path / "no-torch", dict(os.environ))
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert blocked.returncode != 0 and "ModuleNotFoundError" in blocked.stderr

    done = subprocess.run([sys.executable, "-m", "mnist_dvc", "predict", "--json",
                           *map(str, drawings)], cwd=exported.root, env=env,
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    with_torch = predict_files(drawings, exported.model)
    results = json.loads(done.stdout)
    assert [r["class"] for r in results] == [r["class"] for r in with_torch]
    for onnx_result, torch_result in zip(results, with_torch, strict=True):
        assert onnx_result["probability"] == pytest.approx(torch_result["probability"],
                                                           abs=2e-4)


def test_predict_passes_over_an_onnx_model_older_than_the_trained_one(
        exported, drawings, tmp_path, monkeypatch, capsys):
    layout = copy_project(exported, tmp_path / "project")
    save_seeded_model(layout, seed=7)  # trained again, not exported again
    monkeypatch.chdir(layout.root)

    assert run_main(["--json", *map(str, drawings)]) == 0

    out, err = capsys.readouterr()
    assert err == ("note: data/onnx/model.onnx was not exported from data/model/model.pt "
                   "(run dvc repro); using data/model/model.pt\n")
    assert json.loads(out) == predict_files(drawings, layout.model)
    assert json.loads(out) != predict_files(drawings, onnx_model(layout))  # the old answers


def test_the_runtime_is_chosen_by_the_model_and_the_flag(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(exported.root)
    onnx_file, torch_file = Path("data/onnx/model.onnx"), Path("data/model/model.pt")
    assert choose_model("auto", None) == onnx_file  # exported from the trained model
    assert choose_model("torch", None) == torch_file
    assert choose_model("auto", Path("elsewhere.pt")) == Path("elsewhere.pt")
    with pytest.raises(StageError, match=r"^m\.onnx: --runtime torch needs a PyTorch model"):
        choose_model("torch", Path("m.onnx"))
    monkeypatch.chdir(copy_project(exported, tmp_path / "no-onnx").root)
    shutil.rmtree("data/onnx")
    assert choose_model("auto", None) == torch_file
    with pytest.raises(StageError, match=r"^data/onnx/model\.onnx: file not found"):
        predict_files([], choose_model("onnx", None))
    shutil.rmtree("data/model")
    (Path("data/onnx")).mkdir()
    shutil.copy(onnx_model(exported), "data/onnx/model.onnx")
    assert choose_model("auto", None) == onnx_file  # shipped alone, without model.pt


def another_graph(path: Path) -> Path:
    """A valid ONNX model that is not the export stage's: it takes 'x' and returns 'y'."""
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "identity", [value("x", onnx.TensorProto.FLOAT, [1])],
                                   [value("y", onnx.TensorProto.FLOAT, [1])])
    # IR version 10 and opset 18, as the export writes: the newest IR onnx knows is more than
    # the older onnxruntime that Python 3.10 installs can read
    onnx.save(onnx.helper.make_model(graph, ir_version=10,
                                     opset_imports=[onnx.helper.make_opsetid("", 18)]), path)
    return path


@pytest.mark.parametrize(("what", "expected"), [
    ("text", "unreadable or corrupt ("),
    ("another graph", "not a model written by the export stage (it takes 'pixels' and returns "
     "'log_probs')"),
    ("directory", "is a directory, not a file"),
])
def test_an_onnx_file_that_is_not_the_export_is_one_line_and_exit_1(
        what, expected, drawings, tmp_path, capsys):
    model = tmp_path / "model.onnx"
    if what == "text":
        model.write_text("these are not weights\n")
    elif what == "another graph":
        another_graph(model)
    else:
        model.mkdir()
    assert run_main(["--model", str(model), str(drawings[0])]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"error: {model}: {expected}")


def deploy_example() -> str:
    """The first Python block of docs/deploy.md."""
    blocks = re.findall(r"```python\n(.*?)```", DEPLOY_DOC.read_text(), re.DOTALL)
    assert blocks, "docs/deploy.md has no ```python block"
    return str(blocks[0])


def run_deploy_example(project: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    if not (project / "digits").is_dir():  # a synthetic project: the example's image
        shutil.copytree(REPO_ROOT / "digits", project / "digits")
    return subprocess.run([sys.executable, "-c", deploy_example()], cwd=project,
                          env=without_torch(tmp_path / "no-torch", dict(os.environ)),
                          capture_output=True, text=True, timeout=60)


def test_the_deploy_example_is_five_lines_and_runs_without_torch(exported, tmp_path):
    project = copy_project(exported, tmp_path / "project").root
    assert len(deploy_example().splitlines()) == 5

    done = run_deploy_example(project, tmp_path)

    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"\[\d\]\n", done.stdout)


# --- real digits (need the trained model) ---------------------------------------------------

@pytest.mark.e2e
def test_the_deploy_example_reads_the_seven(trained_project, tmp_path):
    done = run_deploy_example(trained_project, tmp_path)
    assert (done.returncode, done.stdout) == (0, "[7]\n"), done.stderr


@pytest.mark.e2e
def test_onnx_and_pytorch_predict_the_same_on_shipped_and_rendered_digits(trained_project,
                                                                        tmp_path):
    project = Layout(trained_project)
    images = read_idx(project.raw / "t10k-images-idx3-ubyte", 3, (28, 28))
    paths = sorted((REPO_ROOT / "digits").glob("*.*"))
    for index in range(30):
        Image.fromarray(images[index]).save(tmp_path / f"{index:04d}-plain.png")
        paths.append(tmp_path / f"{index:04d}-plain.png")
        for kind in sorted(SUFFIX):
            paths.append(render_file(tmp_path / f"{index:04d}-{kind}{SUFFIX[kind]}",
                                     images[index], kind, index))

    with_onnx = predict_files(paths, onnx_model(project))
    with_torch = predict_files(paths, project.model)

    assert len(with_onnx) == 6 + 30 * 4 and all("class" in r for r in with_onnx)
    assert [r["class"] for r in with_onnx] == [r["class"] for r in with_torch]
    differences = [abs(a["probability"] - b["probability"])
                   for a, b in zip(with_onnx, with_torch, strict=True)]
    assert max(differences) <= 2e-4  # each rounded to 4 places


# --- serve ----------------------------------------------------------------------------------

@pytest.fixture
def server(exported) -> Iterator[str]:
    """``mnist-dvc serve``'s server on the exported model, on a free port: its base URL."""
    running = make_server(load_predictor(onnx_model(exported)), 0)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{running.server_port}"
    running.shutdown()
    running.server_close()
    thread.join(timeout=10)


def request(url: str, body: bytes | None = None) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_serve_answers_images_as_predict_does_and_bad_input_in_one_line(server, drawings,
                                                                        exported, tmp_path):
    expected = predict_files(drawings, onnx_model(exported))
    for path, result in zip(drawings, expected, strict=True):
        assert request(f"{server}/predict", path.read_bytes()) == (
            200, {"class": result["class"], "probability": result["probability"]})

    blank = tmp_path / "blank.png"
    Image.new("L", (40, 40), 255).save(blank)
    assert request(f"{server}/predict", b"not an image") == (
        400, {"error": "not a PNG or JPEG image"})
    assert request(f"{server}/predict", blank.read_bytes()) == (
        400, {"error": "no digit found: the image is blank"})
    assert request(f"{server}/predict", b"")[0] == 400
    assert request(f"{server}/elsewhere", b"x")[0] == 404
    assert request(f"{server}/predict") == (405, {"error": "POST a PNG or JPEG image to /predict"})
    assert request(f"{server}/predict", drawings[0].read_bytes())[0] == 200  # still serving


def test_the_serve_command_runs_the_onnx_model_without_torch(exported, drawings, tmp_path):
    started = subprocess.Popen(
        [sys.executable, "-m", "mnist_dvc", "serve", "--port", "0"], cwd=exported.root,
        env=without_torch(tmp_path / "no-torch", dict(os.environ)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert started.stdout is not None
        line = started.stdout.readline()  # the server is listening once this is printed
        found = re.search(r"at (http://127\.0\.0\.1:\d+)/predict ", line)
        assert line.startswith("serve: data/onnx/model.onnx at ") and found, line
        status, answer = request(f"{found[1]}/predict", drawings[0].read_bytes())
        (with_torch,) = predict_files(drawings[:1], exported.model)
        assert (status, answer["class"]) == (200, with_torch["class"])
    finally:
        started.terminate()
        started.wait(timeout=30)

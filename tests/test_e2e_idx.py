"""End to end on a dataset that is not MNIST, chosen by params alone: real handwritten digits
of another image size and class count, as IDX files, through the real dvc CLI, then predict
and review on the result.

The data: scikit-learn's 1,797 8x8 digits (``sklearn/datasets/data/digits.csv.gz``, read from
the installed package without importing it), classes 0-4 only, pixels scaled from 0-16 to
bytes and each image drawn 3x larger (24x24), every fifth image held out for the test split.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_dvc.data.idx import encode_idx, read_idx
from mnist_dvc.data.spec import IDX_FILES
from tests.dvc_repo import DvcRepo

pytestmark = pytest.mark.e2e

CLASSES = ("zero", "one", "two", "three", "four")
SCALE = 3  # 8x8 -> 24x24: the compact net's convolutions need 18 px a side at least


def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N x 8 x 8 scaled to 0-255, labels) of scikit-learn's digits."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-learn is not installed (pip install scikit-learn)")
    package = Path(next(iter(spec.submodule_search_locations)))
    with gzip.open(package / "datasets" / "data" / "digits.csv.gz", "rt") as lines:
        rows = np.loadtxt(lines, delimiter=",")
    return np.rint(rows[:, :64] * 255 / 16).astype(np.uint8).reshape(-1, 8, 8), \
        rows[:, 64].astype(np.uint8)


def write_digits_dataset(root: Path) -> dict[str, np.ndarray]:
    """The IDX files of classes 0-4 at 24x24 in ``root`` (train gzipped, test plain) and
    classes.txt; the test images and labels."""
    images, labels = sklearn_digits()
    keep = labels < len(CLASSES)
    images = images[keep].repeat(SCALE, axis=1).repeat(SCALE, axis=2)
    labels = labels[keep]
    held_out = np.arange(len(labels)) % 5 == 0
    root.mkdir(parents=True)
    for split, chosen in (("train", ~held_out), ("test", held_out)):
        for name, array in zip(IDX_FILES[split], (images[chosen], labels[chosen]), strict=True):
            data = encode_idx(np.ascontiguousarray(array))
            if split == "train":
                (root / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (root / name).write_bytes(data)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return {"images": images[held_out], "labels": labels[held_out]}


def exp_run(repo: DvcRepo, *sets: str) -> str:
    args = [arg for key in sets for arg in ("-S", key)]
    return repo.dvc("exp", "run", *args).stdout


def test_the_pipeline_predict_and_review_on_an_idx_dataset(tmp_path):
    data = tmp_path / "digits-0-4"
    test = write_digits_dataset(data)
    repo = DvcRepo.copy_of_project(tmp_path / "repo")

    output = exp_run(repo, "download.dataset=idx", f"download.local_path={data}",
                     "train.epochs=4", "train.batch_size=32", "train.threads=1",
                     "train.device=cpu", "evaluate.device=cpu")

    assert all(f"Running stage '{stage}'" in output
               for stage in ("download", "preprocess", "train", "evaluate"))
    raw = repo.root / "data" / "raw"
    record = json.loads((raw / "dataset.json").read_text())
    assert (record["name"], record["image_shape"], record["class_names"]) == (
        "idx", [24, 24], list(CLASSES))
    assert np.array_equal(read_idx(raw / IDX_FILES["test"].images, 3, (24, 24)), test["images"])
    normalization = json.loads((repo.root / "data" / "prepared" / "normalization.json")
                               .read_text())
    train_pixels = read_idx(raw / IDX_FILES["train"].images, 3, (24, 24)) / 255
    assert normalization["mean"] == pytest.approx(train_pixels.mean(), rel=1e-9)
    assert normalization["std"] == pytest.approx(train_pixels.std(), rel=1e-9)

    metrics = json.loads((repo.root / "metrics" / "eval.json").read_text())
    assert metrics["accuracy"] > 0.8  # five classes: chance is 0.2
    per_class = (repo.root / "metrics" / "per_class.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in per_class] == ["class", *CLASSES]
    predictions = (repo.root / "metrics" / "predictions.csv").read_text().splitlines()[1:]
    assert [line.split(",")[1] for line in predictions] == [CLASSES[k] for k in test["labels"]]
    assert metrics["errors"] == sum(line.split(",")[1] != line.split(",")[2]
                                    for line in predictions)

    # predict: a test image drawn 4x larger, as a file, fitted back into the model's 24x24
    image = tmp_path / "digit.png"
    Image.fromarray(test["images"][0]).resize((96, 96)).save(image)
    predicted = subprocess.run([sys.executable, "-m", "mnist_dvc", "predict", "--json",
                                str(image)], cwd=repo.root, env=repo.env, capture_output=True,
                               text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr
    (result,) = json.loads(predicted.stdout)
    assert result["class"] in CLASSES and 0 < result["probability"] <= 1

    # review: another seed against the committed idx run, image by image on the 24x24 images
    repo.commit("the digits 0-4 at 24x24")
    exp_run(repo, "train.seed=2")
    out = tmp_path / "review"
    reviewed = subprocess.run([sys.executable, "-m", "mnist_dvc", "review", "--base", "HEAD",
                               "--out", str(out)], cwd=repo.root, env=repo.env,
                              capture_output=True, text=True, timeout=600)
    assert reviewed.returncode == 0, reviewed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert re.fullmatch(r".* \(p [=<] [0-9.e-]+\): \d+ fixed, \d+ broken", summary["verdict"])
    if summary["fixed"]:
        grid = Image.open(out / "digits_the_change_fixed.png")
        assert grid.width == 10 * 24 * 3  # ten 24x24 images a row, each drawn 3x (>= 56 px)
    assert "train.seed" in (out / "report.md").read_text()

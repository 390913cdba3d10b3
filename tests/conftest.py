"""Shared fixtures: small synthetic MNIST-shaped data and a shrunk configuration."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_dvc.config.params import Params, params_yaml, parse_params
from mnist_dvc.config.schema import parse_yaml
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.idx import encode_idx
from mnist_dvc.data.spec import MNIST, DatasetSpec, write_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
PIPELINE: dict[str, Any] = parse_yaml((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (count, 28, 28) whose label is written as a bright 7x7 block position.

    A tiny net learns them in a few steps, so training tests can check that learning happens.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    images = rng.integers(0, 40, size=(count, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        row, col = divmod(int(label), 4)
        image[row * 7:row * 7 + 7, col * 7:col * 7 + 7] = 255
    return images, labels


# The synthetic data's spec: MNIST's shape, classes and normalization, no canonical files.
SYNTHETIC = DatasetSpec("synthetic", MNIST.image_shape, MNIST.class_names,
                        normalization=MNIST.normalization)


def write_raw_dir(raw_dir: Path, train_count: int = 512, test_count: int = 256) -> Path:
    """Write the four IDX files of a synthetic MNIST into ``raw_dir``, and their record
    (``dataset.json``) as the download stage would."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", train_count, 0), ("test", test_count, 1)):
        images, labels = synthetic_digits(count, seed)
        images_name, labels_name = SYNTHETIC.split_files[split]
        (raw_dir / images_name).write_bytes(encode_idx(images))
        (raw_dir / labels_name).write_bytes(encode_idx(labels))
    write_dataset(raw_dir, SYNTHETIC)
    return raw_dir


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    return write_raw_dir(tmp_path / "raw")


def params_as_dict(params: Params) -> dict[str, Any]:
    """``params`` as params.yaml holds it (lists, not tuples)."""
    return parse_yaml(params_yaml(params))


def write_params(path: Path, params: Params) -> None:
    path.write_text(params_yaml(params))


def without_torch(directory: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` for a Python process in which ``import torch`` fails (a sitecustomize module
    in ``directory``, first on PYTHONPATH, sets ``sys.modules["torch"] = None``)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    return {**env, "PYTHONPATH": os.pathsep.join(
        [str(directory), str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])}


TINY = {"train": {"epochs": 1, "batch_size": 64, "threads": 1, "device": "cpu"},
        "evaluate": {"batch_size": 100, "threads": 1, "device": "cpu"}}


@pytest.fixture
def tiny_params() -> Params:
    """Defaults shrunk for speed: small batches, one epoch, one thread."""
    return parse_params(TINY)


def make_project(root: Path, params: Params, train_count: int = 512,
                 test_count: int = 256) -> Layout:
    """A directory laid out like the repository: params.yaml and synthetic prepared data."""
    from stages.preprocess import main as preprocess

    layout = Layout(root)
    write_raw_dir(layout.raw, train_count, test_count)
    write_params(layout.params, params)
    preprocess(layout)
    return layout


@pytest.fixture
def project(tmp_path: Path, tiny_params: Params) -> Layout:
    return make_project(tmp_path / "project", tiny_params)


TINY_BUDGET = {"epochs": 1}


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """A temporary git copy of the project after a real ``dvc repro`` with a tiny budget
    (real MNIST through the download stage), results committed: ``(DvcRepo, output)``."""
    from tests.dvc_repo import DvcRepo

    repo = DvcRepo.copy_of_project(tmp_path_factory.mktemp("e2e") / "repo")
    repo.set_params(train=TINY_BUDGET)
    repo.commit("tiny budget")
    output = repo.dvc("repro").stdout
    repo.commit("baseline")
    return repo, output


@pytest.fixture(scope="session")
def trained_project(request) -> Path:
    """A directory holding the real data/raw, a trained data/model and its data/onnx: this
    checkout if ``dvc repro`` has run here, else the e2e copy (made on first use)."""
    needed = ("data/raw/t10k-images-idx3-ubyte", "data/raw/t10k-labels-idx1-ubyte",
              "data/model/model.pt", "data/onnx/model.onnx")
    if all((REPO_ROOT / name).is_file() for name in needed):
        return REPO_ROOT
    repo, _ = request.getfixturevalue("pipeline")
    return repo.root



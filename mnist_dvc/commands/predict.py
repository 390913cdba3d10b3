"""Predict the class (the digit, for MNIST) of image files with the trained model (not a
pipeline stage).

``mnist-dvc predict IMAGE...`` prints each image's class and its probability;
``--json`` prints a JSON list instead. Each PNG or JPEG is fitted into the model's image size
(28x28 for MNIST) the way MNIST itself was made (``mnist_dvc.data.digit_image``), then
normalized exactly as preprocess did, with the mean and std saved with the model; the class
names are the ones the model file records.

The model runs in onnxruntime when the export stage's ``data/onnx/model.onnx`` exists and
was exported from ``data/model/model.pt`` (or ``--model`` names a ``.onnx`` file): torch is
then never imported, and one image takes a fraction of a second instead of the seconds
``import torch`` costs. ``--runtime torch`` runs the PyTorch model; both give the same
classes (the export stage checks it on the whole test set).

An image that cannot be read, or holds no digit, is reported on stderr (one line naming the
file) and in the JSON; the others are still predicted, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnist_dvc.config.export import onnx_model
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.digit_image import ImageError, load_image
from mnist_dvc.data.prepared import normalize
from mnist_dvc.errors import StageError
from mnist_dvc.files import file_digest

if TYPE_CHECKING:
    import torch

MODEL_FILE = Layout().model
ONNX_FILE = onnx_model(Layout())
RUNTIMES = ("auto", "onnx", "torch")


@dataclass(frozen=True)
class Predictor:
    """A model as a function of uint8 images (N, height, width) -> probabilities (N, classes),
    with the image shape and the class names it was trained for."""

    probabilities: Callable[[np.ndarray], np.ndarray]
    image_shape: tuple[int, int]
    class_names: tuple[str, ...]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.probabilities(images)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    results = predict_files(args.images, choose_model(args.runtime, args.model))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            if "class" in result:
                print(f"{result['image']}: {result['class']} "
                      f"(probability {result['probability']:.4f})")
    if any("error" in result for result in results):
        sys.exit(1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mnist-dvc predict",
        description="Predict the class of PNG or JPEG images (the handwritten digit, for "
                    "MNIST) with the trained model.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    parser.add_argument("--model", type=Path,
                        help=f"a model saved by the train stage (.pt) or written by the export "
                        f"stage (.onnx); default: {ONNX_FILE} if it was exported from "
                        f"{MODEL_FILE}, else {MODEL_FILE}")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help="onnx: onnxruntime, without torch; torch: PyTorch; auto (default): "
                        "onnx for a .onnx model, torch for a .pt one")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {image, class, probability} or {image, error}")
    return parser.parse_args(argv)


def choose_model(runtime: str, model: Path | None) -> Path:
    """The model file to use: ``model`` if given (its suffix must suit ``runtime``), else the
    ONNX model while it matches the trained one, else the trained one."""
    if model is not None:
        if runtime != "auto" and (model.suffix == ".onnx") != (runtime == "onnx"):
            kind = "an ONNX model (.onnx)" if runtime == "onnx" else "a PyTorch model (.pt)"
            raise StageError(f"{model}: --runtime {runtime} needs {kind}")
        return model
    if runtime == "torch":
        return MODEL_FILE
    if runtime == "onnx" or is_current_export(ONNX_FILE, MODEL_FILE):
        return ONNX_FILE
    return MODEL_FILE


def is_current_export(onnx_file: Path, model_file: Path) -> bool:
    """Whether ``onnx_file`` exists and was exported from ``model_file`` as it is now (or
    ``model_file`` is absent: a deployment may ship the ONNX model alone).

    An ONNX model older than the trained one (``dvc repro train`` without export) is passed
    over with a note, not used: it would give the old model's answers.
    """
    if not onnx_file.is_file():
        return False
    if not model_file.is_file():
        return True
    from mnist_dvc.model.onnx_runtime import OnnxModel

    if OnnxModel.load(onnx_file).source_sha256 == file_digest(model_file, "sha256"):
        return True
    print(f"note: {onnx_file} was not exported from {model_file} (run dvc repro); "
          f"using {model_file}", file=sys.stderr)
    return False


def predict_files(paths: Sequence[str | Path], model_path: Path) -> list[dict]:
    """One result per path, in order: ``{image, class, probability}`` or ``{image, error}``.

    A ``.onnx`` model runs in onnxruntime, any other file is a PyTorch model saved by train.
    The model is loaded first, so a missing model fails before any image is read; the
    readable images then go through it in one batch.
    """
    predict = load_predictor(model_path)
    results: list[dict] = []
    images: list[np.ndarray] = []
    for path in paths:
        try:
            images.append(load_image(path, predict.image_shape))
            results.append({"image": str(path)})
        except ImageError as err:
            print(f"error: {err}", file=sys.stderr)
            results.append({"image": str(path), "error": str(err)})
    if images:
        probs = predict(np.stack(images))
        good = (result for result in results if "error" not in result)
        for result, k, prob in zip(good, probs.argmax(1).tolist(), probs.max(1).tolist(),
                                   strict=True):
            result.update({"class": predict.class_names[k], "probability": round(prob, 4)})
    return results


def load_predictor(model_path: Path) -> Predictor:
    """The model at ``model_path`` as a function of uint8 images; torch is imported only for
    a PyTorch model."""
    if model_path.suffix == ".onnx":
        from mnist_dvc.model.onnx_runtime import OnnxModel, pixels_of

        onnx = OnnxModel.load(model_path)
        return Predictor(lambda images: np.exp(onnx.log_probs(pixels_of(images))),
                         onnx.input_shape, onnx.class_names)
    from mnist_dvc.model.nets import load_model, predict_log_probs

    model, _, normalization, dataset = load_model(model_path)
    return Predictor(lambda images: predict_log_probs(
        model, to_model_input(images, *normalization), batch_size=len(images)).exp().numpy(),
        dataset.image_shape, dataset.class_names)


def to_model_input(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W), normalized as preprocess does."""
    import torch

    return torch.from_numpy(normalize(images, mean, std))


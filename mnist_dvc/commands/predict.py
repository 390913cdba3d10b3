"""Predict the class (the digit, for MNIST) of image files with the trained model (not a
pipeline stage).

``mnist-dvc predict IMAGE...`` prints each image's class and its probability;
``--json`` prints a JSON list instead. Each PNG or JPEG is fitted into the model's image size
(28x28 for MNIST) the way MNIST itself was made (``mnist_dvc.data.digit_image``), then
normalized exactly as preprocess did, with the mean and std saved with the model; the class
names are the ones the model file records.

An image that cannot be read, or holds no digit, is reported on stderr (one line naming the
file) and in the JSON; the others are still predicted, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.digit_image import ImageError, load_image
from mnist_dvc.data.prepared import normalize
from mnist_dvc.model.nets import load_model, predict_log_probs

MODEL_FILE = Layout().model


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    results = predict_files(args.images, args.model)
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
    parser.add_argument("--model", type=Path, default=MODEL_FILE,
                        help=f"model saved by the train stage (default: {MODEL_FILE})")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {image, class, probability} or {image, error}")
    return parser.parse_args(argv)


def predict_files(paths: Sequence[str | Path], model_path: Path) -> list[dict]:
    """One result per path, in order: ``{image, class, probability}`` or ``{image, error}``.

    The model is loaded first, so a missing model fails before any image is read; the
    readable images then go through it in one batch.
    """
    model, _, normalization, dataset = load_model(model_path)
    results: list[dict] = []
    images: list[np.ndarray] = []
    for path in paths:
        try:
            images.append(load_image(path, dataset.image_shape))
            results.append({"image": str(path)})
        except ImageError as err:
            print(f"error: {err}", file=sys.stderr)
            results.append({"image": str(path), "error": str(err)})
    if images:
        inputs = to_model_input(np.stack(images), normalization.mean, normalization.std)
        probs = predict_log_probs(model, inputs, batch_size=len(inputs)).exp()
        best, classes = probs.max(dim=1)
        good = (result for result in results if "error" not in result)
        for result, k, prob in zip(good, classes.tolist(), best.tolist(), strict=True):
            result.update({"class": dataset.class_names[k], "probability": round(prob, 4)})
    return results


def to_model_input(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W), normalized as preprocess does."""
    return torch.from_numpy(normalize(images, mean, std))


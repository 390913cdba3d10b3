"""Stage 4, evaluate: score the trained model on the test set.

Writes ``metrics/eval.json`` (the headline: accuracy, errors, mean loss, macro F1 and the
worst class's F1, ``worst_digit_f1``), ``metrics/predictions.csv`` (one row per test image:
the actual and the predicted class, by name, and its probability; DVC draws the confusion
matrix from it, and review compares two revisions image by image), ``metrics/per_class.csv``
(precision, recall, F1 and support per class) and ``metrics/misclassified.png``, a grid of
the images it got wrong. The class names and image shape are the ones the model file records.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mnist_dvc.config.evaluate import EvaluateConfig, EvaluateParams
from mnist_dvc.config.schema import load_config
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.digit_grid import digit_grid, png_bytes
from mnist_dvc.data.prepared import Normalization, read_split
from mnist_dvc.data.spec import read_dataset
from mnist_dvc.errors import StageError, run_stage
from mnist_dvc.files import write_bytes_atomic, write_csv_atomic, write_json_atomic
from mnist_dvc.model.nets import load_model, score
from mnist_dvc.runtime import configure_torch, select_device, to_device

SCORES = ("precision", "recall", "f1")  # per class
PREDICTION_COLUMNS = ("image", "actual", "predicted", "probability")


def main(layout: Layout = Layout()) -> None:
    evaluate(load_config(layout.params, EvaluateConfig).evaluate, layout)


def evaluate(cfg: EvaluateParams, layout: Layout) -> dict[str, float]:
    """Score the model and write the metrics and plot data; returns the metrics."""
    device = select_device(cfg.device, "evaluate.device")
    configure_torch(cfg.threads, device)
    saved = load_model(layout.model, device)
    data = read_dataset(layout.prepared)
    if (data.image_shape, data.class_names) != (saved.dataset.image_shape,
                                                saved.dataset.class_names):
        raise StageError(f"{layout.model} was trained for {saved.dataset.describe()}, but "
                         f"{layout.prepared} holds {data.describe()} (rerun train: dvc repro)")
    names = saved.dataset.class_names
    test = to_device(read_split(layout.prepared, "test"), device)
    log_probs, loss, accuracy = score(saved.model, *test, cfg.batch_size)
    probability, predicted_t = log_probs.exp().max(1)
    actual, predicted = test.labels.cpu().numpy(), predicted_t.cpu().numpy()
    scores = per_class_scores(actual, predicted, len(names))
    metrics = {
        "accuracy": round(accuracy, 6),
        "errors": int((actual != predicted).sum()),
        "loss": round(loss, 6),
        "macro_f1": round(float(scores["f1"].mean()), 6),
        "worst_digit_f1": round(float(scores["f1"].min()), 6),
    }
    grid = misclassified_grid(test.images.cpu(), actual, predicted, saved.normalization, names)
    # The headline last: a run cut short leaves no eval.json that reads like a finished one.
    write_csv_atomic(layout.predictions, PREDICTION_COLUMNS, zip(
        range(len(actual)), (names[k] for k in actual), (names[k] for k in predicted),
        (round(p, 6) for p in probability.cpu().tolist()), strict=True))
    write_csv_atomic(layout.per_class, ["class", *SCORES, "support"], (
        [names[k], *(round(float(scores[name][k]), 6) for name in SCORES),
         int(scores["support"][k])] for k in range(len(names))))
    write_bytes_atomic(layout.misclassified, png_bytes(grid))
    write_json_atomic(layout.eval_metrics, metrics)
    print(f"evaluate: accuracy {metrics['accuracy']:.4f}, {metrics['errors']} errors, "
          f"loss {metrics['loss']:.4f}, macro F1 {metrics['macro_f1']:.4f}")
    return metrics


def per_class_scores(actual: np.ndarray, predicted: np.ndarray,
                     num_classes: int) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (arrays indexed by class).

    A class never predicted, or never present, scores 0 rather than NaN.
    """
    confusion = np.bincount(actual * num_classes + predicted,
                            minlength=num_classes**2).reshape(num_classes, num_classes)
    hits = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    precision = _ratio(hits, confusion.sum(axis=0))
    recall = _ratio(hits, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)),
                     where=denominator != 0)


def misclassified_grid(images: torch.Tensor, actual: np.ndarray, predicted: np.ndarray,
                       normalization: Normalization, names: Sequence[str],
                       limit: int = 100) -> Image.Image:
    """The first ``limit`` misclassified test images, each captioned "true>predicted"."""
    wrong = np.flatnonzero(actual != predicted)[:limit]
    ink = images[wrong, 0] * normalization.std + normalization.mean  # back to the bytes
    pixels = ink.mul(255).round().clamp(0, 255).byte().numpy()
    return digit_grid(pixels, range(len(wrong)),
                      [f"{names[actual[i]]}>{names[predicted[i]]}" for i in wrong])


if __name__ == "__main__":
    run_stage(main, __doc__)

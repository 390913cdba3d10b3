"""Stage 4, evaluate: score the trained model on the test set.

Writes ``metrics/eval.json`` (accuracy, mean loss, error count, macro F1 and per-class
precision / recall / F1), ``metrics/confusion.csv`` (one row per test image: actual and
predicted digit, for DVC's confusion template), ``metrics/per_class.csv`` and
``metrics/misclassified.png``, a grid of the digits the model got wrong.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from stages.artifacts import write_bytes_atomic, write_csv_atomic, write_json_atomic
from stages.errors import run_stage
from stages.model import load_model, score
from stages.params import load_params
from stages.paths import CONFUSION, EVAL_METRICS, MISCLASSIFIED, MODEL_FILE, PER_CLASS, PREPARED_DIR
from stages.runtime import configure_torch, load_split, select_device

DIGITS = range(10)
SCORES = ("precision", "recall", "f1")  # per digit
GRID_COLUMNS = 10
GRID_SCALE = 2  # each 28x28 digit drawn at 56x56
CAPTION_HEIGHT = 14


@dataclass
class Paths:
    prepared: Path = PREPARED_DIR
    model: Path = MODEL_FILE
    metrics: Path = EVAL_METRICS
    confusion: Path = CONFUSION
    per_class: Path = PER_CLASS
    misclassified: Path = MISCLASSIFIED


def main() -> None:
    params = load_params()
    evaluate(params.evaluate.batch_size, params.train.device, params.train.threads, Paths())


def evaluate(batch_size: int, device_name: str, threads: int, paths: Paths) -> dict:
    """Score the model and write the metrics and plot data; returns the metrics."""
    device = select_device(device_name)
    configure_torch(threads, device)
    model, saved = load_model(paths.model, device)
    test = load_split(paths.prepared, "test", device)
    log_probs, loss, accuracy = score(model, test["images"], test["labels"], batch_size)
    actual, predicted = test["labels"].cpu().numpy(), log_probs.argmax(1).cpu().numpy()
    scores = per_class_scores(actual, predicted)
    errors = int((actual != predicted).sum())
    metrics = {
        "accuracy": round(accuracy, 6),
        "loss": round(loss, 6),
        "errors": errors,
        "macro_f1": round(float(scores["f1"].mean()), 6),
        "per_class": {str(digit): {name: round(float(scores[name][digit]), 6)
                                   for name in SCORES}
                      for digit in DIGITS},
    }
    write_json_atomic(paths.metrics, metrics)
    write_csv_atomic(paths.confusion, ["actual", "predicted"],
                     zip(actual, predicted, strict=True))
    per_class_rows = []
    for digit in DIGITS:
        rounded = metrics["per_class"][str(digit)]
        per_class_rows.append([digit, *(rounded[name] for name in SCORES),
                               int(scores["support"][digit])])
    write_csv_atomic(paths.per_class, ["digit", *SCORES, "support"], per_class_rows)
    grid = misclassified_grid(test["images"].cpu(), actual, predicted, saved["mean"], saved["std"])
    write_bytes_atomic(paths.misclassified, png_bytes(grid))
    print(f"evaluate: accuracy {metrics['accuracy']:.4f}, {metrics['errors']} errors, "
          f"loss {metrics['loss']:.4f}, macro F1 {metrics['macro_f1']:.4f}")
    return metrics


def per_class_scores(actual: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per digit (arrays indexed by digit).

    A digit never predicted, or never present, scores 0 rather than NaN.
    """
    confusion = np.bincount(actual * 10 + predicted, minlength=100).reshape(10, 10)
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
                       mean: float, std: float, limit: int = 100) -> Image.Image:
    """The first ``limit`` misclassified test digits, each captioned "true>predicted"."""
    wrong = np.flatnonzero(actual != predicted)[:limit]
    tile = 28 * GRID_SCALE
    rows = max(1, -(-len(wrong) // GRID_COLUMNS))
    grid = Image.new("L", (GRID_COLUMNS * tile, rows * (tile + CAPTION_HEIGHT)))
    draw = ImageDraw.Draw(grid)
    for slot, index in enumerate(wrong):
        pixels = (images[index, 0] * std + mean).mul(255).round().clamp(0, 255).byte()
        digit = Image.fromarray(pixels.numpy()).resize((tile, tile), Image.Resampling.NEAREST)
        x, y = (slot % GRID_COLUMNS) * tile, (slot // GRID_COLUMNS) * (tile + CAPTION_HEIGHT)
        grid.paste(digit, (x, y))
        draw.text((x + 14, y + tile + 1), f"{actual[index]}>{predicted[index]}", fill=255)
    return grid


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


if __name__ == "__main__":
    run_stage(main)

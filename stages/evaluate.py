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

import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from stages.artifacts import write_bytes_atomic, write_json_atomic
from stages.errors import run_stage
from stages.model import load_model, predict_log_probs
from stages.params import load_params
from stages.paths import CONFUSION, EVAL_METRICS, MISCLASSIFIED, MODEL_FILE, PER_CLASS, PREPARED_DIR
from stages.prepared import load_split
from stages.runtime import configure_torch, select_device

DIGITS = range(10)
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
    log_probs = predict_log_probs(model, test["images"], batch_size)
    loss = F.nll_loss(log_probs, test["labels"], reduction="mean").item()
    predictions = pd.DataFrame({"actual": test["labels"].cpu().numpy(),
                                "predicted": log_probs.argmax(1).cpu().numpy()})
    per_class = per_class_scores(predictions)
    metrics = {
        "accuracy": round(float((predictions.actual == predictions.predicted).mean()), 6),
        "loss": round(loss, 6),
        "errors": int((predictions.actual != predictions.predicted).sum()),
        "macro_f1": round(float(per_class.f1.mean()), 6),
        "per_class": per_class[["precision", "recall", "f1"]].round(6).rename(index=str)
                              .to_dict(orient="index"),
    }
    write_json_atomic(paths.metrics, metrics)
    write_bytes_atomic(paths.confusion, predictions.to_csv(index=False).encode())
    write_bytes_atomic(paths.per_class,
                       per_class.round(6).to_csv(index_label="digit").encode())
    grid = misclassified_grid(test["images"].cpu(), predictions, saved["mean"], saved["std"])
    write_bytes_atomic(paths.misclassified, png_bytes(grid))
    print(f"evaluate: accuracy {metrics['accuracy']:.4f}, {metrics['errors']} errors, "
          f"loss {metrics['loss']:.4f}, macro F1 {metrics['macro_f1']:.4f}")
    return metrics


def misclassified_grid(images: torch.Tensor, predictions: pd.DataFrame, mean: float,
                       std: float, limit: int = 100) -> Image.Image:
    """The first ``limit`` misclassified test digits, each captioned "true>predicted"."""
    wrong = predictions.index[predictions.actual != predictions.predicted][:limit]
    tile = 28 * GRID_SCALE
    rows = max(1, -(-len(wrong) // GRID_COLUMNS))
    grid = Image.new("L", (GRID_COLUMNS * tile, rows * (tile + CAPTION_HEIGHT)))
    draw = ImageDraw.Draw(grid)
    for slot, index in enumerate(wrong):
        pixels = (images[index, 0] * std + mean).mul(255).round().clamp(0, 255).byte()
        digit = Image.fromarray(pixels.numpy()).resize((tile, tile), Image.Resampling.NEAREST)
        x, y = (slot % GRID_COLUMNS) * tile, (slot // GRID_COLUMNS) * (tile + CAPTION_HEIGHT)
        grid.paste(digit, (x, y))
        actual, predicted = predictions.loc[index, ["actual", "predicted"]]
        draw.text((x + 14, y + tile + 1), f"{actual}>{predicted}", fill=255)
    return grid


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def per_class_scores(predictions: pd.DataFrame) -> pd.DataFrame:
    """Precision, recall, F1 and support per digit, from a confusion matrix."""
    confusion = pd.crosstab(predictions.actual, predictions.predicted).reindex(
        index=DIGITS, columns=DIGITS, fill_value=0)
    hits = pd.Series([confusion.at[d, d] for d in DIGITS], index=DIGITS, dtype=float)
    predicted = confusion.sum(axis=0).astype(float)
    actual = confusion.sum(axis=1).astype(float)
    precision = (hits / predicted).fillna(0.0)
    recall = (hits / actual).fillna(0.0)
    f1 = (2 * precision * recall / (precision + recall)).fillna(0.0)
    return pd.DataFrame({"precision": precision, "recall": recall, "f1": f1,
                         "support": actual.astype(int)})


if __name__ == "__main__":
    run_stage(main)

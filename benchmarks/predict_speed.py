"""Predict's speed, onnxruntime against PyTorch (docs/deploy.md), after ``dvc repro``: cold,
one image in fresh processes (alternating); batch, images/s over the test set, model loaded."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime
import torch

from mnist_dvc.config.export import onnx_model
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.idx import read_idx
from mnist_dvc.model.nets import load_model, predict_log_probs
from mnist_dvc.model.onnx_runtime import OnnxModel, pixels_of

IMAGE = "digits/seven.png"
TARGET = 0.4  # cold ONNX predict over cold PyTorch predict
REPEATS = 7  # cold runs of each runtime, alternating


def cold_seconds(runtime: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mnist_dvc", "predict", "--runtime", runtime, IMAGE],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def images_per_second(predict, pixels: np.ndarray, rounds: int = 3) -> float:
    predict(pixels[:1000])  # warm-up
    start = time.perf_counter()
    for _ in range(rounds):
        predict(pixels)
    return rounds * len(pixels) / (time.perf_counter() - start)


def main() -> None:
    layout, times = Layout(), {runtime: list[float]() for runtime in ("onnx", "torch")}
    for _ in range(REPEATS):
        for runtime, seconds in times.items():
            seconds.append(cold_seconds(runtime))
    onnx_s, torch_s = (statistics.median(times[r]) for r in ("onnx", "torch"))
    pixels = pixels_of(read_idx(layout.raw / "t10k-images-idx3-ubyte", 3, (28, 28)))
    exported, (model, _, (mean, std), _) = OnnxModel.load(onnx_model(layout)), \
        load_model(layout.model)
    rates = {"onnxruntime": images_per_second(exported.log_probs, pixels),
             "PyTorch": images_per_second(lambda x: predict_log_probs(
                 model, torch.from_numpy((x - np.float32(mean)) / np.float32(std)), 1000), pixels)}
    print(f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), onnxruntime {onnxruntime.__version__}")
    print(f"cold predict of {IMAGE}, median of {REPEATS}: onnxruntime {onnx_s:.2f} s, PyTorch "
          f"{torch_s:.2f} s: {onnx_s / torch_s:.2f}x (target <= {TARGET}x: "
          f"{'PASS' if onnx_s <= TARGET * torch_s else 'FAIL'}); each (s): " + "; ".join(
              f"{r} " + " ".join(f"{t:.2f}" for t in ts) for r, ts in times.items()))
    for name, rate in rates.items():
        print(f"{len(pixels):,} images in batches of 1,000: {name} {rate:,.0f} images/s")


if __name__ == "__main__":
    main()

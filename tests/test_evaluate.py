"""The evaluate stage: metric arithmetic and the files it writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from stages.evaluate import (
    CAPTION_HEIGHT,
    GRID_COLUMNS,
    GRID_SCALE,
    Paths,
    evaluate,
    misclassified_grid,
    per_class_scores,
)
from stages.prepared import write_split
from stages.preprocess import prepare_split
from stages.train import Paths as TrainPaths
from stages.train import train


def test_per_class_scores_match_hand_computation():
    actual = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    scores = per_class_scores(actual, predicted)
    # digit 0: 2 of 3 found, both predictions right; digit 1: 1 of 2, 1 of 2 predictions right
    assert scores["precision"][0] == 1.0 and scores["recall"][0] == pytest.approx(2 / 3)
    assert scores["f1"][0] == pytest.approx(0.8)
    assert scores["precision"][1] == 0.5 and scores["recall"][1] == 0.5
    assert scores["precision"][2] == 0.5 and scores["recall"][2] == 1.0
    # digits never seen nor predicted score 0, not NaN
    assert [scores[name][7] for name in ("precision", "recall", "f1", "support")] == [0, 0, 0, 0]
    assert not np.isnan(scores["f1"]).any()
    assert list(scores["support"][:3]) == [3, 2, 1]


def test_per_class_scores_agree_with_pandas_crosstab():
    rng = np.random.default_rng(0)
    actual = rng.integers(0, 10, 500)
    predicted = np.where(rng.random(500) < 0.8, actual, rng.integers(0, 10, 500))
    scores = per_class_scores(actual, predicted)
    confusion = pd.crosstab(actual, predicted).reindex(index=range(10), columns=range(10),
                                                       fill_value=0)
    for digit in range(10):
        hits = confusion.at[digit, digit]
        assert scores["precision"][digit] == pytest.approx(hits / confusion[digit].sum())
        assert scores["recall"][digit] == pytest.approx(hits / confusion.loc[digit].sum())
        assert scores["support"][digit] == confusion.loc[digit].sum()
        precision, recall = scores["precision"][digit], scores["recall"][digit]
        assert scores["f1"][digit] == pytest.approx(2 * precision * recall / (precision + recall))
    assert (predicted != actual).any() and (predicted == 9).any()


def test_evaluate_writes_consistent_metrics_and_plot_data(tmp_path, raw_dir, tiny_params):
    prepared = tmp_path / "prepared"
    for split in ("train", "test"):
        write_split(prepared, split, *prepare_split(raw_dir, split, tiny_params.preprocess))
    train_paths = TrainPaths(prepared=prepared, model=tmp_path / "model.pt",
                             checkpoint=tmp_path / "ckpt" / "last.pt",
                             metrics=tmp_path / "train.json", history=tmp_path / "h.csv")
    history = train(tiny_params, train_paths)

    paths = Paths(prepared=prepared, model=train_paths.model, metrics=tmp_path / "eval.json",
                  confusion=tmp_path / "confusion.csv", per_class=tmp_path / "per_class.csv",
                  misclassified=tmp_path / "misclassified.png")
    metrics = evaluate(100, "cpu", 1, paths)

    assert json.loads(paths.metrics.read_text()) == metrics
    assert set(metrics) == {"accuracy", "loss", "errors", "macro_f1", "per_class"}
    assert sorted(metrics["per_class"], key=int) == [str(d) for d in range(10)]
    # the same model on the same data: evaluate agrees with train's last epoch
    assert metrics["accuracy"] == pytest.approx(history[-1]["test_acc"], abs=1e-6)
    assert metrics["loss"] == round(history[-1]["test_loss"], 6)  # both use stages.model.score
    confusion = pd.read_csv(paths.confusion)
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == 256
    assert metrics["errors"] == int((confusion.actual != confusion.predicted).sum())
    assert metrics["accuracy"] == pytest.approx(1 - metrics["errors"] / 256)
    per_class = pd.read_csv(paths.per_class)
    assert list(per_class.columns) == ["digit", "precision", "recall", "f1", "support"]
    assert per_class.digit.tolist() == list(range(10))
    assert per_class.support.sum() == 256
    for row in per_class.itertuples():
        assert metrics["per_class"][str(row.digit)] == {
            "precision": row.precision, "recall": row.recall, "f1": row.f1}
    assert metrics["macro_f1"] == pytest.approx(per_class.f1.mean(), abs=1e-6)
    assert paths.misclassified.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_misclassified_grid_shows_each_wrong_digit_once():
    images = torch.rand(30, 1, 28, 28)
    actual = np.arange(30) % 10
    predicted = actual.copy()
    wrong = [3, 17, 29]
    predicted[wrong] = 0
    predicted[29] = 5

    grid = misclassified_grid(images, actual, predicted, mean=0.0, std=1.0)

    tile = 28 * GRID_SCALE
    assert grid.size == (GRID_COLUMNS * tile, tile + CAPTION_HEIGHT)  # one row holds all three
    pixels = np.asarray(grid)
    for slot, index in enumerate(wrong):
        drawn = pixels[:tile, slot * tile:(slot + 1) * tile][::GRID_SCALE, ::GRID_SCALE]
        expected = (images[index, 0] * 255).round().byte().numpy()
        assert np.array_equal(drawn, expected)
    assert not pixels[:, 3 * tile:].any()  # nothing drawn after the third tile
    assert pixels[tile:, :tile].any()  # a caption under the first


def test_misclassified_grid_of_a_perfect_model_is_empty():
    digits = np.array([1, 2])
    grid = misclassified_grid(torch.zeros(2, 1, 28, 28), digits, digits, 0.1307, 0.3081)
    assert not np.asarray(grid).any()

"""The evaluate stage: metric arithmetic and the files it writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mnist_dvc.data.digit_grid import CAPTION_HEIGHT, COLUMNS, TILE, tile_scale
from mnist_dvc.data.prepared import Normalization
from mnist_dvc.errors import StageError
from stages.evaluate import (
    evaluate,
    misclassified_grid,
    per_class_scores,
)
from stages.train import train

DIGITS = [str(k) for k in range(10)]


def test_per_class_scores_match_hand_computation():
    actual = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    scores = per_class_scores(actual, predicted, 10)
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
    scores = per_class_scores(actual, predicted, 10)
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


def test_evaluate_writes_consistent_metrics_and_plot_data(project, tiny_params):
    history = train(tiny_params, project)
    metrics = evaluate(tiny_params.evaluate, project)

    assert json.loads(project.eval_metrics.read_text()) == metrics
    assert list(metrics) == ["accuracy", "errors", "loss", "macro_f1", "worst_digit_f1"]
    # the same model on the same data: evaluate agrees with train's last epoch
    assert metrics["accuracy"] == pytest.approx(history[-1]["test_acc"], abs=1e-6)
    assert metrics["loss"] == round(history[-1]["test_loss"], 6)  # both score with nets.score
    predictions = pd.read_csv(project.predictions)
    assert list(predictions.columns) == ["image", "actual", "predicted", "probability"]
    assert predictions.image.tolist() == list(range(256))
    test_labels = np.load(project.prepared / "test_labels.npy")
    assert np.array_equal(predictions.actual, test_labels)
    assert metrics["errors"] == int((predictions.actual != predictions.predicted).sum())
    assert metrics["accuracy"] == pytest.approx(1 - metrics["errors"] / 256)
    assert predictions.probability.between(0.1, 1.0).all()  # the top of 10 probabilities
    per_class = pd.read_csv(project.per_class)
    assert list(per_class.columns) == ["class", "precision", "recall", "f1", "support"]
    assert per_class["class"].tolist() == list(range(10))  # the class names "0" .. "9"
    assert per_class.support.tolist() == np.bincount(test_labels, minlength=10).tolist()
    assert metrics["macro_f1"] == pytest.approx(per_class.f1.mean(), abs=1e-6)
    assert metrics["worst_digit_f1"] == per_class.f1.min()
    assert project.misclassified.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_a_damaged_model_is_refused_and_the_metrics_are_untouched(project, tiny_params):
    train(tiny_params, project)
    evaluate(tiny_params.evaluate, project)
    before = {p: p.read_bytes() for p in project.metrics.iterdir()}
    data = bytearray(project.model.read_bytes())
    data[-4096 - 100:-100] = bytes(4096)  # a zeroed 4 KiB block
    project.model.write_bytes(bytes(data))

    with pytest.raises(StageError, match=r"model\.pt: checksum mismatch"):
        evaluate(tiny_params.evaluate, project)
    assert {p: p.read_bytes() for p in project.metrics.iterdir()} == before


def test_misclassified_grid_shows_each_wrong_digit_once():
    images = torch.rand(30, 1, 28, 28)
    actual = np.arange(30) % 10
    predicted = actual.copy()
    wrong = [3, 17, 29]
    predicted[wrong] = 0
    predicted[29] = 5

    grid = misclassified_grid(images, actual, predicted, Normalization(0.0, 1.0), DIGITS)

    scale = tile_scale((28, 28))
    tile = 28 * scale
    assert tile == TILE
    assert grid.size == (COLUMNS * tile, tile + CAPTION_HEIGHT)  # one row holds all three
    pixels = np.asarray(grid)
    for slot, index in enumerate(wrong):
        drawn = pixels[:tile, slot * tile:(slot + 1) * tile][::scale, ::scale]
        expected = (images[index, 0] * 255).round().byte().numpy()
        assert np.array_equal(drawn, expected)
    assert not pixels[:, 3 * tile:].any()  # nothing drawn after the third tile
    assert pixels[tile:, :tile].any()  # a caption under the first


def test_misclassified_grid_of_a_perfect_model_is_empty():
    digits = np.array([1, 2])
    grid = misclassified_grid(torch.zeros(2, 1, 28, 28), digits, digits,
                              Normalization(0.1307, 0.3081), DIGITS)
    assert not np.asarray(grid).any()

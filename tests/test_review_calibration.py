"""mnist-dvc calibrate on a tiny config: its errors are the pipeline's, and its
rates follow from them by the verdict rule, held to scipy's paired t-test."""

from __future__ import annotations

import itertools
import json

import numpy as np
from scipy import stats

from mnist_dvc.commands import calibrate
from mnist_dvc.commands.review import CALIBRATION, FIRST_SEED, SEED_THREADS
from mnist_dvc.config.params import with_train
from stages.evaluate import evaluate
from stages.train import train
from tests.conftest import make_project


def scipy_called(base: list[int], head: list[int]) -> str | None:
    """"better" (fewer errors) or "worse" where the paired t-test's p < 0.05."""
    differences = np.subtract(base, head)  # images right, head minus base
    if np.all(differences == differences[0]):  # no spread: scipy's t is 0/0 or x/0
        return None if differences[0] == 0 else "better" if differences[0] > 0 else "worse"
    p = stats.ttest_rel(-np.asarray(head), -np.asarray(base)).pvalue
    return None if p >= 0.05 else "better" if differences.mean() > 0 else "worse"


def test_the_calibration_counts_what_the_pipeline_would(tmp_path, tiny_params):
    # a learning rate this low leaves a few dozen of the 256 test images wrong, seed-dependent
    params = with_train(tiny_params, lr=0.002, threads=SEED_THREADS)
    layout = make_project(tmp_path / "project", params)
    calibrate.main(["--root", str(layout.root), "--seeds", "4", "--sizes", "2",
                    "--change", "train.lr=0.03"])
    result = json.loads((layout.root / CALIBRATION).read_text())
    seeds = [str(FIRST_SEED + i) for i in range(4)]
    assert list(result["errors"]) == ["defaults", "train.lr=0.03"]
    assert all(list(errors) == seeds for errors in result["errors"].values())
    assert (result["threads"], result["test_images"]) == (SEED_THREADS, 256)

    # seed 100 through the train and evaluate stages: the same count
    train(with_train(params, seed=FIRST_SEED), layout)
    metrics = evaluate(params.evaluate, layout)
    assert result["errors"]["defaults"][seeds[0]] == metrics["errors"]

    defaults = list(result["errors"]["defaults"].values())
    changed = list(result["errors"]["train.lr=0.03"].values())
    assert len(set(defaults)) > 1  # the seeds spread: the test below means something
    assert result["sd_images"] == np.std(defaults, ddof=1)
    # false positives: every ordered pick of 2 + 2 of the 4 seeds
    picks = list(itertools.permutations(range(4), 4))
    expected = np.mean([scipy_called([defaults[i] for i in p[:2]],
                                     [defaults[i] for i in p[2:]]) is not None for p in picks])
    assert result["false_positive_rate"]["2"] == expected
    # power: every pair of seeds, defaults against the change, paired by seed
    effect = np.mean(defaults) - np.mean(changed)
    assert result["power"]["train.lr=0.03"]["effect_images"] == effect
    assert effect > 0  # lr 0.03 learns the synthetic digits
    expected = np.mean([scipy_called([defaults[i] for i in s], [changed[i] for i in s])
                        == "better" for s in itertools.combinations(range(4), 2)])
    assert result["power"]["train.lr=0.03"]["2"] == expected

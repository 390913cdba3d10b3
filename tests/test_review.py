"""mnist_dvc.commands.review: McNemar's exact test, the image-by-image counts, the verdict,
the report;
end to end (marked e2e) on the pipeline fixture's repository, against the real dvc CLI."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats
from scipy.stats import binomtest

from mnist_dvc.commands import paired_stats, review, review_charts
from mnist_dvc.commands.review import Comparison, Review
from mnist_dvc.config.params import Params
from mnist_dvc.data.idx import encode_idx
from mnist_dvc.errors import StageError

# the committed default learning rate, as the params table prints it
DEFAULT_LR = f"{Params().train.lr:g}"

# --- McNemar, counting, verdict --------------------------------------------------------------
COUNTS = [0, 1, 2, 3, 5, 6, 7, 11, 19, 25, 30, 49, 50, 120, 333]


@pytest.mark.parametrize("fixed", COUNTS)
@pytest.mark.parametrize("broken", COUNTS)
def test_mcnemar_exact_equals_scipy_binomtest(fixed, broken):
    expected = binomtest(min(fixed, broken), fixed + broken, 0.5).pvalue if fixed + broken \
        else 1.0
    assert review.mcnemar_exact(fixed, broken) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def predictions_csv(actual: np.ndarray, predicted: np.ndarray, rng: np.random.Generator) -> bytes:
    """evaluate's predictions.csv, rows shuffled: review must align them by image."""
    frame = pd.DataFrame({"image": np.arange(len(actual)), "actual": actual,
                          "predicted": predicted, "probability": rng.random(len(actual))})
    return frame.sample(frac=1, random_state=1).to_csv(index=False).encode()


def direct_counts(old: bytes, new: bytes) -> tuple[int, int, int]:
    """(fixed, broken, wrong on both) counted with pandas, joined on the image column."""
    both = pd.read_csv(io.BytesIO(old)).merge(pd.read_csv(io.BytesIO(new)), on="image",
                                              suffixes=("_old", "_new"))
    assert (both.actual_old == both.actual_new).all()
    old_right = both.predicted_old == both.actual_old
    new_right = both.predicted_new == both.actual_new
    return (int((~old_right & new_right).sum()), int((old_right & ~new_right).sum()),
            int((~old_right & ~new_right).sum()))


@pytest.mark.parametrize("seed", range(4))
def test_fixed_broken_and_shared_match_a_direct_count(seed):
    rng = np.random.default_rng(seed)
    actual = rng.integers(0, 10, 2000)
    old = np.where(rng.random(2000) < 0.05, rng.integers(0, 10, 2000), actual)
    new = np.where(rng.random(2000) < 0.04 * seed, rng.integers(0, 10, 2000), old)
    new = np.where(rng.random(2000) < 0.3, actual, new)  # the change fixes some
    old_csv, new_csv = predictions_csv(actual, old, rng), predictions_csv(actual, new, rng)

    result = review.compare(*review.read_predictions(old_csv, "base"),
                            *review.read_predictions(new_csv, "workspace"))
    fixed, broken, shared = direct_counts(old_csv, new_csv)
    assert (len(result.fixed), len(result.broken), result.shared) == (fixed, broken, shared)
    assert np.all(old[result.fixed] != actual[result.fixed])
    assert np.all(new[result.fixed] == actual[result.fixed])
    assert np.all(new[result.broken] != actual[result.broken])
    expected_p = binomtest(min(fixed, broken), fixed + broken, 0.5).pvalue if fixed + broken \
        else 1.0
    assert result.p == pytest.approx(expected_p, rel=1e-9)


def test_predictions_of_different_test_images_are_refused():
    rng = np.random.default_rng(0)
    actual = rng.integers(0, 10, 100)
    other = actual.copy()
    other[5] = (other[5] + 1) % 10
    with pytest.raises(StageError, match="same test images"):
        review.compare(actual, actual, other, other)


@pytest.mark.parametrize("text", ["image,actual\n0,1\n", "image,actual,predicted\n0,1\n",
                                  "image,actual,predicted\n1,1,1\n", "\xff\xfe"])
def test_an_unreadable_predictions_file_is_one_error(text):
    with pytest.raises(StageError, match=r"predictions\.csv at main: unreadable"):
        review.read_predictions(text.encode("latin-1"), "main")


def test_predictions_by_class_name_are_compared_in_image_order():
    old = b"image,actual,predicted,probability\n1,cat,dog,0.6\n0,ant,ant,0.9\n2,dog,dog,0.8\n"
    new = b"image,actual,predicted,probability\n0,ant,cat,0.5\n1,cat,cat,0.7\n2,dog,dog,0.9\n"
    old_actual, old_predicted = review.read_predictions(old, "main")
    actual, predicted = review.read_predictions(new, "the workspace")
    assert old_actual.tolist() == actual.tolist() == ["ant", "cat", "dog"]
    comparison = review.compare(old_actual, old_predicted, actual, predicted)
    assert (comparison.fixed.tolist(), comparison.broken.tolist()) == ([1], [0])


def test_verdicts_name_the_direction_and_the_counts():
    assert review.verdict(0, 0, review.mcnemar_exact(0, 0)) == \
        "no change (p = 1): 0 fixed, 0 broken"
    assert review.verdict(7, 11, review.mcnemar_exact(7, 11)) == \
        "no evidence of a change (p = 0.48): 7 fixed, 11 broken"
    improvement = review.verdict(25, 6, review.mcnemar_exact(25, 6))
    assert improvement.startswith("evidence of an improvement (p = 0.00")
    assert improvement.endswith("): 25 fixed, 6 broken")
    assert review.verdict(6, 25, 0.0009).startswith("evidence of a regression (p = 0.0009)")
    assert review.verdict(300, 5, 1e-80).startswith("evidence of an improvement (p < 0.0001)")


def test_the_threshold_is_strictly_below_alpha():
    assert review.verdict(20, 9, review.ALPHA).startswith("no evidence of a change")
    assert review.verdict(20, 9, review.ALPHA * 0.999).startswith("evidence of an improvement")


# --- the report --------------------------------------------------------------------------------
def synthetic_review(**changes: object) -> Review:
    comparison = Comparison(np.arange(12), np.arange(100, 105), 40, review.mcnemar_exact(12, 5))
    fields = dict(
        base="main", source="committed at main",
        params={"params.yaml": {"train.lr": {"old": 0.025, "new": 0.02, "diff": -0.005}}},
        code=[("stages/train.py", False), ("mnist_dvc/model/nets.py", True)],
        old={"eval.json": {"accuracy": 0.9921, "errors": 79, "loss": 0.025132},
             "train.json": {"epoch": 2, "train_loss": 0.03}},
        new={"eval.json": {"accuracy": 0.9928, "errors": 72, "loss": 0.0251, "macro_f1": 0.99},
             "train.json": {"epoch": 2, "train_loss": 0.031}},
        comparison=comparison, images=10000,
        spread={"machine": "AMD EPYC, 2 cores", "accuracy_by_seed": {
            str(s): a for s, a in enumerate([0.9915, 0.9921, 0.9928, 0.9910, 0.9912])},
            "mean": 0.99172, "min": 0.9910, "max": 0.9928},
        charts={"Accuracy": b"png", "digits the change fixed": b"png", "empty": None})
    return Review(**{**fields, **changes})


def table_rows(report: str, heading: str) -> dict[str, list[str]]:
    """The markdown table under ``heading``: first cell -> the other cells."""
    lines = report[report.index(heading):].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return {row[0]: row[1:] for row in rows}


def test_the_report_shows_params_code_metrics_verdict_spread_and_charts():
    r = synthetic_review()
    report = review.render_report(r)
    assert table_rows(report, "### Params") == {"train.lr": ["0.025", "0.02"]}
    assert "- `stages/train.py`\n- `mnist_dvc/model/nets.py` (uncommitted)" in report
    rows = table_rows(report, "### metrics/eval.json")
    for key, cells in rows.items():
        old, new = r.old["eval.json"].get(key), r.new["eval.json"].get(key)
        assert cells[:2] == [str(old) if old is not None else "—", str(new)]
        if old is not None:
            assert float(cells[2]) == pytest.approx(new - old, abs=1e-9)
    assert rows["macro_f1"][2] == "—"  # not in the base: no change to show
    assert f"**Verdict: {review.verdict(12, 5, r.comparison.p)}.**" in report
    assert table_rows(report, "| Test images")["wrong on both"] == ["40"]
    assert ("the defaults' accuracy varies by 0.18 % (18 images) across seeds 0-4 on AMD EPYC, "
            "2 cores; this change moves it by +0.07 % (+7 images)") in report
    assert re.findall(r"!\[[^]]*\]\(([^)]+)\)", report) == ["accuracy.png",
                                                           "digits_the_change_fixed.png"]


def test_a_report_without_predictions_or_spread_still_has_the_rest():
    report = review.render_report(synthetic_review(
        comparison=None, spread=None, params={}, code=[], notes=["main has no predictions"]))
    assert "> note: main has no predictions" in report
    assert "No image-by-image comparison" in report and "Verdict" not in report
    assert "No params changed." in report and "No pipeline code changed." in report
    assert "Seed spread" not in report
    assert table_rows(report, "### metrics/eval.json")["errors"] == ["79", "72", "-7"]


def test_seeds_that_are_not_a_range_are_listed():
    spread = {"machine": "m", "accuracy_by_seed": {"0": 0.99, "3": 0.991, "7": 0.9905},
              "min": 0.99, "max": 0.991}
    line = review.spread_line(spread, 10000, None)[0]
    assert "by 0.10 % (10 images) across seeds 0, 3, 7 on m." in line


def test_write_report_replaces_only_the_previous_reports_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    review.write_report(tmp_path, synthetic_review(charts={"Old chart": b"x"}))
    assert (tmp_path / "old_chart.png").is_file()
    review.write_report(tmp_path, synthetic_review(charts={"New chart": b"y"}))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "new_chart.png", "notes.txt", "report.md", "summary.json"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["fixed"], summary["broken"], summary["shared"]) == (12, 5, 40)
    assert summary["p_value"] == pytest.approx(binomtest(5, 17, 0.5).pvalue, rel=1e-9)
    assert summary["files"] == ["report.md", "new_chart.png"]


def assert_png_not_blank(path: Path) -> None:
    with Image.open(path) as image:
        image.load()
        assert len(np.unique(np.asarray(image))) > 1, path


def test_charts_render_offline_with_revisions_renamed(tmp_path):
    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json",
            "title": {"text": "Accuracy"}, "mark": "line",
            "data": {"values": [{"epoch": e, "acc": a, "rev": rev} for rev, accs in
                                (("abc123", [0.9, 0.95]), ("workspace", [0.91, 0.97]))
                                for e, a in enumerate(accs)]},
            "encoding": {"x": {"field": "epoch", "type": "quantitative"},
                         "y": {"field": "acc", "type": "quantitative"},
                         "color": {"field": "rev", "scale": {"domain": ["workspace", "abc123"]}}}}
    charts = review.render_charts({"Accuracy": [{"type": "vega", "content": spec},
                                                {"type": "image", "url": "x.png"}]},
                                  {"abc123": "main"})
    assert list(charts) == ["Accuracy"]
    (tmp_path / "a.png").write_bytes(charts["Accuracy"])
    assert_png_not_blank(tmp_path / "a.png")
    renamed = review.relabel(spec, {"abc123": "main"})
    assert renamed["encoding"]["color"]["scale"]["domain"] == ["workspace", "main"]
    assert {row["rev"] for row in renamed["data"]["values"]} == {"workspace", "main"}


def test_the_grid_of_changed_digits_shows_each_image_and_its_caption(tmp_path):
    images = np.zeros((30, 28, 28), np.uint8)
    images[:, 10:18, 12:16] = np.arange(30, dtype=np.uint8)[:, None, None] * 8 + 10
    test_images = tmp_path / "t10k-images-idx3-ubyte"
    test_images.write_bytes(encode_idx(images))
    comparison = Comparison(np.array([3, 17]), np.array([]), 0, 1.0)
    notes: list[str] = []
    actual = np.arange(30) % 10
    grids = review.change_grids(comparison, actual, (actual + 1) % 10, actual, test_images,
                                notes)
    assert list(grids) == ["digits the change fixed"] and notes == []
    grid = np.asarray(Image.open(io.BytesIO(grids["digits the change fixed"])))
    assert grid.shape == (56 + 14, 560)
    for slot, index in enumerate([3, 17]):  # each tile is the image, scaled 2x
        tile = grid[:56, slot * 56:(slot + 1) * 56]
        assert np.array_equal(tile[::2, ::2], images[index])
        assert grid[56:, slot * 56:(slot + 1) * 56].max() > 128  # a caption under it

    missing = review.change_grids(comparison, actual, actual, actual, tmp_path / "no", notes)
    assert missing == {} and "no grids of the fixed and broken digits" in notes[0]


# --- across seeds ------------------------------------------------------------------------------
SEEDS = [100, 101, 102, 103, 104]


def seed_predictions(rng: np.random.Generator, actual: np.ndarray, error_rates: list[float]
                     ) -> dict[int, np.ndarray]:
    """Per seed: ``actual`` with a share of the images given another digit."""
    predicted = {}
    for seed, rate in zip(SEEDS, error_rates, strict=True):
        wrong = rng.random(len(actual)) < rate
        predicted[seed] = np.where(wrong, (actual + rng.integers(1, 10, len(actual))) % 10,
                                   actual)
    return predicted


def synthetic_seed_review(seed: int, head_rates: list[float] | None = None,
                          calibration: dict | None = None) -> Review:
    rng = np.random.default_rng(seed)
    actual = rng.integers(0, 10, 3000)
    base = seed_predictions(rng, actual, [0.01] * 5)
    head = seed_predictions(rng, actual, head_rates) if head_rates else base
    runs = {"base": "5 seeds in 9 s, 5 of them restored from DVC's run-cache",
            "head": "5 seeds in 60 s, 0 of them restored from DVC's run-cache"}
    return synthetic_review(comparison=None, old={}, new={}, images=len(actual), spread=None,
                            charts={}, source="trained on this machine",
                            seeds=review.seed_review(actual, base, head, runs, calibration))


@pytest.mark.parametrize(("case", "head_rates"), [
    ("a real improvement", [0.005, 0.006, 0.004, 0.005, 0.006]),
    ("noise", [0.011, 0.009, 0.0105, 0.0095, 0.01]),
    ("a regression", [0.02, 0.018, 0.022, 0.019, 0.021]),
])
def test_the_seed_summary_equals_scipy_on_its_own_per_seed_numbers(tmp_path, case,
                                                                   head_rates):
    r = synthetic_seed_review(len(case), head_rates)
    review.write_report(tmp_path, r)
    summary = json.loads((tmp_path / "summary.json").read_text())
    seeds = summary["seeds"]
    assert list(seeds["base"]) == list(seeds["head"]) == [str(s) for s in SEEDS]
    for side, predicted in (("base", r.seeds.base), ("head", r.seeds.head)):
        for seed in SEEDS:  # the accuracy of each seed's own predictions
            assert seeds[side][str(seed)] == pytest.approx(
                np.mean(predicted[seed] == r.seeds.actual), abs=1e-12)
    images = summary["seed_test"]["test_images"]
    assert images == 3000
    head = np.array([seeds["head"][str(s)] for s in SEEDS]) * images
    base = np.array([seeds["base"][str(s)] for s in SEEDS]) * images
    reference = stats.ttest_rel(head, base)
    interval = reference.confidence_interval(0.95)
    test = summary["seed_test"]
    assert test["mean_difference_images"] == pytest.approx(np.mean(head - base), abs=1e-9)
    assert test["ci95_images"] == pytest.approx([interval.low, interval.high], rel=1e-9)
    assert test["p_value"] == pytest.approx(reference.pvalue, rel=1e-9)
    assert test["improved"] == int(np.sum(head - base > 0.5))
    word = summary["verdict"].split(":")[0]
    excludes_zero = interval.low > 0 or interval.high < 0
    assert word == ({True: "better", False: "worse"}[interval.low > 0] if excludes_zero
                    else "no evidence of a change"), summary["verdict"]
    for seed, pair in summary["seed_pairs"].items():
        fixed, broken = direct_counts(
            predictions_csv(r.seeds.actual, r.seeds.base[int(seed)], np.random.default_rng(0)),
            predictions_csv(r.seeds.actual, r.seeds.head[int(seed)], np.random.default_rng(0))
        )[:2]
        assert (pair["fixed"], pair["broken"]) == (fixed, broken)
        assert pair["p_value"] == pytest.approx(
            binomtest(min(fixed, broken), fixed + broken, 0.5).pvalue if fixed + broken
            else 1.0, rel=1e-9)


def test_the_verdicts_across_seeds_say_better_and_worse_only_past_the_interval():
    better = review.verdict_of(synthetic_seed_review(1, [0.005, 0.006, 0.004, 0.005, 0.006]))
    assert better.startswith("better: +") and "5 of 5 seeds improved" in better
    worse = review.verdict_of(synthetic_seed_review(1, [0.02, 0.018, 0.022, 0.019, 0.021]))
    assert worse.startswith("worse: -") and "0 of 5 seeds improved" in worse


def test_a_side_against_itself_is_exactly_zero_and_no_change(tmp_path):
    r = synthetic_seed_review(3)
    review.write_report(tmp_path, r)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["seeds"]["base"] == summary["seeds"]["head"]
    assert summary["seed_test"]["mean_difference_images"] == 0
    assert summary["seed_test"]["ci95_images"] == [0, 0]
    assert summary["verdict"] == ("no change: the same predictions on all 5 seeds "
                                  "(difference 0 images)")
    assert all(pair["fixed"] == pair["broken"] == 0 for pair in summary["seed_pairs"].values())


def test_the_same_error_counts_on_other_images_are_no_evidence_not_no_change():
    r = synthetic_seed_review(4)
    swapped = {seed: np.roll(p, 1) for seed, p in r.seeds.base.items()}  # other images wrong
    actual = np.roll(r.seeds.actual, 1)
    same_counts = review.seed_review(actual, {s: np.roll(p, 0) for s, p in swapped.items()},
                                     {s: np.where(p == actual, p, (actual + 1) % 10)
                                      for s, p in swapped.items()}, r.seeds.runs)
    assert same_counts.test.mean == 0 and not same_counts.identical
    assert review.seed_verdict(same_counts).startswith("no evidence of a change: +0.0")


def test_the_seed_report_leads_with_the_paired_comparison():
    calibration = {"sd_images": 4.2, "errors": {"defaults": {str(s): 60 for s in range(20)}},
                   "false_positive_rate": {"5": 0.046}}
    r = synthetic_seed_review(5, [0.011, 0.009, 0.0105, 0.0095, 0.01], calibration)
    report = review.render_report(r)
    lines = report.splitlines()
    assert lines[0] == "# Review: workspace against `main`, 5 seeds a side"
    assert lines[2] == f"**Verdict: {review.seed_verdict(r.seeds)}.**"
    assert report.index("## The change across seeds") < report.index("## What changed")
    rows = table_rows(report, "## The change across seeds")
    base_errors, head_errors = r.seeds.errors("base"), r.seeds.errors("head")
    for seed in SEEDS:
        cells = rows[str(seed)]
        assert (int(cells[0]), int(cells[1])) == (base_errors[seed], head_errors[seed])
        assert int(cells[2]) == base_errors[seed] - head_errors[seed]  # more right: positive
    assert float(rows["mean"][2]) == pytest.approx(r.seeds.test.mean, abs=0.05)
    effect = paired_stats.smallest_visible_effect(4.2, 5)
    assert (f"spread by 4.2 test images (SD over 20 seeds, docs/review_calibration.json): 5 "
            f"seeds a side see a change of about {effect:.0f} images 80 % of the time") in report
    assert "in 4.6 % of random splits at 5 seeds" in report
    assert "No params changed." not in report  # the synthetic change is listed
    assert table_rows(report, "### Params") == {"train.lr": ["0.025", "0.02"]}


def test_error_matrices_count_the_wrong_predictions_only():
    rng = np.random.default_rng(0)
    actual = rng.integers(0, 10, 500)
    predicted = np.where(rng.random(500) < 0.2, rng.integers(0, 10, 500), actual)
    matrix = review_charts.error_matrix(actual, predicted, 10)
    crosstab = pd.crosstab(actual, predicted).reindex(index=range(10), columns=range(10),
                                                     fill_value=0).to_numpy().copy()
    np.fill_diagonal(crosstab, 0)
    assert np.array_equal(matrix, crosstab)
    assert matrix.sum() == (actual != predicted).sum()


def test_error_charts_take_class_names_in_numeric_then_word_order():
    actual = np.array(["10", "2", "cat", "2", "10"])
    predicted = np.array(["2", "2", "cat", "10", "10"])
    assert review.class_labels(actual, predicted) == ["2", "10", "cat"]
    charts = review.error_charts(actual, {"main": {0: actual}, "workspace": {0: predicted}})
    (png,) = charts.values()
    assert png is not None and png.startswith(b"\x89PNG")


def test_the_charts_across_seeds_are_drawn(tmp_path):
    r = synthetic_seed_review(6, [0.005, 0.006, 0.004, 0.005, 0.006])
    steps = b"step,epoch,train_loss,train_acc\n25,0.5,0.9,0.7\n50,1.0,0.2,0.95\n"
    charts = review.seed_charts(r.seeds, "main", {"base": {100: steps, 101: steps},
                                                  "head": {100: steps, 101: None}})
    assert list(charts) == ["test errors per seed",
                            "errors by true and predicted class (mean over 5 seeds)",
                            "training curves, every seed"]
    for title, png in charts.items():
        (tmp_path / review.file_name(title)).write_bytes(png)
        assert_png_not_blank(tmp_path / review.file_name(title))
    spec = review_charts.confusion_chart("t", {"a": np.eye(3), "b": np.ones((3, 3))},
                                         ["0", "1", "2"], difference="b")
    assert [len(view["data"]["values"]) for view in spec["hconcat"]] == [6, 6]  # no diagonal


def test_seeds_outside_the_range_are_one_error(tmp_path, monkeypatch):
    monkeypatch.setattr(review.shutil, "which", lambda name: "/usr/bin/dvc")
    for count in ("1", str(review.MAX_SEEDS + 1)):
        with pytest.raises(StageError, match=rf"--seeds {count}: a paired comparison needs 2"):
            review.main(["--base", "main", "--seeds", count, "--out", str(tmp_path)])


# --- seed spread -------------------------------------------------------------------------------
def exp_show(baseline: dict, experiments: list[tuple[dict, float | None]]) -> list[dict]:
    """`dvc exp show --json` as dvc 3.67 shapes it: the workspace, then HEAD and its exps."""
    def rev(name: str, params: dict, accuracy: float | None) -> dict:
        metrics = {} if accuracy is None else {
            "metrics/eval.json": {"data": {"accuracy": accuracy, "errors": 1}}}
        return {"rev": name, "name": name, "data": {
            "rev": name, "params": {"params.yaml": {"data": params}}, "metrics": metrics}}

    commit = {**rev("0123abc", baseline, 0.9921), "experiments": [
        {"revs": [rev(f"exp-{i}", params, accuracy)]}
        for i, (params, accuracy) in enumerate(experiments)]}
    return [{**rev("workspace", baseline, 0.5), "experiments": None}, commit]


def with_train(params: dict, **changes: object) -> dict:
    return {**params, "train": {**params["train"], **changes}}


def test_seed_spread_takes_the_experiments_that_differ_only_in_the_seed():
    base = {"model": {"net": "compact"}, "train": {"seed": 1, "lr": 0.025, "threads": 2}}
    accuracies = {0: 0.9915, 1: 0.9921, 2: 0.9928, 3: 0.9910, 4: 0.9912}
    shown = exp_show(base, [
        *((with_train(base, seed=seed), accuracy) for seed, accuracy in accuracies.items()),
        (with_train(base, seed=9, threads=1), 0.80),  # another thread count: not noise alone
        (with_train(base, lr=0.02), 0.70),
        ({**base, "model": {"net": "seed"}}, 0.60),
        (with_train(base, seed=5), None),  # failed: no metrics
    ])
    spread = review.seed_spread(shown, "the reference machine")
    assert spread["accuracy_by_seed"] == {str(seed): a for seed, a in accuracies.items()}
    values = np.array(list(accuracies.values()))
    assert spread["mean"] == pytest.approx(values.mean(), abs=1e-6)
    assert (spread["min"], spread["max"]) == (values.min(), values.max())
    assert spread["machine"] == "the reference machine"


def test_seed_spread_without_a_sweep_is_one_error():
    base = {"train": {"seed": 1, "lr": 0.025}}
    with pytest.raises(StageError, match="run a seed sweep first"):
        review.seed_spread(exp_show(base, [(with_train(base, lr=0.02), 0.99)]), "m")


def test_without_dvc_on_path_review_stops_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StageError, match="dvc is not on PATH"):
        review.main(["--base", "main"])


# --- end to end ---------------------------------------------------------------------------------
def commit_tree(repo, parent: str, message: str, files: dict[str, bytes | None],
                index: Path) -> str:
    """A commit on ``parent`` with ``files`` replaced (None: removed), made without touching
    the workspace or the index (a private index file)."""
    env = {**repo.env, "GIT_INDEX_FILE": str(index)}

    def plumbing(*args: str, data: bytes | None = None) -> str:
        return subprocess.run(["git", *args], cwd=repo.root, env=env, input=data, check=True,
                              capture_output=True).stdout.decode().strip()

    plumbing("read-tree", parent)
    for path, data in files.items():
        if data is None:
            plumbing("update-index", "--force-remove", path)
        else:
            blob = plumbing("hash-object", "-w", "--stdin", data=data)
            plumbing("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}")
    return plumbing("commit-tree", plumbing("write-tree"), "-p", parent, "-m", message)


OUTPUTS = ("eval.json", "train.json", "train_history.csv", "predictions.csv", "per_class.csv",
           "misclassified.png")


@pytest.fixture(scope="module")
def reviewed(pipeline, tmp_path_factory):
    """On the pipeline's repository: branch review-lr (train.lr 0.02, committed) checked out;
    review-other-machine: main's code and params with the lr run's metrics committed, as if
    main had been run elsewhere; review-old: main without metrics/predictions.csv;
    review-broken: main with a params.yaml that fails. Afterwards main is checked out again,
    and the branches, the experiment and the run-cache entries made here are gone."""
    repo, _ = pipeline
    index = tmp_path_factory.mktemp("index") / "index"
    runs = repo.root / ".dvc" / "cache" / "runs"
    seen_runs = set(runs.rglob("*"))
    repo.git("checkout", "-q", "-b", "review-lr")
    experiment = None
    try:
        ran = repo.dvc("exp", "run", "-S", "train.lr=0.02").stdout
        experiment = re.search(r"Ran experiment\(s\): (\S+)", ran).group(1)
        repo.commit("train.lr 0.02")
        lr_files = {f"metrics/{name}": (repo.root / "metrics" / name).read_bytes()
                    for name in OUTPUTS}
        repo.git("branch", "review-other-machine", commit_tree(
            repo, "main", "main's numbers from another machine", lr_files, index))
        repo.git("branch", "review-old", commit_tree(
            repo, "main", "before predictions.csv", {"metrics/predictions.csv": None}, index))
        params = (repo.root / "params.yaml").read_text().replace("epochs: 1", "epochs: abc")
        repo.git("branch", "review-broken", commit_tree(
            repo, "main", "a base that cannot run", {"params.yaml": params.encode()}, index))
        yield SimpleNamespace(repo=repo, status=repo.git("status", "--porcelain").stdout)
    finally:
        repo.git("checkout", "-q", "-f", "main")
        for branch in ("review-lr", "review-other-machine", "review-old", "review-broken"):
            repo.run("git", "branch", "-D", branch, check=False)
        repo.dvc("checkout", "--force")
        if experiment:
            repo.dvc("exp", "remove", experiment)
        # other tests count the run-cache's entries; DVC trips on an empty entry folder
        for path in sorted(set(runs.rglob("*")) - seen_runs, key=lambda p: -len(p.parts)):
            path.unlink() if path.is_file() else path.rmdir()
        assert repo.git("status", "--porcelain").stdout == ""


def run_review(repo, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnist_dvc", "review", *args], cwd=repo.root,
                          env=env or repo.env, capture_output=True, text=True, timeout=600)


def check_report(repo, out: Path, base: str, label: str | None = None) -> tuple[str, dict]:
    """The checks every full report passes: headline rows equal the metrics files at ``base``
    and in the workspace, fixed and broken equal a direct count, p equals scipy, every PNG is
    linked and drawn. ``label``: the base as the review was given it (default ``base``)."""
    report = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    for name in ("eval.json", "train.json"):
        old = json.loads(repo.git("show", f"{base}:metrics/{name}").stdout)
        new = json.loads((repo.root / "metrics" / name).read_text())
        rows = table_rows(report, f"### metrics/{name}")
        assert set(rows) == set(old) | set(new)
        for key, (base_cell, new_cell, change) in rows.items():
            assert (float(base_cell), float(new_cell)) == (old[key], new[key])
            assert float(change) == pytest.approx(new[key] - old[key], abs=1e-9)
    fixed, broken, shared = direct_counts(
        repo.run("git", "show", f"{base}:metrics/predictions.csv").stdout.encode(),
        (repo.root / "metrics" / "predictions.csv").read_bytes())
    assert (summary["fixed"], summary["broken"], summary["shared"]) == (fixed, broken, shared)
    expected_p = binomtest(min(fixed, broken), fixed + broken, 0.5).pvalue if fixed + broken \
        else 1.0
    assert summary["p_value"] == pytest.approx(expected_p, rel=1e-9)
    assert f"**Verdict: {summary['verdict']}.**" in report
    assert f"{fixed} fixed, {broken} broken" in summary["verdict"]
    linked = re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", report)
    assert sorted(linked) == sorted(p.name for p in out.glob("*.png"))
    expected = {"test_accuracy_per_epoch.png", "loss.png", "f1_per_class.png",
                "training_accuracy_every_25_steps.png", "training_loss_every_25_steps.png",
                "errors_by_true_and_predicted_class.png",
                review.file_name(f"misclassified digits, {label or base}"),
                "misclassified_digits_workspace.png"}
    expected |= {"digits_the_change_fixed.png"} if fixed else set()
    expected |= {"digits_the_change_broke.png"} if broken else set()
    assert expected <= set(linked)
    assert "confusion_matrix.png" not in linked  # the errors alone say more at 99 %
    for name in linked:
        assert_png_not_blank(out / name)
    return report, summary


@pytest.mark.e2e
def test_review_of_a_learning_rate_change_against_main(reviewed, tmp_path):
    repo = reviewed.repo
    done = run_review(repo, "--base", "main", "--out", str(tmp_path / "review"))
    assert done.returncode == 0, done.stderr
    report, summary = check_report(repo, tmp_path / "review", "main")
    assert table_rows(report, "### Params") == {"train.lr": [DEFAULT_LR, "0.02"]}
    assert "No pipeline code changed." in report
    assert "Base numbers: committed at main, made on another machine maybe" in report
    assert summary["fixed"] + summary["broken"] > 0  # a different lr moves some images
    assert repo.git("status", "--porcelain").stdout == reviewed.status


@pytest.mark.e2e
def test_rerun_recomputes_the_base_on_this_machine(reviewed, tmp_path):
    repo = reviewed.repo
    committed = run_review(repo, "--base", "review-other-machine", "--out", str(tmp_path / "a"))
    assert committed.returncode == 0, committed.stderr
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["verdict"] == "no change (p = 1): 0 fixed, 0 broken"  # the lr run's numbers

    lock = repo.root / "dvc.lock"  # as `make repro` on a CI runner leaves it: rewritten
    lock.write_text(lock.read_text() + "\n")
    try:
        rerun = run_review(repo, "--base", "review-other-machine", "--rerun",
                           "--out", str(tmp_path / "b"))
    finally:
        repo.git("checkout", "--", "dvc.lock")
    assert rerun.returncode == 0, rerun.stderr
    report, summary = check_report(repo, tmp_path / "b", "main", "review-other-machine")
    assert summary["fixed"] + summary["broken"] > 0
    assert "Base numbers: recomputed on this machine" in report
    worktree = re.search(r"dvc repro of \w+ in (\S+)", rerun.stderr).group(1)
    assert not Path(worktree).exists()
    assert repo.git("worktree", "list").stdout.count("\n") == 1
    assert repo.git("status", "--porcelain").stdout == reviewed.status


@pytest.mark.e2e
def test_review_of_a_revision_against_itself_reports_no_change(reviewed, tmp_path):
    repo = reviewed.repo
    done = run_review(repo, "--base", "HEAD", "--out", str(tmp_path / "review"))
    assert done.returncode == 0, done.stderr
    report, summary = check_report(repo, tmp_path / "review", "HEAD")
    assert summary["verdict"] == "no change (p = 1): 0 fixed, 0 broken"
    assert "No params changed." in report and "No pipeline code changed." in report
    assert all(float(cells[2]) == 0 for cells in table_rows(report, "### metrics/eval.json")
               .values())


@pytest.mark.e2e
def test_a_base_without_predictions_gives_one_line_and_the_rest(reviewed, tmp_path):
    repo = reviewed.repo
    done = run_review(repo, "--base", "review-old", "--out", str(tmp_path / "review"))
    assert done.returncode == 0, done.stderr
    note = "review-old has no metrics/predictions.csv (an older commit?)"
    assert [line for line in done.stderr.splitlines() if note in line] == [
        f"note: {note}: no image-by-image comparison"]
    report = (tmp_path / "review" / "report.md").read_text()
    assert note in report and "Verdict" not in report
    assert table_rows(report, "### Params") == {"train.lr": [DEFAULT_LR, "0.02"]}
    assert set(table_rows(report, "### metrics/eval.json")) >= {"accuracy", "errors"}
    for name in re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", report):
        assert_png_not_blank(tmp_path / "review" / name)
    assert "test_accuracy_per_epoch.png" in report


def without_dvc(env: dict) -> dict:
    venv = str(Path(sys.executable).parent)
    return {**env, "PATH": os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                           if p != venv and not (Path(p) / "dvc").exists())}


@pytest.mark.e2e
@pytest.mark.parametrize(("case", "args", "message"), [
    ("unknown base", ("--base", "no-such-branch"),
     "error: unknown base revision 'no-such-branch': git knows no commit by that name"),
    ("uncommitted edit", ("--base", "main", "--rerun"),
     "error: --rerun needs committed work, but tracked files have uncommitted changes "
     "(params.yaml): commit them (or git stash them) and review again"),
    ("no dvc", ("--base", "main"), "error: dvc is not on PATH"),
], ids=["unknown-base", "rerun-with-an-uncommitted-edit", "no-dvc-on-path"])
def test_bad_input_is_one_line_and_changes_nothing(reviewed, tmp_path, case, args, message):
    repo = reviewed.repo
    params = repo.root / "params.yaml"
    original = params.read_bytes()
    if case == "uncommitted edit":
        params.write_bytes(original + b"# an edit not yet committed\n")
    before = repo.git("status", "--porcelain").stdout
    env = without_dvc(repo.env) if case == "no dvc" else None
    try:
        done = run_review(repo, *args, "--out", str(tmp_path / "review"), env=env)
        after = repo.git("status", "--porcelain").stdout
    finally:
        params.write_bytes(original)
    assert done.returncode != 0
    assert done.stderr.splitlines() == [done.stderr.strip()] and \
        done.stderr.startswith(message), done.stderr
    assert after == before
    assert not (tmp_path / "review").exists()
    assert repo.git("worktree", "list").stdout.count("\n") == 1


@pytest.mark.e2e
def test_a_failed_rerun_ends_in_one_error_and_removes_its_worktree(reviewed, tmp_path):
    repo = reviewed.repo
    done = run_review(repo, "--base", "review-broken", "--rerun", "--out", str(tmp_path / "r"))
    assert done.returncode != 0
    assert "train.epochs must be an integer" in done.stderr  # dvc repro's own output first
    assert done.stderr.strip().splitlines()[-1] == ("error: dvc repro of the base failed in "
                                                    "its temporary worktree (its output is "
                                                    "above)")
    worktree = re.search(r"dvc repro of \w+ in (\S+)", done.stderr).group(1)
    assert not Path(worktree).exists()
    assert repo.git("worktree", "list").stdout.count("\n") == 1
    assert repo.git("status", "--porcelain").stdout == reviewed.status
    assert not (tmp_path / "r").exists()


def test_a_metrics_file_that_is_not_json_is_one_line_naming_it(tmp_path):
    broken = tmp_path / "eval.json"
    broken.write_text('{"accuracy": 0.99,')
    with pytest.raises(StageError, match=r"eval\.json: unreadable or corrupt"):
        review.read_json(broken)
    with pytest.raises(StageError, match=r"^main:metrics/eval\.json: unreadable or corrupt"):
        review.read_json("main:metrics/eval.json", b"not json")
    assert review.read_json(tmp_path / "absent.json") is None
    assert review.spread_line({"accuracy_by_seed": {"0": 0.99, "1": 0.98}}, 10000, 0.0) == []


def review_experiments(repo) -> list[str]:
    refs = repo.git("for-each-ref", "--format=%(refname)", "refs/exps/").stdout.split()
    return [ref for ref in refs if ref.rsplit("/", 1)[-1].startswith("review-")]


def waiting_in_queue(repo) -> list[str]:
    return [line for line in repo.dvc("queue", "status").stdout.splitlines()
            if re.search(r"\b(Queued|Running)\b", line)]


@pytest.mark.e2e
def test_seeds_of_a_revision_against_itself_are_exactly_zero_and_no_change(reviewed, tmp_path):
    repo = reviewed.repo
    done = run_review(repo, "--base", "HEAD", "--seeds", "2", "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["verdict"] == ("no change: the same predictions on all 2 seeds "
                                  "(difference 0 images)")
    assert summary["seeds"]["base"] == summary["seeds"]["head"]
    assert list(summary["seeds"]["head"]) == ["100", "101"]
    assert all(0.9 < accuracy < 1 for accuracy in summary["seeds"]["head"].values())
    test = summary["seed_test"]
    assert (test["mean_difference_images"], test["ci95_images"], test["p_value"]) == \
        (0, [0, 0], 1)
    # the base side ran the same params and code: DVC restored it from the run-cache
    assert summary["seed_runs"]["base"].startswith("2 seeds in ")
    assert summary["seed_runs"]["base"].endswith("2 of them restored from DVC's run-cache")
    report = (tmp_path / "r" / "report.md").read_text()
    assert "No params changed." in report and "No pipeline code changed." in report
    linked = re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", report)
    assert "training_curves_every_seed.png" in linked and len(linked) == 3
    for name in linked:
        assert_png_not_blank(tmp_path / "r" / name)
    assert review_experiments(repo) == [] and waiting_in_queue(repo) == []
    assert repo.git("worktree", "list").stdout.count("\n") == 1
    assert repo.git("status", "--porcelain").stdout == reviewed.status


@pytest.mark.e2e
def test_seeds_against_a_base_that_fails_end_in_one_error_and_leave_nothing(reviewed,
                                                                             tmp_path):
    repo = reviewed.repo
    done = run_review(repo, "--base", "review-broken", "--seeds", "2",
                      "--out", str(tmp_path / "r"))
    assert done.returncode != 0
    assert "train.epochs must be an integer" in done.stderr  # the runs' own output first
    assert done.stderr.strip().splitlines()[-1] == (
        "error: the base side's run of seed(s) 100, 101 failed (its output is above)")
    assert not (tmp_path / "r").exists()
    assert review_experiments(repo) == [] and waiting_in_queue(repo) == []
    assert repo.git("worktree", "list").stdout.count("\n") == 1
    assert repo.git("status", "--porcelain").stdout == reviewed.status

"""The pure parts of benchmarks/train_speed.py: parsing, arithmetic, FLOPs and the report."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from benchmarks.techniques import Technique, compare
from benchmarks.train_speed import (
    BenchmarkResults,
    ContenderResult,
    Epoch,
    FineResult,
    Machine,
    StageTiming,
    Throughput,
    check_targets,
    parse_epoch_lines,
    render_report,
    speedup,
    summarize_dvc_status,
    train_seconds_to_accuracy,
    train_step_flops,
)

STAGE_STDOUT = """\
train: resuming from data/checkpoints/last.pt after epoch 0
train: epoch 1/2 loss 0.2097 train acc 0.9447 test acc 0.9858 (15.2 s)
some other line: epoch 3/4 test acc 0.5 (1.0 s)
train: epoch 2/2 loss 0.0336 train acc 0.9894 test acc 0.9931 (14.8 s)
"""


def test_parse_epoch_lines_reads_each_epoch_line_and_nothing_else() -> None:
    assert parse_epoch_lines(STAGE_STDOUT) == [
        Epoch(epoch=1, seconds=15.2, test_acc=0.9858),
        Epoch(epoch=2, seconds=14.8, test_acc=0.9931),
    ]
    assert parse_epoch_lines("evaluate: accuracy 0.9931, 69 errors\n") == []


def test_train_seconds_exclude_evaluation_and_stop_at_the_first_epoch_on_target() -> None:
    epochs = [Epoch(1, 10.0, 0.985, eval_seconds=1.0), Epoch(2, 12.0, 0.991, eval_seconds=1.0),
              Epoch(3, 11.0, 0.995, eval_seconds=1.0)]
    assert epochs[0].train_seconds == 9.0
    assert train_seconds_to_accuracy(epochs, 0.99) == pytest.approx(20.0)
    assert train_seconds_to_accuracy(epochs, 0.985) == pytest.approx(9.0)
    assert train_seconds_to_accuracy(epochs, 0.999) is None
    assert train_seconds_to_accuracy([], 0.99) is None


def test_contender_medians_span_every_epoch_of_every_run() -> None:
    result = ContenderResult("c", "train stage", "defaults")
    result.add_run([Epoch(1, 10.0, 0.98, 1.0), Epoch(2, 14.0, 0.992, 1.0)], 30.0, 700.0)
    result.add_run([Epoch(1, 11.0, 0.98, 1.0), Epoch(2, 13.0, 0.993, 1.0)], 34.0, 650.0)
    result.add_run([Epoch(1, 30.0, 0.97, 1.0), Epoch(2, 30.0, 0.985, 1.0)], 70.0, 720.0)
    assert result.epoch_seconds() == pytest.approx(13.5)  # median of 10, 11, 13, 14, 30, 30
    assert result.train_seconds_per_epoch() == pytest.approx(12.5)
    assert result.stage_seconds() == pytest.approx(34.0)
    assert result.final_test_acc() == pytest.approx(0.992)
    assert result.seconds_to_accuracy(0.99) == pytest.approx([22.0, 22.0])  # run 3 never got there


def test_train_step_flops_are_positive_and_linear_in_the_batch_size() -> None:
    small, double = train_step_flops("compact", 4), train_step_flops("compact", 8)
    assert small > 0
    assert double == 2 * small


def test_dvc_status_is_summarized_per_stage() -> None:
    status = {"train": [{"changed deps": {"stages/paths.py": "modified"}},
                        {"changed outs": {"data/checkpoints": "not in cache"}}],
              "evaluate": ["always changed"]}
    assert summarize_dvc_status(status) == (
        "train: stages/paths.py modified, data/checkpoints not in cache; evaluate: always changed")


def fabricated_results(*, fast: bool) -> BenchmarkResults:
    """Results that meet every target (``fast``) or miss every one."""
    def contender(key: str, epoch_s: float, acc: float, stage_s: float,
                  rss: float) -> ContenderResult:
        result = ContenderResult(key, f"contender {key}", f"setup of {key}")
        result.add_run([Epoch(1, epoch_s, acc - 0.005, 0.5), Epoch(2, epoch_s, acc, 0.5)],
                       stage_s, rss)
        return result

    a = contender("a", 18.0, 0.90, 45.0, 600.0)
    b = contender("b", 6.0 if fast else 9.0, 0.91, 20.0, 500.0)
    c = contender("c", 5.0, 0.993 if fast else 0.991, 12.0 if fast else 33.0,
                  800.0 if fast else 2100.0)
    fine = FineResult(6.5 if fast else 9.5, 300, 469, [4.5, 4.6], 0.4, 0.993)
    limit = 1.0 if fast else 10.0
    stages = [StageTiming("evaluate", "python -m stages.evaluate", [2.0 * limit], [400.0]),
              StageTiming("preprocess", "python -m stages.preprocess", [4.0 * limit], [900.0]),
              StageTiming("dvc repro (no-op)", "dvc repro", [1.2] if fast else [], [],
                          "" if fast else "not run: `dvc status` says train changed"),
              StageTiming("import torch", 'python -c "import torch"', [1.5, 1.7, 1.6], [600.0]),
              StageTiming("import torch._dynamo", 'python -c "import torch._dynamo"',
                          [3.25], [700.0])]
    throughput = Throughput(128, 300_000_000, 469, 140_000_000_000, 4.5, 4.4, 90.0)
    machine = Machine("Test CPU", 2, 2, "2.14.1", 2, "2025-01-01 00:00 UTC", 1.0, 1.5)
    return BenchmarkResults(machine, "python -m benchmarks.train_speed --quick", True, "quick",
                            [a, b, c], fine, stages, {"seed": 0.3, "compact": 0.5}, throughput)


def test_targets_pass_when_every_one_is_met() -> None:
    targets = check_targets(fabricated_results(fast=True))
    assert len(targets) == 7
    assert all(t.passed is True for t in targets), targets


def test_targets_fail_when_missed_and_say_so_when_not_measured() -> None:
    results = fabricated_results(fast=False)
    assert speedup(results) == pytest.approx(2.0)
    passed = [t.passed for t in check_targets(results)]
    assert passed == [False, False, False, False, False, None, False]


def test_report_has_every_contender_and_marks_the_targets() -> None:
    good = render_report(fabricated_results(fast=True))
    for title in ("(a) contender a", "(b) contender b", "(c) contender c", "in process"):
        assert title in good
    assert "Test CPU" in good and "python -m benchmarks.train_speed --quick" in good
    assert "Quick mode" in good
    assert "3.00x" in good  # (a)/(b) per-epoch wall time
    targets = good.split("## Targets", 1)[1]
    assert targets.count("PASS") == 7 and "FAIL" not in targets
    assert "7 of 7 targets met" in targets

    bad = render_report(fabricated_results(fast=False)).split("## Targets", 1)[1]
    assert "PASS" not in bad
    assert bad.count("**FAIL**") == 6 and bad.count("**not measured**") == 1
    assert "0 of 7 targets met" in bad
    assert "| 2.00x | - | **FAIL** |" in bad
    # start-up floors beside the stage targets they bound
    assert "| 2.0 s | 1.6 s (`import torch`) | PASS |" in targets
    assert "in 12.0 s | 3.2 s (`import torch._dynamo`) | PASS |" in targets


def test_compare_alternates_and_takes_medians_after_a_warm_up() -> None:
    calls: list[str] = []

    def timer(name: str, values: list[float]) -> Callable[[], float]:
        def run() -> float:
            calls.append(name)
            return values.pop(0)
        return run

    technique = compare("x", "y", "ms", timer("used", [99.0, 2.0, 1.0, 3.0]),
                        timer("without", [99.0, 6.0, 4.0, 5.0]), repeats=3)
    assert calls == ["used", "without"] * 4  # one warm-up each, then turn by turn
    assert (technique.used, technique.without) == (2.0, 5.0)
    assert technique.gain == pytest.approx(2.5)


def test_report_lists_each_technique_with_its_gain() -> None:
    results = fabricated_results(fast=True)._replace(techniques=(
        Technique("channels-last layout", "contiguous (NCHW)", "ms / step", 20.0, 34.0),
        Technique("fused thing", "plain thing", "s", 2.0, 1.0),
    ))
    report = render_report(results)
    section = report.split("## Techniques", 1)[1].split("## Targets", 1)[0]
    assert "| channels-last layout | contiguous (NCHW) | ms / step | 20 | 34 | 1.70x |" in section
    assert "| fused thing | plain thing | s | 2 | 1 | 0.50x |" in section
    assert "## Techniques" not in render_report(fabricated_results(fast=True))

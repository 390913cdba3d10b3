"""benchmarks/train_speed.py: what it parses, computes and reports (on synthetic inputs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.stage_anatomy import run_steps
from benchmarks.train_speed import (
    Kernel,
    Process,
    Trajectory,
    baseline_stage,
    baseline_tree,
    check_targets,
    kernel_table,
    mkl_path,
    onednn_kernels,
    render,
    step_flops,
    time_to_accuracy,
)
from mnist_dvc.config.params import with_train
from mnist_dvc.data.prepared import read_split
from mnist_dvc.model.nets import score
from mnist_dvc.runtime import to_device
from mnist_dvc.training.trainer import Trainer

REPO_ROOT = Path(__file__).resolve().parent.parent

STAGE_STDOUT = """\
train: resuming from data/resume/train-0123.pt after epoch 0
train: epoch 1/2 loss 0.2097 train acc 0.9447 test acc 0.9858 (15.2 s)
some other line: epoch 3/4 test acc 0.5 (1.0 s)
train: epoch 2/2 loss 0.0336 train acc 0.9894 test acc 0.9931 (14.8 s)
"""


def test_epoch_lines_are_read_and_nothing_else():
    assert Process(30.0, STAGE_STDOUT).epochs() == [(15.2, 0.9858), (14.8, 0.9931)]
    assert Process(1.0, "evaluate: accuracy 0.9931, 69 errors\n").epochs() == []


def results(seeds: dict[int, float], stage_s: float = 6.0, seed_epoch_s: float = 10.0,
            to_target: float | None = 2.5, gflops_epoch_s: float = 2.0,
            baseline_s: float = 9.0) -> dict:
    epoch_lines = ("train: epoch 1/2 loss 0.2 train acc 0.9 test acc 0.9880 (2.0 s)\n"
                   "train: epoch 2/2 loss 0.1 train acc 0.9 test acc 0.9921 (2.0 s)\n")
    return {"seed_loop": [{"epoch_seconds": seed_epoch_s, "test_seconds": 0.5}],
            "stage": [Process(stage_s, epoch_lines)],
            "baseline": [Process(baseline_s, epoch_lines)],
            "ddp": {(1, 2): Process(stage_s, epoch_lines)},
            "trajectory": Trajectory(to_target, 0.9921, gflops_epoch_s), "seeds": seeds,
            "held_out_seeds": {},
            "anatomy": {"import torch": 0.9, "interpreter start and exit": 0.2},
            "startup": {"`python -c pass`": 0.02}, "epoch_flops": 100e9,
            "step_flops": 1e9, "fixed_step": 0.001,
            "unfrozen": [Process(stage_s + 0.5, epoch_lines)],
            "matmul": 100.0, "conv": 80.0,
            "kernels": [Kernel("256 x 1->16, 20x20 out, 5x5", 256, "forward_training",
                               "brg_conv_fwd:avx512_core", 0.5, 164.0)],
            "mkl": "Intel(R) Architecture processors",
            "profile": "| operator |"}


def test_targets_pass_and_fail_at_their_thresholds():
    good = results({0: 0.9931, 1: 0.9935, 2: 0.9920, 3: 0.9933, 4: 0.9936}, stage_s=5.0)
    report = render(good, quick=False)  # also fills in the achieved GFLOP/s
    assert [t.passed for t in check_targets(good)] == [True] * 7
    assert check_targets(good)[6].measured == "not needed"  # the rate itself passed
    assert "Why not" not in report

    bad = results({0: 0.9940, 1: 0.9919, 2: 0.9940, 3: 0.9940, 4: 0.9940}, stage_s=9.0,
                  to_target=None, gflops_epoch_s=4.0, baseline_s=8.9)  # one seed under 99.20 %
    render(bad, quick=False)
    assert [t.passed for t in check_targets(bad)] == [False] * 7
    assert check_targets(bad)[1].measured == "0.90x (9.0 s)"
    assert check_targets(bad)[3].measured == "median 1.01 (1.01-1.01); 0.90x against 0.89x " \
        "of the seed loop"  # slower than "today"


def test_no_slower_than_today_is_judged_round_by_round():
    rounds = results({1: 0.9935}, seed_epoch_s=8.0)
    render(rounds, quick=True)  # also fills in the achieved GFLOP/s
    # this stage over today's per round: 0.9, 1.05, 0.8; the middle one counts
    lines = rounds["stage"][0].stdout
    rounds["stage"] = [Process(seconds, lines) for seconds in (9.0, 10.5, 8.0)]
    rounds["baseline"] = [Process(seconds, "") for seconds in (10.0, 10.0, 10.0)]
    today = check_targets(rounds)[3]
    assert today.passed
    assert today.measured == "median 0.90 (0.80-1.05); 1.12x against 1.25x of the seed loop"
    assert not check_targets(rounds)[1].passed  # while the 0.85x still fails
    rounds["baseline"] = [Process(seconds, "") for seconds in (8.0, 10.0, 10.0)]
    assert not check_targets(rounds)[3].passed  # 1.125, 1.05, 0.8: slower in most rounds
    assert "final test accuracy not in its output" in render(rounds, quick=True)
    rounds["baseline"] = rounds["baseline"][:2]  # a round without its pair is a bug
    with pytest.raises(ValueError):
        check_targets(rounds)


def test_the_report_shows_every_section_and_each_target_once():
    report = render(results({1: 0.9921}), quick=True)
    for heading in ("## Targets", "## The train stage against the seed notebook's loop",
                    "## Data-parallel training", "## Time to 99%", "## Accuracy over seeds",
                    "## Start-up", "## Distance to the machine"):
        assert heading in report
    assert report.count("| PASS |") + report.count("| **FAIL** |") == 7
    assert "**Quick mode**" in report
    assert "of start-up and outputs" in report and "2.0 s" in report
    assert "then scoring the test set): median 10.0 s over 1, the test pass 0.5 s" in report
    assert "when issue 14 was filed" in report
    assert "median 9.0 s, final test accuracy 99.21%" in report
    assert "| import torch | 0.900 |" in report and "| `python -c pass` | 0.02 |" in report
    assert "| 256 x 1->16, 20x20 out, 5x5 | forward_training | `brg_conv_fwd:avx512_core` | " \
           "0.50 | 164 |" in report and "ms per run" in report
    assert '"Intel(R) Architecture processors"' in report


def test_held_out_seeds_are_reported_beside_the_targets_seeds_but_not_judged():
    spread = results({0: 0.9931, 1: 0.9935, 2: 0.9930, 3: 0.9933, 4: 0.9936})
    spread["held_out_seeds"] = {5: 0.9915, 6: 0.9925}  # one under 99.20 %
    report = render(spread, quick=False)
    assert check_targets(spread)[0].passed
    assert "| 0, 1, 2, 3, 4 (the targets'; the defaults were chosen on them) | 99.31%, " in report
    assert "| 5, 6 (held out: the spread without that choice) | 99.15%, 99.25% | 99.20% | " \
           "99.15% | 10 images |" in report
    assert "held out" not in render(results({1: 0.9921}), quick=True)


def test_the_machine_rate_is_the_faster_of_matmul_and_convolution():
    slow_matmul = results({1: 0.9935}, gflops_epoch_s=2.0)  # training: 50 GFLOP/s
    slow_matmul["conv"] = 200.0  # matmul 100: the convolution sets the rate
    render(slow_matmul, quick=True)
    target = check_targets(slow_matmul)[5]
    assert target.measured == "25% of 200 GFLOP/s" and not target.passed
    assert "reference rate" in target.name


def test_a_rate_out_of_reach_is_shown_by_the_step_budget():
    # training at 25 GFLOP/s of a 100 GFLOP/s reference; 50 % allows 1 GFLOP / 50 GFLOP/s = 20 ms
    slow = results({1: 0.9935}, gflops_epoch_s=4.0)
    slow["kernels"] = [Kernel("256 x 1->16, 20x20 out, 5x5", 256, "forward_training", "k",
                              12.0, 1.0),
                       Kernel("256 x 16->32, 6x6 out, 5x5", 256, "backward_data", "k", 5.0, 1.0),
                       Kernel("1000 x 1->16, 20x20 out, 5x5", 1000, "forward_training", "k",
                              50.0, 1.0)]  # scoring's batch: not part of a training step
    slow["fixed_step"] = 0.004
    report = render(slow, quick=True)
    rate, alternative = check_targets(slow)[5:]
    assert not rate.passed
    assert alternative.passed and alternative.measured == "17.0 + 4.0 ms > 20.0 ms"
    assert "Why not 50%" in report and "take 20.0 ms; it takes 40.0 ms" in report
    assert "more than the 20.0 ms allowed" in report

    slow["fixed_step"] = 0.002  # 17 + 2 ms: a faster step would be possible in principle
    assert not check_targets(slow)[6].passed
    assert "leaving 1.0 ms for pooling" in render(slow, quick=True)

    slow["kernels"] = []  # an unreadable oneDNN log proves nothing
    assert check_targets(slow)[6].measured == "no convolution times in the oneDNN log"
    assert not check_targets(slow)[6].passed and "Why not" not in render(slow, quick=True)


ONEDNN_LOG = """\
onednn_verbose,v1,info,oneDNN v3.12.0 (commit 80afa71049cd69a3df32adcccb623b12cd7baa22)
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,\
src:f32::blocked:acdb::f0 wei:f32:a:blocked:Adcb16a::f0 bia:undef::undef::: \
dst:f32::blocked:acdb::f0,attr-scratchpad:user,alg:convolution_direct,\
mb256_ic1oc16_ih24oh20kh5sh1dh0ph0_iw24ow20kw5sw1dw0pw0,9.5
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:abcd::f0 \
dst:f32::blocked:Adcb16a::f0,,,16x1x5x5,0.003
onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx512_core,backward_weights,\
src:f32::blocked:acdb::f0 wei:f32:a:blocked:Adcb16a::f0 bia:undef::undef::: \
dst:f32::blocked:acdb::f0,attr-scratchpad:user,alg:convolution_direct,\
mb256_ic1oc16_ih24oh20kh5sh1dh0ph0_iw24ow20kw5sw1dw0pw0,0.3
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,\
src:f32::blocked:acdb::f0 wei:f32:a:blocked:Adcb16a::f0 bia:undef::undef::: \
dst:f32::blocked:acdb::f0,attr-scratchpad:user,alg:convolution_direct,\
mb256_ic1oc16_ih24oh20kh5sh1dh0ph0_iw24ow20kw5sw1dw0pw0,0.5
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_inference,\
src:f32::blocked:acdb::f0 wei:f32:a:blocked:Adcb16a::f0 bia:undef::undef::: \
dst:f32::blocked:acdb::f0,attr-scratchpad:user,alg:convolution_direct,\
mb1000_ic1oc16_ih24oh20kh5sh1dh0ph0_iw24ow20kw5sw1dw0pw0,2.0
{"seconds": {}}
"""


def test_onednn_kernels_are_read_per_pass_without_their_first_run():
    # 2 x 256 images x 16 x 20 x 20 outputs x 25 taps = 81,920,000 FLOPs a pass
    assert onednn_kernels(ONEDNN_LOG) == [
        Kernel("256 x 1->16, 20x20 out, 5x5", 256, "forward_training",
               "brg_conv_fwd:avx512_core",
               0.5, pytest.approx(163.84)),  # 9.5 ms was the first run
        Kernel("256 x 1->16, 20x20 out, 5x5", 256, "backward_weights", "jit:avx512_core",
               0.3, pytest.approx(273.07, rel=1e-4)),  # a single run is kept
    ]  # reorders and inference passes left out
    grouped = ONEDNN_LOG.replace("mb256_ic1oc16", "mb256_g4ic64oc64")
    # each of 64 outputs reads 64 / 4 groups = 16 inputs: 64x the FLOPs of 1 -> 16
    assert onednn_kernels(grouped)[0].gflops == pytest.approx(10485.76)


def test_an_unreadable_log_says_so_instead_of_an_empty_table():
    assert "format changed" in kernel_table(onednn_kernels("onednn_verbose,exec,cpu,conv\n"))


def test_mkl_names_its_code_path_or_it_is_unknown():
    banner = ("MKL_VERBOSE oneMKL 2024.0 Update 2 Product build 20240605 for Intel(R) 64 "
              "architecture Intel(R) Architecture processors, Lnx 2.60GHz lp64 gnu_thread\n")
    assert mkl_path(banner) == "Intel(R) 64 architecture Intel(R) Architecture processors"
    assert mkl_path("no banner\n") == "unknown"


def test_run_steps_stops_after_the_steps_asked_for(project, tiny_params):
    train = to_device(read_split(project.prepared, "train"))
    trainer = Trainer(tiny_params.train, "compact", train, train.images.device)
    ends = run_steps(trainer, 3)
    assert len(ends) == 3 and ends == sorted(ends)
    assert all(int(state["step"]) == 3 for state in trainer.optimizer.state.values())
    trainer = Trainer(tiny_params.train, "compact", train, train.images.device)
    assert len(run_steps(trainer, 10_000)) == trainer.steps_per_epoch  # a whole epoch at most


@pytest.mark.processes
def test_the_anatomy_times_each_fixed_cost_of_the_stage_in_a_process(project):
    done = subprocess.run([sys.executable, "-m", "benchmarks.stage_anatomy"], cwd=project.root,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    seconds = found["seconds"]
    assert list(seconds)[:2] == ["import torch", "import the stage's other modules"]
    assert any(name.startswith("import torch._dynamo") for name in seconds)
    assert all(value > 0 for value in seconds.values())
    assert list(seconds)[-1] == "write the model, the training state and the metrics"
    assert not (project.root / "data" / "model").exists()  # its outputs went to a scratch dir


def test_flops_grow_with_the_batch():
    assert step_flops("compact", 64) == pytest.approx(2 * step_flops("compact", 32), rel=0.01)


def test_time_to_accuracy_drives_the_stages_loop_through_its_hook(project, tiny_params):
    params = with_train(tiny_params, epochs=2)
    trajectory = time_to_accuracy(params, every=2, prepared=project.prepared)
    assert trajectory.to_target is not None and trajectory.to_target > 0  # easy synthetic data
    assert trajectory.seconds_per_epoch > 0
    # the hook only scored: the final model is the plain loop's
    from mnist_dvc.training.trainer import Trainer

    train = to_device(read_split(project.prepared, "train"))
    test = to_device(read_split(project.prepared, "test"))
    trainer = Trainer(params.train, "compact", train, train.images.device)
    for _ in range(2):
        trainer.run_epoch()
    assert score(trainer.model, *test, 1000).accuracy == trajectory.final_accuracy


@pytest.mark.e2e
def test_the_baseline_stage_runs_its_commit_from_scratch_in_a_worktree(pipeline):
    repo, _ = pipeline  # its HEAD: the project with one epoch, results committed
    with baseline_tree("HEAD", repo.root / "data" / "raw", repo.root) as tree:
        assert (tree / "data" / "prepared" / "train_images.npy").is_file()  # its own preprocess
        (tree / "params.yaml").write_text("train: {epochs: 50}\n")  # edited after the commit
        (tree / "data" / "resume").mkdir(parents=True)
        (tree / "data" / "resume" / "left-over.pt").write_bytes(b"from an earlier run")
        run = baseline_stage(tree)
        assert not (tree / "data" / "resume" / "left-over.pt").exists()
        assert (tree / "data" / "model" / "model.pt").is_file()
    assert [accuracy > 0.9 for _, accuracy in run.epochs()] == [True]  # the committed epoch
    assert not tree.exists()
    assert len(repo.git("worktree", "list").stdout.splitlines()) == 1

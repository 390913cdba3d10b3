"""Speed and accuracy of training, side by side in one run: ``make benchmark``.

    python -m benchmarks.train_speed [--quick] [--output docs/benchmarks.md]

Everything runs the project's own code: the train stage as a process (``python -m
stages.train`` in a temporary directory laid out like the repository), and in process the
stage's ``Trainer`` through its per-step hook (time to accuracy, a profile). Two contenders
are not today's code: the seed notebook's loop as it was (torchvision's per-item transforms
and DataLoader), the yardstick of the speed targets, and the train stage as it was when
issue 14 was filed, its "today" (``BASELINE_REV``, from a temporary git worktree with its own
params and prepared data). Sections: the train stage against one epoch of the seed loop and
against "today"; data-parallel training (``train.nproc``); time to 99 %; the spread of the
final accuracy over seeds 0-4 and over held-out seeds 5-9; start-up costs; FLOP/s against a
matmul and a convolution, oneDNN's kernels for the net's convolutions, a profile of a training
step and the step time the rate target would allow; the targets, PASS or FAIL. Progress goes
to stderr, the report to one file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.stage_anatomy import run_steps
from mnist_dvc.commands.review import machine
from mnist_dvc.commands.revisions import worktree
from mnist_dvc.config.params import Params, params_yaml, with_train
from mnist_dvc.data.prepared import read_split
from mnist_dvc.errors import StageError
from mnist_dvc.model.nets import build_model, score
from mnist_dvc.runtime import TensorSplit, configure_torch, to_device
from mnist_dvc.training.trainer import Trainer
from stages.train import SCORE_BATCH_SIZE

REPO_ROOT = Path(__file__).resolve().parent.parent
PREPARED = REPO_ROOT / "data" / "prepared"
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "benchmarks.md"
TARGET_ACCURACY = 0.99
SCORE_EVERY_STEPS = 25  # 6,400 images at batch 256
SEEDS = range(5)  # the targets' seeds; the defaults were chosen on them
HELD_OUT_SEEDS = range(5, 10)  # reported beside them: the spread without that selection
MATMUL_SIZE = 2048
# a convolution big enough to run at oneDNN's best rate: (batch, channels in = out, size, kernel)
REFERENCE_CONV = (32, 128, 28, 3)
TRAINING_PASSES = ("forward_training", "backward_data", "backward_weights")
ONEDNN_EXEC = re.compile(r"^onednn_verbose,.*?,exec,cpu,convolution,([^,]+),([a-z_]+),.*,"
                         r"mb(\d+)_(?:g(\d+))?ic(\d+)oc(\d+)_ih\d+oh(\d+)kh(\d+)\S*?_iw\d+ow(\d+)kw(\d+)"
                         r"\S*,([0-9.]+)$", re.MULTILINE)
MKL_BUILD = re.compile(r"^MKL_VERBOSE oneMKL .*? for (.+?processors)", re.MULTILINE)
# Targets of issue 14 (CPU, defaults, this 2-core class of machine)
MIN_MEAN_ACCURACY, MIN_SEED_ACCURACY = 0.9930, 0.9920
MAX_STAGE_TO_SEED_EPOCH, STRETCH_STAGE_TO_SEED_EPOCH = 0.85, 0.6
# Main when issue 14 was filed: the "today" of "no slower than today relative to the seed
# loop". The issue wrote today as 0.84x, measured on its filer's machine, hence the 0.85x
# above; the report measures today's stage on this machine, in the same rounds.
BASELINE_REV = "8942048edbf5346d59ace98aee75f1d562e5a0df"
BASELINE = BASELINE_REV[:7]
STAGE_RUNS = 5  # rounds of the seed loop, the stage and the baseline; --quick: 1
MAX_SECONDS_TO_TARGET = 3.0
MIN_RATE_FRACTION = 0.5
FIXED_COST_BATCH = 2  # a batch whose arithmetic is negligible: its step is the per-step cost

EPOCH_LINE = re.compile(r"^train: epoch (\d+)/\d+ .* test acc ([0-9.]+) \(([0-9.]+) s\)$",
                        re.MULTILINE)
_STARTED = time.perf_counter()


class Process(NamedTuple):
    """One measured command: its wall time from start to exit and its stdout."""

    seconds: float
    stdout: str

    def epochs(self) -> list[tuple[float, float]]:
        """(seconds, test accuracy) of each line the train stage printed for an epoch."""
        return [(float(m[3]), float(m[2])) for m in EPOCH_LINE.finditer(self.stdout)]


class Target(NamedTuple):
    name: str
    measured: str
    passed: bool


def log(message: str) -> None:
    print(f"[bench {time.perf_counter() - _STARTED:5.0f} s] {message}", file=sys.stderr,
          flush=True)


def stage_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TQDM_DISABLE": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(command: Sequence[str], cwd: Path = REPO_ROOT,
        env: dict[str, str] | None = None) -> Process:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env={**stage_env(), **(env or {})},
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"benchmark: `{' '.join(command)}` failed: {done.stderr.strip()[-500:]}")
    return Process(time.perf_counter() - started, done.stdout)


@contextlib.contextmanager
def workdir(params: Params, links: Sequence[str]) -> Iterator[Path]:
    """A temporary directory laid out like the repository: params.yaml and data symlinks."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        root = Path(tmp)
        (root / "params.yaml").write_text(params_yaml(params))
        for link in links:
            (root / link).parent.mkdir(parents=True, exist_ok=True)
            (root / link).symlink_to(REPO_ROOT / link, target_is_directory=True)
        yield root


# the train stage as it ran before mnist_dvc.errors.run_stage froze the garbage collector
UNFROZEN_TRAIN = ("import gc, runpy; gc.freeze = lambda: None; "
                  "runpy.run_module('stages.train', run_name='__main__', alter_sys=True)")


def stage_process(name: str, params: Params, links: Sequence[str],
                  command: Sequence[str] | None = None) -> Process:
    """``python -m stages.<name>`` (or ``command``) in a workdir with ``params``."""
    with workdir(params, links) as root:
        return run(command or [sys.executable, "-m", f"stages.{name}"], root)


# --- in process: the stage's own loop through its hook ------------------------------------

def load(device: torch.device, prepared: Path = PREPARED) -> tuple[TensorSplit, TensorSplit]:
    return (to_device(read_split(prepared, "train"), device),
            to_device(read_split(prepared, "test"), device))


class Trajectory(NamedTuple):
    to_target: float | None  # training seconds until the test set first scored the target
    final_accuracy: float
    seconds_per_epoch: float  # training only


@dataclasses.dataclass
class TrainingClock:
    trained: float = 0.0  # seconds of training so far
    since: float = 0.0  # when the clock last started
    reached: float | None = None  # training seconds when the target was first scored


def time_to_accuracy(params: Params, every: int = SCORE_EVERY_STEPS,
                     prepared: Path = PREPARED) -> Trajectory:
    """Train in process, scoring the test set every ``every`` steps with the training clock
    stopped."""
    device = torch.device("cpu")
    train, test = load(device, prepared)
    trainer = Trainer(params.train, params.model.net, train, device)
    clock = TrainingClock()

    def on_step(step: int) -> None:
        if (step + 1) % every or clock.reached is not None:
            return
        clock.trained += time.perf_counter() - clock.since
        if score(trainer.model, *test, SCORE_BATCH_SIZE).accuracy >= TARGET_ACCURACY:
            clock.reached = clock.trained
        clock.since = time.perf_counter()

    for _ in range(params.train.epochs):
        clock.since = time.perf_counter()
        trainer.run_epoch(on_step=on_step)
        clock.trained += time.perf_counter() - clock.since
    return Trajectory(clock.reached, score(trainer.model, *test, SCORE_BATCH_SIZE).accuracy,
                      clock.trained / params.train.epochs)


def seed_spread(params: Params, seeds: Sequence[int]) -> dict[int, float]:
    """Final test accuracy of the defaults for each seed: exactly what the stage computes."""
    device = torch.device("cpu")
    train, test = load(device)
    accuracies = {}
    for seed in seeds:
        trainer = Trainer(with_train(params, seed=seed).train, params.model.net, train, device)
        for _ in range(params.train.epochs):
            trainer.run_epoch()
        accuracies[seed] = score(trainer.model, *test, SCORE_BATCH_SIZE).accuracy
        log(f"seed {seed}: {accuracies[seed]:.2%}")
    return accuracies


def profile_steps(params: Params, steps: int = 30) -> str:
    """Where a training step's time goes, per operator (markdown table, top 12 by self time)."""
    device = torch.device("cpu")
    train, _ = load(device)
    trainer = Trainer(params.train, params.model.net, train, device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        run_steps(trainer, steps)
    rows = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    lines = ["| operator | calls / step | self time / step (ms) | share |", "|---|---:|---:|---:|"]
    lines += [f"| `{e.key}` | {e.count / steps:.0f} | {e.self_cpu_time_total / steps / 1e3:.2f} | "
              f"{e.self_cpu_time_total / total:.0%} |" for e in rows[:12]]
    return "\n".join(lines)


def step_seconds(params: Params, steps: int = 100, skip: int = 20) -> float:
    """The median time of a training step of ``params`` in process, after ``skip`` steps."""
    device = torch.device("cpu")
    train, _ = load(device)
    ends = run_steps(Trainer(params.train, params.model.net, train, device), skip + steps)
    return statistics.median(end - start for start, end in itertools.pairwise(ends[skip:]))


class StepBudget(NamedTuple):
    """Milliseconds per training step of the defaults, against what the rate target allows."""

    allowed: float  # a step at MIN_RATE_FRACTION of the reference rate
    measured: float  # a step as it runs: the epoch's rate, as the rate target measures it
    convolutions: float  # the net's convolutions in a step, as oneDNN times them
    # a step on FIXED_COST_BATCH images: Python, dispatch, the optimizer (and that batch's
    # own convolutions, a few hundredths of a ms, counted twice)
    fixed: float

    @property
    def out_of_reach(self) -> bool:
        """The convolutions plus the per-step cost alone already take longer than allowed."""
        return self.convolutions + self.fixed > self.allowed


def step_budget(results: dict[str, Any]) -> StepBudget | None:
    """None when the oneDNN log had no convolution of the training batch to time."""
    batch = Params().train.batch_size
    convolutions = sum(k.milliseconds for k in results["kernels"] if k.batch == batch)
    if not convolutions:
        return None
    allowed = results["step_flops"] / (MIN_RATE_FRACTION * reference_gflops(results) * 1e6)
    measured = results["step_flops"] / (results["gflops"] * 1e6)
    return StepBudget(allowed, measured, convolutions, results["fixed_step"] * 1e3)


def step_flops(net: str, batch_size: int) -> int:
    """FLOPs of forward + backward of one batch (convolutions and matmuls only)."""
    model = build_model(net)
    with FlopCounterMode(display=False) as counter:
        F.nll_loss(model(torch.randn(batch_size, 1, 28, 28)),
                   torch.randint(0, 10, (batch_size,))).backward()
    return counter.get_total_flops()


def median_seconds(run_once: Callable[[], object], reps: int = 5) -> float:
    """The median time of ``reps`` calls, after one to warm up."""
    run_once()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_gflops(size: int = MATMUL_SIZE) -> float:
    """A square float32 matmul: ``torch.mm``, which calls MKL's sgemm on a CPU."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / median_seconds(lambda: torch.mm(a, b)) / 1e9


def conv_gflops(shape: tuple[int, int, int, int] = REFERENCE_CONV) -> float:
    """A large float32 convolution, channels-last, through oneDNN (the net's own path)."""
    batch, channels, size, kernel = shape
    images = torch.randn(batch, channels, size, size).contiguous(
        memory_format=torch.channels_last)
    weight = torch.randn(channels, channels, kernel, kernel)
    out = size - kernel + 1
    with torch.no_grad():
        seconds = median_seconds(lambda: F.conv2d(images, weight))
    return 2 * batch * channels * channels * out * out * kernel * kernel / seconds / 1e9


class Kernel(NamedTuple):
    """One oneDNN convolution pass, from ONEDNN_VERBOSE."""

    problem: str  # batch, channels in -> out, output size, kernel
    batch: int
    direction: str
    implementation: str
    milliseconds: float  # per run: the median of its runs after the first
    gflops: float


def onednn_kernels(verbose: str) -> list[Kernel]:
    """The training-mode passes of each convolution in a ONEDNN_VERBOSE log, in order of
    first appearance; the first run of each (it creates the kernel) is left out."""
    runs: dict[tuple[str, int, str, str], list[float]] = {}  # (problem, batch, pass, kernel)
    flops: dict[tuple[str, int, str, str], int] = {}
    for m in ONEDNN_EXEC.finditer(verbose):
        implementation, direction = m[1], m[2]
        if direction not in TRAINING_PASSES:
            continue
        groups = int(m[4] or 1)  # oneDNN counts the channels of all groups together
        batch, cin, cout, oh, kh, ow, kw = (int(m[i]) for i in (3, 5, 6, 7, 8, 9, 10))
        key = (f"{batch} x {cin}->{cout}, {oh}x{ow} out, {kh}x{kw}", batch, direction,
               implementation)
        runs.setdefault(key, []).append(float(m[11]))
        flops[key] = 2 * batch * cin * cout * oh * ow * kh * kw // groups
    kernels = []
    for key, times in runs.items():
        steady = statistics.median(times[1:] or times)
        kernels.append(Kernel(*key, steady, flops[key] / steady / 1e6))
    return kernels


def mkl_path(verbose: str) -> str:
    """The code path MKL names in its MKL_VERBOSE banner, or ``unknown``."""
    found = MKL_BUILD.search(verbose)
    return found[1] if found else "unknown"


# --- the seed notebook's loop, as it was (in a process of its own) ------------------------

def seed_notebook_epoch() -> None:
    """One epoch of pytorch/examples' MNIST loop as the notebook ran it, training then
    scoring the test set; prints the seconds of both and of the test pass."""
    from torchvision import datasets, transforms

    torch.set_num_threads(2)
    torch.manual_seed(1)
    with tempfile.TemporaryDirectory(prefix="bench-mnist-") as root:
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for source in sorted((REPO_ROOT / "data" / "raw").glob("*-ubyte")):
            (raw / source.name).symlink_to(source.resolve())
        transform = transforms.Compose([transforms.ToTensor(),
                                        transforms.Normalize((0.1307,), (0.3081,))])
        loader = torch.utils.data.DataLoader(
            datasets.MNIST(root, train=True, transform=transform), batch_size=1000,
            shuffle=True)
        test_set = datasets.MNIST(root, train=False, transform=transform)
        test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000)
        model = build_model("seed")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
        started = time.perf_counter()
        model.train()
        for data, target in loader:
            optimizer.zero_grad()
            F.nll_loss(model(data), target).backward()
            optimizer.step()
        trained = time.perf_counter()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(data).argmax(1) == target).sum()) for data, target
                          in test_loader)
        done = time.perf_counter()
    print(json.dumps({"epoch_seconds": done - started, "test_seconds": done - trained,
                      "test_accuracy": correct / len(test_set)}))


@contextlib.contextmanager
def baseline_tree(rev: str = BASELINE_REV, raw: Path = REPO_ROOT / "data" / "raw",
                  repo: Path = REPO_ROOT) -> Iterator[Path]:
    """A temporary worktree of ``rev`` holding its own prepared data (its preprocess stage,
    run on ``raw``) and its code compiled, so that no run of it pays for that."""
    with worktree(rev, "bench-baseline-", repo) as tree:
        (tree / "data").mkdir(exist_ok=True)
        (tree / "data" / "raw").symlink_to(raw.resolve(), target_is_directory=True)
        run([sys.executable, "-m", "stages.preprocess"], tree, {"PYTHONPATH": str(tree)})
        run([sys.executable, "-m", "compileall", "-q", "stages"], tree)
        yield tree


def baseline_stage(tree: Path) -> Process:
    """The train stage of a ``baseline_tree`` from scratch: whatever an earlier run left
    (outputs, a state to resume from) goes first, and edited files return to the commit."""
    keep = ("/data/raw", "/data/prepared", "__pycache__")
    run(["git", "clean", "-ffdxq", *(f"--exclude={path}" for path in keep)], tree)
    run(["git", "checkout", "-q", "--", "."], tree)
    return run([sys.executable, "-m", "stages.train"], tree, {"PYTHONPATH": str(tree)})


def paired_ratios(results: dict[str, Any]) -> list[float]:
    """This stage's time over today's, round by round: the load of each round hits both."""
    return [new.seconds / old.seconds
            for new, old in zip(results["stage"], results["baseline"], strict=True)]


# --- the whole run --------------------------------------------------------------------------

def measure(quick: bool) -> dict[str, Any]:
    defaults = Params()
    configure_torch(defaults.train.threads, torch.device("cpu"))
    runs = 1 if quick else STAGE_RUNS
    run([sys.executable, "-m", "compileall", "-q", "stages"])  # as baseline_tree does for its own
    log(f"the train stage at {BASELINE}: a worktree and its preprocess stage")
    with baseline_tree() as tree:
        contenders: dict[str, Callable[[], Any]] = {
            "seed_loop": lambda: json.loads(run([sys.executable, "-m", "benchmarks.train_speed",
                                                 "--seed-notebook-epoch"]).stdout),
            "stage": lambda: stage_process("train", defaults, ["data/prepared"]),
            "unfrozen": lambda: stage_process("train", defaults, ["data/prepared"],
                                              [sys.executable, "-c", UNFROZEN_TRAIN]),
            "baseline": lambda: baseline_stage(tree),
        }
        results: dict[str, Any] = {name: [] for name in contenders}
        names = list(contenders)
        for number in range(runs):  # each contender takes every place in the order in turn
            log(f"seed notebook epoch, the train stage, unfrozen and at {BASELINE}: "
                f"round {number + 1}/{runs}")
            for name in names[number % len(names):] + names[:number % len(names)]:
                results[name].append(contenders[name]())
    results["ddp"] = {}
    for nproc, threads in ((1, 1), (2, 1), (1, 2)):
        log(f"train stage, nproc {nproc} x {threads} thread(s)")
        results["ddp"][(nproc, threads)] = stage_process(
            "train", with_train(defaults, nproc=nproc, threads=threads), ["data/prepared"])
    log("time to 99 % in process")
    results["trajectory"] = time_to_accuracy(defaults)
    log("seed spread")
    results["seeds"] = ({defaults.train.seed: results["trajectory"].final_accuracy} if quick
                        else seed_spread(defaults, SEEDS))
    results["held_out_seeds"] = {} if quick else seed_spread(defaults, HELD_OUT_SEEDS)
    log("start-up costs")
    with workdir(defaults, ["data/prepared"]) as root:
        anatomy = run([sys.executable, "-m", "benchmarks.stage_anatomy"], root)
    found = json.loads(anatomy.stdout)
    results["anatomy"] = {**found["seconds"],
                          "interpreter start and exit": anatomy.seconds - found["in process"]}
    heavy = "import torch, torch._dynamo"
    results["startup"] = {
        "`python -c pass`": run([sys.executable, "-c", "pass"]).seconds,
        f"`python -c '{heavy}'`": run([sys.executable, "-c", heavy]).seconds,
        "the same, then `gc.freeze()` (as `mnist_dvc.errors.run_stage` ends)":
            run([sys.executable, "-c", f"{heavy}; import gc; gc.freeze()"]).seconds,
        "preprocess stage": stage_process("preprocess", defaults, ["data/raw"]).seconds,
        "evaluate stage": stage_process("evaluate", defaults,
                                    ["data/prepared", "data/model"]).seconds,
    }
    log("FLOPs, matmul and a profile")
    cfg = defaults.train
    steps = -(-len(read_split(PREPARED, "train").labels) // cfg.batch_size)
    results["step_flops"] = step_flops(defaults.model.net, cfg.batch_size)
    results["epoch_flops"] = steps * results["step_flops"]
    results["fixed_step"] = step_seconds(with_train(defaults, batch_size=FIXED_COST_BATCH))
    results["matmul"] = matmul_gflops()
    results["conv"] = conv_gflops()
    log("oneDNN and MKL verbose logs of the stage's first steps")
    with workdir(defaults, ["data/prepared"]) as root:
        verbose = run([sys.executable, "-m", "benchmarks.stage_anatomy"], root,
                      {"ONEDNN_VERBOSE": "1", "MKL_VERBOSE": "1"}).stdout
    results["kernels"], results["mkl"] = onednn_kernels(verbose), mkl_path(verbose)
    results["profile"] = profile_steps(defaults)
    return results


def check_targets(results: dict[str, Any]) -> list[Target]:
    accuracies = list(results["seeds"].values())
    mean, low = statistics.mean(accuracies), min(accuracies)
    stage = statistics.median(p.seconds for p in results["stage"])
    seed_epoch = statistics.median(loop["epoch_seconds"] for loop in results["seed_loop"])
    ratio = stage / seed_epoch
    baseline = statistics.median(p.seconds for p in results["baseline"]) / seed_epoch
    paired = paired_ratios(results)
    reached = results["trajectory"].to_target
    fraction = results["gflops"] / reference_gflops(results)
    budget = step_budget(results)
    return [
        Target(f"accuracy over seeds 0-4: mean >= {MIN_MEAN_ACCURACY:.2%}, each >= "
               f"{MIN_SEED_ACCURACY:.2%}", f"mean {mean:.2%}, lowest {low:.2%}",
               mean >= MIN_MEAN_ACCURACY and low >= MIN_SEED_ACCURACY),
        Target(f"whole train stage <= {MAX_STAGE_TO_SEED_EPOCH}x one seed-loop epoch",
               f"{ratio:.2f}x ({stage:.1f} s)", ratio <= MAX_STAGE_TO_SEED_EPOCH),
        Target(f"stretch: <= {STRETCH_STAGE_TO_SEED_EPOCH}x", f"{ratio:.2f}x",
               ratio <= STRETCH_STAGE_TO_SEED_EPOCH),
        Target(f"no slower than today, the stage of {BASELINE} (main when the issue was "
               "filed): this stage's time over today's, round by round",
               f"median {statistics.median(paired):.2f} ({min(paired):.2f}-{max(paired):.2f}); "
               f"{ratio:.2f}x against {baseline:.2f}x of the seed loop",
               statistics.median(paired) <= 1),
        Target(f"{TARGET_ACCURACY:.0%} within {MAX_SECONDS_TO_TARGET:g} s of training",
               "not reached" if reached is None else f"{reached:.1f} s",
               reached is not None and reached <= MAX_SECONDS_TO_TARGET),
        Target(f">= {MIN_RATE_FRACTION:.0%} of the float32 reference rate (the faster of a "
               "matmul and a large convolution)",
               f"{fraction:.0%} of {reference_gflops(results):.0f} GFLOP/s",
               fraction >= MIN_RATE_FRACTION),
        Target("else: why it cannot be had (the convolutions' time plus a step's fixed cost "
               "exceed the step time that rate allows; the profile below)",
               "not needed" if fraction >= MIN_RATE_FRACTION else
               "no convolution times in the oneDNN log" if budget is None else
               f"{budget.convolutions:.1f} + {budget.fixed:.1f} ms "
               f"{'>' if budget.out_of_reach else '<='} {budget.allowed:.1f} ms",
               fraction >= MIN_RATE_FRACTION or (budget is not None and budget.out_of_reach)),
    ]


def reference_gflops(results: dict[str, Any]) -> float:
    """The float32 rate to measure training against: MKL's matmul or oneDNN's convolution,
    the faster (MKL's sgemm takes a generic path on some CPUs where oneDNN uses AVX-512). A
    reference, not a peak: a well-shaped kernel can beat it."""
    return max(results["matmul"], results["conv"])


def kernel_table(kernels: Sequence[Kernel]) -> str:
    if not kernels:
        return "(no oneDNN convolution in the log: has the ONEDNN_VERBOSE format changed?)"
    lines = ["| convolution (batch x channels in->out, output, kernel) | pass | oneDNN kernel "
             "| ms per run | GFLOP/s |", "|---|---|---|---:|---:|"]
    lines += [f"| {k.problem} | {k.direction} | `{k.implementation}` | {k.milliseconds:.2f} | "
              f"{k.gflops:.0f} |" for k in kernels]
    return "\n".join(lines)


def render(results: dict[str, Any], quick: bool) -> str:
    stage, trajectory = results["stage"], results["trajectory"]
    epochs = [seconds for process in stage for seconds, _ in process.epochs()]
    results["gflops"] = results["epoch_flops"] / trajectory.seconds_per_epoch / 1e9
    targets = check_targets(results)
    accuracies = results["seeds"]
    stage_s = statistics.median(p.seconds for p in stage)
    lines = [
        "# Training benchmark", "",
        f"Written by `python -m benchmarks.train_speed{' --quick' if quick else ''}` on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: {machine()}. "
        "A shared machine: rerun to refresh; compare only numbers from one run.", "",
        *(["> **Quick mode**: one run, one seed; it checks the plumbing, not the numbers.",
           ""] if quick else []),
        "## Targets", "", "| target | measured | result |", "|---|---|---|",
        *(f"| {t.name} | {t.measured} | {'PASS' if t.passed else '**FAIL**'} |"
          for t in targets), "",
        "## The train stage against the seed notebook's loop", "",
        "- one epoch of the seed loop as the notebook runs it (training through a DataLoader "
        "with per-item transforms at batch 1000, then scoring the test set): median "
        f"{statistics.median(loop['epoch_seconds'] for loop in results['seed_loop']):.1f} s "
        f"over {len(results['seed_loop'])}, the test pass "
        f"{statistics.median(loop['test_seconds'] for loop in results['seed_loop']):.1f} s of it",
        f"- the whole default train stage, start to exit: median {stage_s:.1f} s; its epochs "
        f"{statistics.median(epochs):.1f} s each, so {stage_s - sum(epochs) / len(stage):.1f} s "
        "of start-up and outputs",
        "- the same stage with `gc.freeze()` made a no-op, as it ran before `run_stage` froze "
        f"the collector (in the same rounds): median "
        f"{statistics.median(p.seconds for p in results['unfrozen']):.1f} s",
        f"- the default train stage of {BASELINE}, main when issue 14 was filed (its code, "
        "params and prepared data, from a temporary worktree; in the same rounds as the "
        f"above): median {statistics.median(p.seconds for p in results['baseline']):.1f} s, "
        f"final test accuracy {final_accuracy(results['baseline'][0])}",
        "",
        "## Data-parallel training (`train.nproc`)", "",
        "| processes x threads | whole stage (s) | epoch (s) | final test acc |",
        "|---|---:|---:|---:|",
        *(f"| {nproc} x {threads} | {p.seconds:.1f} | "
          f"{statistics.median(s for s, _ in p.epochs()):.1f} | {p.epochs()[-1][1]:.2%} |"
          for (nproc, threads), p in results["ddp"].items()), "",
        f"## Time to {TARGET_ACCURACY:.0%}", "",
        f"In process, the stage's `Trainer`, scoring the test set every {SCORE_EVERY_STEPS} "
        "steps with the training clock stopped: "
        + ("not reached" if trajectory.to_target is None else
           f"**{trajectory.to_target:.1f} s** of training")
        + f"; final accuracy {trajectory.final_accuracy:.2%}; "
        f"{trajectory.seconds_per_epoch:.1f} s of training per epoch.", "",
        "## Accuracy over seeds (defaults)", "",
        "| seeds | test accuracy of each | mean | lowest | range |", "|---|---|---:|---:|---:|",
        seed_row(accuracies, "the targets'; the defaults were chosen on them"),
        *([seed_row(results["held_out_seeds"], "held out: the spread without that choice")]
          if results["held_out_seeds"] else []), "",
        "## Start-up", "",
        "The train stage's fixed costs, one at a time, in the stage's order "
        "(`benchmarks/stage_anatomy.py`, a process of its own):", "",
        "| step | seconds |", "|---|---:|",
        *(f"| {name} | {seconds:.3f} |" for name, seconds in results["anatomy"].items()), "",
        "Whole processes, start to exit:", "",
        "| process | wall (s) |", "|---|---:|",
        *(f"| {name} | {seconds:.2f} |" for name, seconds in results["startup"].items()), "",
        "## Distance to the machine", "",
        f"Training reaches **{results['gflops']:.1f} GFLOP/s** (convolutions and matmuls "
        "counted by `FlopCounterMode`, over the in-process epoch above). The same cores do "
        f"{results['matmul']:.1f} GFLOP/s in a {MATMUL_SIZE}^3 float32 matmul (`torch.mm`, "
        f"MKL's sgemm; MKL's banner names its code path: \"{results['mkl']}\") and "
        f"{results['conv']:.1f} GFLOP/s in a large float32 convolution through oneDNN "
        f"(batch, channels, size, kernel {REFERENCE_CONV}).", "",
        "The net's convolutions, as oneDNN runs them in the stage's first steps (batch "
        f"{Params().train.batch_size}) and its scoring of the test set (batch {SCORE_BATCH_SIZE}; "
        "`ONEDNN_VERBOSE=1`; each pass's median run, its first run left out):", "",
        kernel_table(results["kernels"]), "",
        "Where a step goes (30 steps of the default configuration, `torch.profiler`):", "",
        results["profile"], "",
        *budget_lines(step_budget(results), results),
    ]
    return "\n".join(lines)


def final_accuracy(stage: Process) -> str:
    """The test accuracy of a train stage's last epoch, from its output."""
    epochs = stage.epochs()
    return f"{epochs[-1][1]:.2%}" if epochs else "not in its output"


def seed_row(accuracies: dict[int, float], note: str) -> str:
    values = list(accuracies.values())
    return (f"| {', '.join(map(str, accuracies))} ({note}) | "
            f"{', '.join(f'{a:.2%}' for a in values)} | {statistics.mean(values):.2%} | "
            f"{min(values):.2%} | {(max(values) - min(values)) * 10000:.0f} images |")


def budget_lines(budget: StepBudget | None, results: dict[str, Any]) -> list[str]:
    """Why the rate target is out of reach; nothing when it is reached (or unmeasured)."""
    if budget is None or budget.measured <= budget.allowed:
        return []
    total = budget.convolutions + budget.fixed
    return [
        f"Why not {MIN_RATE_FRACTION:.0%}: at that share of {reference_gflops(results):.0f} "
        f"GFLOP/s, a step of the defaults ({results['step_flops'] / 1e9:.2f} GFLOP at batch "
        f"{Params().train.batch_size}) would take {budget.allowed:.1f} ms; it takes "
        f"{budget.measured:.1f} ms. The net's convolutions take {budget.convolutions:.1f} ms "
        f"of it as oneDNN runs them (the kernel table), and a step on {FIXED_COST_BATCH} "
        f"images, whose arithmetic is negligible, takes {budget.fixed:.1f} ms: the Python, "
        "operator dispatch and optimizer update that every step pays whatever its batch. "
        f"Those two come to {total:.1f} ms, "
        + (f"more than the {budget.allowed:.1f} ms allowed before pooling, BatchNorm, ReLU, "
           "indexing and the loss (the profile) take anything." if budget.out_of_reach else
           f"leaving {budget.allowed - total:.1f} ms for pooling, BatchNorm, ReLU, indexing "
           "and the loss (the profile)."), "",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_speed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run, one seed: plumbing")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed-notebook-epoch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seed_notebook_epoch:
        seed_notebook_epoch()
        return
    try:
        report = render(measure(args.quick), args.quick)
    except StageError as err:  # e.g. a clone without the baseline commit
        sys.exit(f"benchmark: {err}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()

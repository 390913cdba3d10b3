"""Training speed: the seed notebook's loop and the train stage, side by side in one run.

    python -m benchmarks.train_speed [--runs N] [--quick] [--output docs/benchmarks.md]

Contenders, each in its own process, timed from start to exit, with its peak RSS as the
kernel accounts it (``ru_maxrss``, read by a bare wrapper process that starts it):

(a) the seed notebook's loop as it was: torchvision's MNIST with a per-item
    ``ToTensor``/``Normalize`` transform, ``DataLoader(batch_size=1000)``, the seed net, SGD;
(b) ``python -m stages.train`` on the same seed configuration, set through params;
(c) ``python -m stages.train`` on the default params, plus an in-process run of the same
    loop that scores the test set every 6,400 training images, to find when 99.0 % is
    first reached.

Stage runs happen in temporary directories laid out like the repository (a ``params.yaml``
and symlinks to the real ``data/``), so the repository's own outputs are never touched. The
benchmark also times the evaluate and preprocess stages and a no-op ``dvc repro`` (only when
``dvc status`` says the pipeline is up to date) and the imports they start with, compares
the compact net's achieved FLOP/s with a large matmul's, and measures each speed technique
of the stages against its alternative (benchmarks/techniques.py). Progress goes to stderr;
the report is one markdown file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.techniques import Technique, measure_techniques, render_techniques
from stages.model import build_model, predict_log_probs, score
from stages.params import Params, parse_params
from stages.runtime import configure_torch, load_split, select_device
from stages.train import SCORE_BATCH_SIZE, make_optimizer, make_scheduler, train_step

REPO_ROOT = Path(__file__).resolve().parent.parent
PREPARED = REPO_ROOT / "data" / "prepared"
RAW = REPO_ROOT / "data" / "raw"
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "benchmarks.md"
VENV_BIN = REPO_ROOT / ".venv" / "bin"

TARGET_ACCURACY = 0.99
# training images between test-set scorings in the fine time-to-accuracy run (25 steps of 256)
FINE_EVAL_IMAGES = 6400
SEED_EPOCHS = 3       # epochs of (a) and of each (b) run; --quick: 1
DEFAULT_RUNS = 3
SEED_THREADS = 2      # the notebook's torch.set_num_threads(2)
MATMUL_SIZE = 2048
MATMUL_REPS = 5

# Targets, in the order the report lists them.
MIN_SPEEDUP = 2.5            # (a)/(b) per-epoch wall time
MIN_DEFAULT_ACCURACY = 0.992
MAX_DEFAULT_STAGE_S = 15.0   # whole train stage, default params
MAX_SECONDS_TO_TARGET = 8.0  # training seconds to 99.0 %, default params
MAX_EVALUATE_S = 3.0
MAX_PREPROCESS_S = 5.0
MAX_DVC_NOOP_S = 1.5
MAX_TRAIN_RSS_MB = 1500.0    # 1.5 GB

EPOCH_LINE = re.compile(
    r"^train: epoch (?P<epoch>\d+)/\d+ loss \S+ train acc \S+ "
    r"test acc (?P<test_acc>[0-9.]+) \((?P<seconds>[0-9.]+) s\)\s*$",
    re.MULTILINE,
)

_STARTED = time.perf_counter()


class Epoch(NamedTuple):
    """One epoch as a contender reported it."""

    epoch: int
    seconds: float             # the epoch's wall time, its test-set evaluation included
    test_acc: float
    eval_seconds: float = 0.0  # the part of ``seconds`` spent evaluating

    @property
    def train_seconds(self) -> float:
        return max(self.seconds - self.eval_seconds, 0.0)


@dataclass
class ContenderResult:
    """Every run of one contender: its epochs, whole-process wall times and peak RSS."""

    key: str     # "a", "b" or "c"
    title: str
    setup: str   # the configuration, in a few words
    runs: list[list[Epoch]] = field(default_factory=list)
    process_seconds: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)

    def add_run(self, epochs: list[Epoch], seconds: float, rss_mb: float) -> None:
        self.runs.append(epochs)
        self.process_seconds.append(seconds)
        self.peak_rss_mb.append(rss_mb)

    @property
    def epochs(self) -> list[Epoch]:
        return [epoch for run in self.runs for epoch in run]

    def epoch_seconds(self) -> float:
        """Median wall time of an epoch, over every epoch of every run."""
        return statistics.median(e.seconds for e in self.epochs)

    def train_seconds_per_epoch(self) -> float:
        return statistics.median(e.train_seconds for e in self.epochs)

    def stage_seconds(self) -> float:
        return statistics.median(self.process_seconds)

    def final_test_acc(self) -> float:
        return statistics.median(run[-1].test_acc for run in self.runs)

    def seconds_to_accuracy(self, target: float = TARGET_ACCURACY) -> list[float]:
        """Training seconds to ``target``, one entry per run that reached it."""
        reached = (train_seconds_to_accuracy(run, target) for run in self.runs)
        return [seconds for seconds in reached if seconds is not None]


class FineResult(NamedTuple):
    """The in-process run of the stage's loop, scoring the test set every few steps."""

    seconds_to_target: float | None  # training seconds (scoring excluded) at first >= target
    step: int | None                 # the optimizer step at which it was seen
    steps_per_epoch: int
    epoch_train_seconds: list[float]
    eval_seconds: float              # median time of one test-set scoring
    final_test_acc: float
    scored_every: int = 1            # steps between scorings


class StageTiming(NamedTuple):
    """Whole-process wall times of one command; no times and a note if it was not run."""

    name: str
    command: str
    seconds: list[float]
    peak_rss_mb: list[float]
    note: str = ""


class Throughput(NamedTuple):
    """The compact net's achieved FLOP/s against a large matmul's."""

    batch_size: int
    step_flops: int         # forward + backward of one training batch
    steps_per_epoch: int
    epoch_flops: int
    stage_epoch_train_s: float  # (c): median epoch wall time minus the test evaluation
    fine_epoch_train_s: float   # the in-process loop: clock stopped while scoring
    matmul_gflops: float

    @property
    def achieved_gflops(self) -> float:
        return self.epoch_flops / self.stage_epoch_train_s / 1e9

    @property
    def fine_achieved_gflops(self) -> float:
        return self.epoch_flops / self.fine_epoch_train_s / 1e9


class Machine(NamedTuple):
    cpu: str
    logical_cpus: int
    physical_cores: int | None
    torch_version: str
    threads: int
    date: str
    load_start: float
    load_end: float


class BenchmarkResults(NamedTuple):
    machine: Machine
    command: str
    quick: bool
    mode: str
    contenders: list[ContenderResult]
    fine: FineResult
    stages: list[StageTiming]
    eval_estimates: dict[str, float]  # net -> seconds of one stage test-set scoring
    throughput: Throughput
    techniques: tuple[Technique, ...] = ()


class Target(NamedTuple):
    name: str
    measured: str
    passed: bool | None  # None: could not be measured
    floor: str = "-"     # what starting the process alone costs, where measured


class ProcessRun(NamedTuple):
    stdout: str
    seconds: float
    peak_rss_mb: float


class BenchmarkError(Exception):
    """A contender failed; the benchmark cannot report on it."""


# --- pure helpers: parsing and arithmetic ------------------------------------------------


def parse_epoch_lines(stdout: str) -> list[Epoch]:
    """The train stage's per-epoch lines, e.g.
    ``train: epoch 1/2 loss 0.2097 train acc 0.9447 test acc 0.9858 (15.2 s)``."""
    return [Epoch(int(m["epoch"]), float(m["seconds"]), float(m["test_acc"]))
            for m in EPOCH_LINE.finditer(stdout)]


def train_seconds_to_accuracy(epochs: Sequence[Epoch], target: float) -> float | None:
    """Training seconds (evaluation excluded) up to the end of the first epoch at ``target``."""
    elapsed = 0.0
    for epoch in epochs:
        elapsed += epoch.train_seconds
        if epoch.test_acc >= target:
            return elapsed
    return None


def first_epoch_at(epochs: Sequence[Epoch], target: float) -> int | None:
    return next((e.epoch for e in epochs if e.test_acc >= target), None)


def train_step_flops(net: str, batch_size: int) -> int:
    """FLOPs of forward + backward of one training batch (convolutions and matmuls only)."""
    model = build_model(net)
    inputs = torch.randn(batch_size, 1, 28, 28)
    targets = torch.randint(0, 10, (batch_size,))
    with FlopCounterMode(display=False) as counter:
        F.nll_loss(model(inputs), targets).backward()
    return counter.get_total_flops()


def epoch_flops(net: str, batch_size: int, images: int) -> int:
    """FLOPs of one epoch: the full batches, then the smaller last one."""
    full, rest = divmod(images, batch_size)
    last = train_step_flops(net, rest) if rest else 0
    return full * train_step_flops(net, batch_size) + last


def params_yaml(params: Params) -> str:
    plain = json.loads(json.dumps(dataclasses.asdict(params)))  # tuples -> lists
    return yaml.safe_dump(plain, sort_keys=False)


def seed_params(epochs: int) -> Params:
    """The seed notebook's configuration, as the train stage's params."""
    return parse_params({
        "model": {"net": "seed"},
        "train": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.5, "batch_size": 1000,
                  "schedule": "constant", "epochs": epochs},
    })


def describe(params: Params) -> str:
    cfg = params.train
    return (f"{params.model.net} net, {cfg.optimizer} lr {cfg.lr:g} momentum {cfg.momentum:g}, "
            f"batch {cfg.batch_size}, {cfg.schedule}, {cfg.epochs} epochs")


# --- running and measuring processes -------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench {time.perf_counter() - _STARTED:6.0f} s] {message}", file=sys.stderr,
          flush=True)


def stage_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TQDM_DISABLE": "1"}


# Runs a command, then writes its wall time (start to exit) and peak RSS as JSON to the file
# named first. A bare interpreter on purpose: on Linux a child's ru_maxrss starts from the
# peak RSS of the process that spawned it (it survives exec), so the benchmark's own large
# process must not be the direct parent of what it measures.
MEASURE_WRAPPER = """\
import json, resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.call(sys.argv[2:])
seconds = time.perf_counter() - started
maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(sys.argv[1], "w") as out:
    json.dump({"seconds": seconds, "maxrss": maxrss, "code": code}, out)
"""


def run_measured(command: list[str], cwd: Path, env: dict[str, str], label: str) -> ProcessRun:
    """Run ``command``, echoing its stdout to stderr; its wall time and own peak RSS."""
    with tempfile.TemporaryDirectory(prefix="bench-measure-") as tmp:
        measured = Path(tmp) / "measured.json"
        wrapped = [sys.executable, "-I", "-S", "-c", MEASURE_WRAPPER, str(measured), *command]
        with subprocess.Popen(wrapped, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              text=True) as proc:
            try:
                lines = []
                for line in proc.stdout:
                    lines.append(line)
                    if not line.startswith("{"):
                        log(f"  {label}: {line.rstrip()}")
            except BaseException:
                proc.send_signal(signal.SIGINT)  # the wrapper then stops its child
                raise
        result = json.loads(measured.read_text()) if measured.exists() else {"code": "?"}
    if result["code"] != 0:
        raise BenchmarkError(f"{label}: `{shlex.join(command)}` exited {result['code']}")
    rss_bytes = result["maxrss"] * (1 if sys.platform == "darwin" else 1024)
    return ProcessRun("".join(lines), result["seconds"], rss_bytes / 1e6)


@contextlib.contextmanager
def stage_workdir(params: Params, links: Sequence[str]) -> Iterator[Path]:
    """A temporary directory laid out like the repository: params.yaml and data symlinks."""
    with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp:
        root = Path(tmp)
        (root / "params.yaml").write_text(params_yaml(params))
        for link in links:
            (root / link).parent.mkdir(parents=True, exist_ok=True)
            (root / link).symlink_to(REPO_ROOT / link, target_is_directory=True)
        yield root


def run_stage(module: str, params: Params, links: Sequence[str], label: str) -> ProcessRun:
    with stage_workdir(params, links) as root:
        return run_measured([sys.executable, "-m", module], root, stage_env(), label)


# --- contenders ------------------------------------------------------------------------------


def seed_notebook_epochs(epochs: int, raw_dir: Path = RAW) -> list[Epoch]:
    """The seed notebook's loop as it was (pytorch/examples MNIST); runs in a worker process."""
    from torchvision import datasets, transforms  # only the worker needs torchvision

    torch.set_num_threads(SEED_THREADS)
    torch.manual_seed(1)
    with tempfile.TemporaryDirectory(prefix="bench-mnist-") as root:
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for source in sorted(raw_dir.glob("*-ubyte")):
            (raw / source.name).symlink_to(source.resolve())
        transform = transforms.Compose([transforms.ToTensor(),
                                        transforms.Normalize((0.1307,), (0.3081,))])
        train_set = datasets.MNIST(root, train=True, download=False, transform=transform)
        test_set = datasets.MNIST(root, train=False, download=False, transform=transform)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=1000, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000)
    model = build_model("seed")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    results = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        notebook_train(model, optimizer, train_loader)
        trained = time.perf_counter()
        accuracy = notebook_test(model, test_loader)
        done = time.perf_counter()
        results.append(Epoch(epoch, done - started, accuracy, done - trained))
        log(f"seed notebook: epoch {epoch}/{epochs} test acc {accuracy:.4f} "
            f"({done - started:.1f} s)")
    return results


def notebook_train(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   loader: torch.utils.data.DataLoader) -> None:
    model.train()
    for data, target in loader:
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()


def notebook_test(model: torch.nn.Module, loader: torch.utils.data.DataLoader) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for data, target in loader:
            output = model(data)
            pred = output.max(1, keepdim=True)[1]
            correct += pred.eq(target.view_as(pred)).sum().item()
    return correct / len(loader.dataset)


def measure_seed_notebook(epochs: int) -> ContenderResult:
    result = ContenderResult(
        "a", "seed notebook loop, as it was",
        "torchvision MNIST + DataLoader(1000), per-item ToTensor/Normalize, seed net, "
        f"sgd lr 0.01 momentum 0.5, {epochs} epochs")
    command = [sys.executable, "-m", "benchmarks.train_speed", "--worker", "seed-notebook",
               "--epochs", str(epochs)]
    run = run_measured(command, REPO_ROOT, stage_env(), "(a)")
    payload = json.loads(run.stdout.strip().splitlines()[-1])
    result.add_run([Epoch(**e) for e in payload["epochs"]], run.seconds, run.peak_rss_mb)
    return result


def measure_train_stage(result: ContenderResult, params: Params, eval_seconds: float) -> None:
    """One run of ``python -m stages.train``; evaluation time per epoch is estimated."""
    run = run_stage("stages.train", params, ["data/prepared"], f"({result.key})")
    epochs = parse_epoch_lines(run.stdout)
    if len(epochs) != params.train.epochs:
        raise BenchmarkError(f"({result.key}): expected {params.train.epochs} epoch lines, "
                             f"parsed {len(epochs)}")
    result.add_run([e._replace(eval_seconds=eval_seconds) for e in epochs], run.seconds,
                   run.peak_rss_mb)


def stage_eval_seconds(net: str, reps: int = 3) -> float:
    """Median time of the train stage's per-epoch test scoring (stages.model.score)."""
    test = load_split(PREPARED, "test")
    model = build_model(net)
    score(model, test["images"], test["labels"], SCORE_BATCH_SIZE)  # warm up
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        score(model, test["images"], test["labels"], SCORE_BATCH_SIZE)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def _test_accuracy(model: torch.nn.Module, test: dict[str, Any]) -> tuple[float, float]:
    """(accuracy, seconds) of one scoring of the whole test set."""
    started = time.perf_counter()
    log_probs = predict_log_probs(model, test["images"], batch_size=10000)
    accuracy = (log_probs.argmax(1) == test["labels"]).float().mean().item()
    return accuracy, time.perf_counter() - started


def fine_time_to_accuracy(params: Params, prepared: Path = PREPARED,
                          target: float = TARGET_ACCURACY,
                          every_images: int = FINE_EVAL_IMAGES) -> FineResult:
    """The train stage's loop, in process, scoring the test set every ``every_images``
    training images (and after each epoch, as the stage does) until ``target`` is reached;
    the training clock stops while scoring. Same seeds and building blocks as
    stages.train.train."""
    cfg = params.train
    device = select_device(cfg.device)
    configure_torch(cfg.threads, device)
    data, test = load_split(prepared, "train", device), load_split(prepared, "test", device)
    images, labels = data["images"], data["labels"]
    count = len(labels)
    torch.manual_seed(cfg.seed)
    model = build_model(params.model.net, device)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = -(-count // cfg.batch_size)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    every = max(1, every_images // cfg.batch_size)
    trained, step, reached = 0.0, 0, None
    epoch_seconds: list[float] = []
    eval_seconds: list[float] = []

    def score_now() -> None:  # with the training clock stopped
        nonlocal reached
        accuracy, seconds = _test_accuracy(model, test)
        eval_seconds.append(seconds)
        if accuracy >= target:
            reached = (trained, step)
            log(f"fine: {accuracy:.4f} after {trained:.1f} s of training (step {step})")

    for _ in range(cfg.epochs):
        at_epoch_start = trained
        segment = time.perf_counter()
        # stages.train.train_one_epoch's loop, with the test set scored every `every` steps
        order = torch.randperm(count, generator=shuffle).to(device)
        model.train()
        for start in range(0, count, cfg.batch_size):
            index = order[start:start + cfg.batch_size]
            train_step(model, optimizer, scheduler, images[index], labels[index], cfg.bf16)
            step += 1
            if reached is None and step % every == 0:
                _synchronize(device)
                trained += time.perf_counter() - segment
                score_now()
                segment = time.perf_counter()
        if isinstance(scheduler, torch.optim.lr_scheduler.StepLR):
            scheduler.step()
        _synchronize(device)
        trained += time.perf_counter() - segment
        epoch_seconds.append(trained - at_epoch_start)
        if reached is None and step % every != 0:  # the stage scores after every epoch
            score_now()
    final_accuracy, _ = _test_accuracy(model, test)
    seconds, at_step = reached if reached is not None else (None, None)
    return FineResult(seconds, at_step, steps_per_epoch, epoch_seconds,
                      statistics.median(eval_seconds), final_accuracy, every)


# --- the other stages, dvc and the machine's limit ----------------------------------------


def time_stage(name: str, links: Sequence[str], runs: int) -> StageTiming:
    seconds, rss = [], []
    for run in range(1, runs + 1):
        log(f"{name} stage, run {run}/{runs}")
        result = run_stage(f"stages.{name}", Params(), links, name)
        seconds.append(result.seconds)
        rss.append(result.peak_rss_mb)
    return StageTiming(name, f"python -m stages.{name}", seconds, rss)


def time_import(module: str, note: str, runs: int) -> StageTiming:
    """Starting python and importing ``module``: a floor under the stages that need it."""
    seconds, rss = [], []
    for run in range(1, runs + 1):
        log(f"import {module}, run {run}/{runs}")
        result = run_measured([sys.executable, "-c", f"import {module}"], REPO_ROOT,
                              stage_env(), f"import {module}")
        seconds.append(result.seconds)
        rss.append(result.peak_rss_mb)
    return StageTiming(f"import {module}", f'python -c "import {module}"', seconds, rss, note)


def dvc_env() -> dict[str, str]:
    path = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1"}


def dvc_out_of_date() -> str | None:
    """Why the pipeline is not up to date (or dvc unusable); None when it is up to date."""
    dvc = VENV_BIN / "dvc"
    if not dvc.exists():
        return f"{dvc} not found"
    status = subprocess.run([str(dvc), "status", "--json"], cwd=REPO_ROOT, env=dvc_env(),
                            capture_output=True, text=True, timeout=300, check=False)
    if status.returncode != 0:
        return f"`dvc status` failed: {status.stderr.strip().splitlines()[-1:]}"
    changes = json.loads(status.stdout or "{}")
    if not changes:
        return None
    return f"`dvc status` says the pipeline is not up to date: {summarize_dvc_status(changes)}"


def summarize_dvc_status(changes: dict[str, Any]) -> str:
    """``dvc status --json`` in one line: each stage and what changed in it."""
    stages = []
    for stage, entries in changes.items():
        what = []
        for entry in entries:
            if isinstance(entry, dict):  # {"changed deps": {path: state}, ...}
                what += [f"{path} {state}" for paths in entry.values() if isinstance(paths, dict)
                         for path, state in paths.items()]
            else:                        # e.g. "always changed"
                what.append(str(entry))
        stages.append(f"{stage}: {', '.join(what)}")
    return "; ".join(stages)


def time_dvc_noop(runs: int) -> StageTiming:
    """``dvc repro`` in the real repository, only while ``dvc status`` reports no change."""
    timing = StageTiming("dvc repro (no-op)", "dvc repro", [], [])
    for run in range(1, runs + 1):
        reason = dvc_out_of_date()  # checked before every run: never a real repro
        if reason is not None:
            log(f"dvc repro not run: {reason}")
            return timing._replace(note=f"not run: {reason}")
        log(f"dvc repro (no-op), run {run}/{runs}")
        result = run_measured([str(VENV_BIN / "dvc"), "repro"], REPO_ROOT, dvc_env(), "dvc")
        if "Running stage" in result.stdout:
            return timing._replace(note="a stage ran (the pipeline changed meanwhile)")
        timing.seconds.append(result.seconds)
        timing.peak_rss_mb.append(result.peak_rss_mb)
    return timing


def matmul_gflops(size: int = MATMUL_SIZE, reps: int = MATMUL_REPS) -> float:
    """Median float32 GFLOP/s of a ``size`` x ``size`` matmul at the current thread count."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm up
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times) / 1e9


def measure_throughput(compact: ContenderResult, fine: FineResult, params: Params) -> Throughput:
    batch = params.train.batch_size
    images = len(load_split(PREPARED, "train")["labels"])
    return Throughput(
        batch_size=batch, step_flops=train_step_flops(params.model.net, batch),
        steps_per_epoch=-(-images // batch),
        epoch_flops=epoch_flops(params.model.net, batch, images),
        stage_epoch_train_s=compact.train_seconds_per_epoch(),
        fine_epoch_train_s=statistics.median(fine.epoch_train_seconds),
        matmul_gflops=matmul_gflops())


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def physical_cores() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.cpu_count(logical=False)


def machine_info(load_start: float) -> Machine:
    return Machine(cpu=cpu_model(), logical_cpus=os.cpu_count() or 0,
                   physical_cores=physical_cores(), torch_version=torch.__version__,
                   threads=torch.get_num_threads(),
                   date=datetime.datetime.now(datetime.timezone.utc).strftime(
                       "%Y-%m-%d %H:%M UTC"),
                   load_start=load_start, load_end=os.getloadavg()[0])


def command_line(argv: Sequence[str]) -> str:
    python = sys.executable
    with contextlib.suppress(ValueError):
        python = str(Path(sys.executable).relative_to(Path.cwd()))
    return shlex.join([python, "-m", "benchmarks.train_speed", *argv])


# --- the whole benchmark ------------------------------------------------------------------


def run_benchmark(runs: int, quick: bool, argv: Sequence[str]) -> BenchmarkResults:
    load_start = os.getloadavg()[0]
    defaults = Params()
    torch.set_num_threads(defaults.train.threads)
    seed_epochs = 1 if quick else SEED_EPOCHS
    seeded = seed_params(seed_epochs)
    log("timing the stage's test-set scoring, to subtract it from epoch times")
    reps = 1 if quick else 3
    estimates = {net: stage_eval_seconds(net, reps) for net in ("seed", defaults.model.net)}

    log(f"(a) seed notebook loop, {seed_epochs} epoch(s)")
    a = measure_seed_notebook(seed_epochs)
    b = ContenderResult("b", "train stage, seed configuration", describe(seeded))
    c = ContenderResult("c", "train stage, default params", describe(defaults))
    for run in range(1, runs + 1):  # interleaved, so load spikes hit both alike
        log(f"(b) train stage, seed configuration, run {run}/{runs}")
        measure_train_stage(b, seeded, estimates["seed"])
        log(f"(c) train stage, default params, run {run}/{runs}")
        measure_train_stage(c, defaults, estimates[defaults.model.net])

    log(f"(c) in process, scoring the test set every {FINE_EVAL_IMAGES} training images")
    fine = fine_time_to_accuracy(defaults)
    stages = [time_stage("evaluate", ["data/prepared", "data/model"], runs),
              time_stage("preprocess", ["data/raw"], runs),
              time_dvc_noop(runs),
              time_import("torch", "the floor under train and evaluate", runs),
              time_import("torch._dynamo", "train's floor: torch.optim imports it on first use",
                          runs)]
    log("counting FLOPs and timing a matmul")
    throughput = measure_throughput(c, fine, defaults)
    log("each technique against its alternative")
    techniques = tuple(measure_techniques(defaults, PREPARED, quick))
    mode = (f"{'quick' if quick else 'full'}: {runs} run(s) of (b), (c) and the other stages; "
            f"(a) and each (b) run {seed_epochs} epoch(s); (c) {defaults.train.epochs} epochs "
            "(its default)")
    return BenchmarkResults(machine_info(load_start), command_line(argv), quick, mode,
                            [a, b, c], fine, stages, estimates, throughput, techniques)


# --- the report -----------------------------------------------------------------------------


def _contender(results: BenchmarkResults, key: str) -> ContenderResult:
    return next(c for c in results.contenders if c.key == key)


def _stage(results: BenchmarkResults, name: str) -> StageTiming:
    return next(s for s in results.stages if s.name.startswith(name))


def _median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _seconds(value: float | None, digits: int = 1) -> str:
    return "not measured" if value is None else f"{value:.{digits}f} s"


def speedup(results: BenchmarkResults) -> float:
    """Per-epoch wall time of (a) over (b)."""
    return _contender(results, "a").epoch_seconds() / _contender(results, "b").epoch_seconds()


def check_targets(results: BenchmarkResults) -> list[Target]:
    c = _contender(results, "c")
    ratio = speedup(results)
    accuracy, stage_s = c.final_test_acc(), c.stage_seconds()
    to_target = results.fine.seconds_to_target
    evaluate = _median_or_none(_stage(results, "evaluate").seconds)
    preprocess = _median_or_none(_stage(results, "preprocess").seconds)
    dvc = _median_or_none(_stage(results, "dvc").seconds)
    rss = max(_contender(results, "b").peak_rss_mb + c.peak_rss_mb)

    def at_most(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    return [
        Target(f"(a)/(b) per-epoch wall time >= {MIN_SPEEDUP:g}x", f"{ratio:.2f}x",
               ratio >= MIN_SPEEDUP),
        Target(f"default params: test acc >= {MIN_DEFAULT_ACCURACY:.1%} with the whole train "
               f"stage <= {MAX_DEFAULT_STAGE_S:g} s",
               f"{accuracy:.2%} in {stage_s:.1f} s",
               accuracy >= MIN_DEFAULT_ACCURACY and stage_s <= MAX_DEFAULT_STAGE_S,
               _floor(results, "torch._dynamo")),
        Target(f"default params: {TARGET_ACCURACY:.1%} within {MAX_SECONDS_TO_TARGET:g} s of "
               f"training (in-process run, scored every {FINE_EVAL_IMAGES:,} images)",
               "not reached" if to_target is None else f"{to_target:.1f} s",
               to_target is not None and to_target <= MAX_SECONDS_TO_TARGET),
        Target(f"evaluate stage <= {MAX_EVALUATE_S:g} s", _seconds(evaluate),
               at_most(evaluate, MAX_EVALUATE_S), _floor(results, "torch")),
        Target(f"preprocess stage <= {MAX_PREPROCESS_S:g} s", _seconds(preprocess),
               at_most(preprocess, MAX_PREPROCESS_S)),
        Target(f"no-op dvc repro <= {MAX_DVC_NOOP_S:g} s", _seconds(dvc, 2),
               at_most(dvc, MAX_DVC_NOOP_S)),
        Target(f"train stage peak RSS <= {MAX_TRAIN_RSS_MB / 1000:g} GB ((b) and (c))",
               f"{rss:.0f} MB", rss <= MAX_TRAIN_RSS_MB),
    ]


def _floor(results: BenchmarkResults, module: str) -> str:
    """The median time of ``python -c "import <module>"``, as a table cell."""
    timing = next((s for s in results.stages if s.name == f"import {module}"), None)
    seconds = _median_or_none(timing.seconds) if timing is not None else None
    return "-" if seconds is None else f"{seconds:.1f} s (`import {module}`)"


def _time_to_target_cell(contender: ContenderResult) -> str:
    reached = contender.seconds_to_accuracy()
    if not reached:
        return "not reached"
    epochs = sorted({first_epoch_at(run, TARGET_ACCURACY) for run in contender.runs} - {None})
    cell = f"{statistics.median(reached):.1f} (epoch {', '.join(map(str, epochs))})"
    if len(reached) < len(contender.runs):
        cell += f", {len(reached)}/{len(contender.runs)} runs"
    return cell


def _contender_row(contender: ContenderResult) -> str:
    epochs = len(contender.runs[0]) if contender.runs else 0
    return (f"| ({contender.key}) {contender.title} | {epochs} x {len(contender.runs)} | "
            f"{contender.epoch_seconds():.1f} | {contender.train_seconds_per_epoch():.1f} | "
            f"{contender.stage_seconds():.1f} | {_time_to_target_cell(contender)} | "
            f"{contender.final_test_acc():.2%} | {max(contender.peak_rss_mb):.0f} |")


def _fine_row(fine: FineResult) -> str:
    reached = ("not reached" if fine.seconds_to_target is None else
               f"{fine.seconds_to_target:.1f} (step {fine.step}, epoch "
               f"{(fine.step or 0) / fine.steps_per_epoch:.2f})")
    return (f"| (c) same loop in process, test set scored every {fine.scored_every} steps | "
            f"{len(fine.epoch_train_seconds)} x 1 | - | "
            f"{statistics.median(fine.epoch_train_seconds):.1f} | - | {reached} | "
            f"{fine.final_test_acc:.2%} | - |")


def _stage_row(stage: StageTiming) -> str:
    wall = _median_or_none(stage.seconds)
    rss = f"{max(stage.peak_rss_mb):.0f}" if stage.peak_rss_mb else "-"
    return (f"| {stage.name} | `{stage.command}` | {len(stage.seconds)} | "
            f"{'-' if wall is None else f'{wall:.2f}'} | {rss} | {stage.note or '-'} |")


def _mark(passed: bool | None) -> str:
    return {True: "PASS", False: "**FAIL**", None: "**not measured**"}[passed]


def render_report(results: BenchmarkResults) -> str:
    """The markdown report of a benchmark run."""
    m, t, fine = results.machine, results.throughput, results.fine
    targets = check_targets(results)
    cores = f", {m.physical_cores} physical cores" if m.physical_cores else ""
    estimates = ", ".join(f"{net} net {s:.2f} s" for net, s in results.eval_estimates.items())
    lines = [
        "# Training speed benchmark",
        "",
        "Written by `benchmarks/train_speed.py`. Timings come from a shared machine and vary "
        "from run to run; rerun the command below to refresh them.",
        "",
        "## Machine and command",
        "",
        f"- CPU: {m.cpu} ({m.logical_cpus} logical CPUs{cores})",
        f"- torch {m.torch_version}, {m.threads} threads",
        f"- date: {m.date}",
        f"- load average (1 min) at start / end: {m.load_start:.2f} / {m.load_end:.2f}",
        f"- command: `{results.command}`",
        f"- mode: {results.mode}",
        "",
        *(["> **Quick mode** checks the plumbing: too few epochs and runs for these figures "
           "to stand for anything. Run without `--quick` to measure.", ""]
          if results.quick else []),
        "## Training",
        "",
        "| contender | epochs x runs | wall / epoch (s) | training / epoch (s) | whole stage (s) "
        f"| training time to {TARGET_ACCURACY:.1%} (s) | final test acc | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(_contender_row(c) for c in results.contenders),
        _fine_row(fine),
        "",
        f"**Per-epoch wall time (a)/(b): {speedup(results):.2f}x**",
        "",
        *(f"- ({c.key}): {c.setup}" for c in results.contenders),
        "",
        "Medians over every epoch of every run (per epoch) and over runs (whole stage, time "
        "to accuracy, final accuracy); peak RSS is the largest of the runs. *Wall / epoch* "
        "includes the test-set evaluation after each epoch. *Whole stage* is one process "
        "from start to exit (interpreter and torch start-up, data loading, every epoch, the "
        "outputs). *Training*: (a) times its loop without evaluation; for (b) and (c) it is "
        "the stage's epoch time minus one test scoring by `stages.model.score`, timed "
        f"separately in this process ({estimates}), so checkpoint and metrics writes remain "
        "in it. Time to accuracy counts training time only, up to the end of the first epoch "
        f"at {TARGET_ACCURACY:.1%}; the in-process row scores the test set every "
        f"{FINE_EVAL_IMAGES:,} training images ({fine.scored_every} steps) and after each epoch, "
        "with its training clock stopped "
        f"(one scoring: {fine.eval_seconds:.2f} s).",
        "",
        "## Other stages",
        "",
        "| stage | command | runs | wall, median (s) | peak RSS (MB) | note |",
        "|---|---|---:|---:|---:|---|",
        *(_stage_row(s) for s in results.stages),
        "",
        "Each stage runs in a temporary directory laid out like the repository; `dvc repro` "
        "runs in the repository itself, and only when `dvc status` reports no change.",
        "",
        "## Distance to the limit",
        "",
        "| quantity | value |",
        "|---|---:|",
        f"| FLOPs of one training step, compact net, batch {t.batch_size} (forward + backward) "
        f"| {t.step_flops / 1e9:.3f} GFLOP |",
        f"| steps per epoch | {t.steps_per_epoch} |",
        f"| FLOPs per epoch | {t.epoch_flops / 1e9:.1f} GFLOP |",
        f"| (c) training time per epoch, train stage | {t.stage_epoch_train_s:.2f} s |",
        f"| achieved, train stage | **{t.achieved_gflops:.1f} GFLOP/s** |",
        f"| achieved, in-process loop ({t.fine_epoch_train_s:.2f} s per epoch) | "
        f"{t.fine_achieved_gflops:.1f} GFLOP/s |",
        f"| float32 matmul {MATMUL_SIZE}x{MATMUL_SIZE} @ {MATMUL_SIZE}x{MATMUL_SIZE}, "
        f"{m.threads} threads, median of {MATMUL_REPS} | **{t.matmul_gflops:.1f} GFLOP/s** |",
        f"| fraction of the matmul rate reached by the train stage | "
        f"**{t.achieved_gflops / t.matmul_gflops:.1%}** |",
        "",
        "`torch.utils.flop_counter.FlopCounterMode` counts convolutions and matrix products "
        "only: BatchNorm, pooling, relu, the loss and the optimizer step are not in the count.",
        "",
        *(render_techniques(results.techniques) if results.techniques else []),
        "## Targets",
        "",
        "| target | measured | start-up floor | result |",
        "|---|---|---|---|",
        *(f"| {target.name} | {target.measured} | {target.floor} | {_mark(target.passed)} |"
          for target in targets),
        "",
        f"{sum(t.passed is True for t in targets)} of {len(targets)} targets met.",
        "",
    ]
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_speed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None,
                        help="runs of (b) and (c) and of the other stages (default 3; "
                             "--quick: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="check the plumbing: 1 run, (a) and (b) 1 epoch each")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="markdown report (default docs/benchmarks.md)")
    parser.add_argument("--worker", choices=["seed-notebook"], help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=SEED_EPOCHS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker == "seed-notebook":
        epochs = seed_notebook_epochs(args.epochs)
        print(json.dumps({"epochs": [e._asdict() for e in epochs]}), flush=True)
        return
    runs = args.runs or (1 if args.quick else DEFAULT_RUNS)
    try:
        results = run_benchmark(runs, args.quick, argv)
    except BenchmarkError as err:
        sys.exit(f"benchmark failed: {err}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render_report(results))
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()

"""What each speed technique of the stages gives: each one switched off alone, side by side.

Part of ``python -m benchmarks.train_speed`` (the report's "Techniques" section). Every
comparison runs the stages' own building blocks on the real prepared data, alternating
"with" and "without" runs so that load on the machine hits both alike.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from stages.model import build_model, predict_log_probs
from stages.params import Params
from stages.prepared import split_files
from stages.runtime import configure_torch, load_split
from stages.train import SCORE_BATCH_SIZE, make_optimizer, train_step


class Technique(NamedTuple):
    name: str         # what the stages do
    alternative: str  # what was measured instead
    unit: str
    used: float       # median with the technique
    without: float    # median with the alternative

    @property
    def gain(self) -> float:
        """How many times slower the alternative is (below 1: the alternative is faster)."""
        return self.without / self.used


def compare(name: str, alternative: str, unit: str, used: Callable[[], float],
            without: Callable[[], float], repeats: int) -> Technique:
    """Median of ``repeats`` alternating measurements of each, after one warm-up each."""
    used(), without()
    pairs = [(used(), without()) for _ in range(repeats)]
    return Technique(name, alternative, unit, statistics.median(p[0] for p in pairs),
                     statistics.median(p[1] for p in pairs))


def step_timer(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               data: dict[str, torch.Tensor], batch_size: int, steps: int,
               sync_every_step: bool = False) -> Callable[[], float]:
    """A function that trains ``steps`` steps and returns the milliseconds per step."""
    images, labels = data["images"], data["labels"]
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))

    def run() -> float:
        started = time.perf_counter()
        for step in range(steps):
            index = order[step * batch_size:(step + 1) * batch_size]
            loss, _ = train_step(model, optimizer, None, images[index], labels[index], False)
            if sync_every_step:
                loss.item()
        return (time.perf_counter() - started) / steps * 1000

    return run


@contextlib.contextmanager
def nan_fills() -> Iterator[None]:
    """torch's default in deterministic mode: every new tensor filled with NaN."""
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = False


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def within(context: Callable[[], contextlib.AbstractContextManager[Any]],
           timer: Callable[[], float]) -> Callable[[], float]:
    """``timer`` run inside a fresh ``context()`` each time."""
    def run() -> float:
        with context():
            return timer()
    return run


def score_timer(model: torch.nn.Module, images: torch.Tensor, batch_size: int,
                inference: bool = True) -> Callable[[], float]:
    """A function that scores ``images`` and returns the seconds it took."""
    def run() -> float:
        started = time.perf_counter()
        if inference:
            predict_log_probs(model, images, batch_size)
        else:  # what a plain forward pass costs: autograd records every operation
            model.eval()
            for start in range(0, len(images), batch_size):
                model(images[start:start + batch_size]).sum().item()
        return time.perf_counter() - started
    return run


def load_timer(prepared: Path, mapped: bool) -> Callable[[], float]:
    """Seconds to get the training images ready to index: mapped, or read into memory."""
    images_path = split_files(prepared, "train")[0]

    def run() -> float:
        started = time.perf_counter()
        if mapped:
            load_split(prepared, "train")
        else:
            torch.from_numpy(np.load(images_path, allow_pickle=False))
        return time.perf_counter() - started
    return run


def measure_techniques(params: Params, prepared: Path, quick: bool) -> list[Technique]:
    """Each technique against its alternative, on the compact net with default params."""
    cfg = params.train
    device = torch.device("cpu")
    configure_torch(cfg.threads, device)
    steps, repeats = (10, 1) if quick else (40, 3)
    data, test = load_split(prepared, "train"), load_split(prepared, "test")

    def trainer(memory_format: torch.memory_format = torch.channels_last,
                **adam: Any) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = build_model(params.model.net).to(memory_format=memory_format)
        if not adam:
            return model, make_optimizer(model, cfg)
        # the stage's Adam, in another implementation
        return model, torch.optim.Adam(model.parameters(), lr=cfg.lr,
                                       betas=(cfg.momentum, 0.999), **adam)

    def steps_of(*args: Any, **kwargs: Any) -> Callable[[], float]:
        return step_timer(*trainer(*args, **kwargs), data, cfg.batch_size, steps)

    stage_steps = steps_of()
    model, optimizer = trainer()
    scoring_model = build_model(params.model.net).eval()
    ms, per_scoring = "ms / step", "s / 10,000 images"
    return [
        compare("channels-last layout", "contiguous (NCHW)", ms, stage_steps,
                steps_of(torch.contiguous_format), repeats),
        compare("deterministic mode without NaN fills", "with them (torch's default)", ms,
                stage_steps, within(nan_fills, stage_steps), repeats),
        compare("no host sync in the loop", "loss.item() every step", ms,
                step_timer(model, optimizer, data, cfg.batch_size, steps),
                step_timer(model, optimizer, data, cfg.batch_size, steps, True), repeats),
        compare(f"{cfg.threads} threads", "1 thread", ms, stage_steps,
                within(one_thread, stage_steps), repeats),
        compare("Adam, for-loop (torch's CPU default)", "foreach Adam", ms, stage_steps,
                steps_of(foreach=True), repeats),
        compare("Adam, for-loop (torch's CPU default)", "fused Adam", ms, stage_steps,
                steps_of(fused=True), repeats),
        compare("scoring under inference_mode", "a plain forward pass (autograd on)",
                per_scoring, score_timer(scoring_model, test["images"], SCORE_BATCH_SIZE),
                score_timer(scoring_model, test["images"], SCORE_BATCH_SIZE, False), repeats),
        compare(f"scoring in batches of {SCORE_BATCH_SIZE:,}", "batches of 100",
                per_scoring, score_timer(scoring_model, test["images"], SCORE_BATCH_SIZE),
                score_timer(scoring_model, test["images"], 100), repeats),
        compare("memory-mapped training images", "read into memory (np.load)",
                "s / load", load_timer(prepared, True), load_timer(prepared, False),
                repeats),
    ]


def render_techniques(techniques: Sequence[Technique]) -> list[str]:
    """The report's "Techniques" section, as markdown lines."""
    return [
        "## Techniques",
        "",
        "Each technique of the stages against one alternative, measured side by side in this "
        "run (alternating, median); *gain* is how many times slower the alternative is, so "
        "below 1.00x the alternative would be faster. Training steps use the compact net "
        "with the default params on the real training images.",
        "",
        "| the stages use | measured instead | unit | with | instead | gain |",
        "|---|---|---|---:|---:|---:|",
        *(f"| {t.name} | {t.alternative} | {t.unit} | {t.used:.3g} | {t.without:.3g} | "
          f"{t.gain:.2f}x |" for t in techniques),
        "",
    ]

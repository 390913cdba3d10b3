"""Calibrate ``mnist-dvc review --seeds`` (``mnist-dvc calibrate``): how often its verdict
calls a change where there is none, how often it sees a known one.

Trains params.yaml's config and each change on seeds 100, ... in process as review runs them
(SEED_THREADS, SEED_JOBS at a time) on data/prepared. By review's verdict rule: false
positives: the defaults' seeds split into two disjoint groups of N paired in order (a change
that moves the bits, not the expected accuracy), every such split or SPLITS random ones;
power: every set of N seeds, defaults against a change paired by seed, called in the
direction of the change's mean effect over all seeds. Writes CALIBRATION."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from mnist_dvc.commands.paired_stats import paired_test, smallest_visible_effect
from mnist_dvc.commands.review import CALIBRATION, FIRST_SEED, SEED_JOBS, SEED_THREADS, machine
from mnist_dvc.config.params import Params, load_params, with_train
from mnist_dvc.config.schema import parse_yaml
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.prepared import read_split
from mnist_dvc.files import write_json_atomic

CHANGES = ("train.shift=0", "train.epochs=1")  # a small known effect, and a large one
SIZES, SPLITS = (3, 5), 100_000  # N seeds a side; random splits when there are more


def seed_errors(params: Params, prepared: Path, seed: int) -> int:
    """Test images wrong after ``seed`` is trained as the train stage trains it, the model
    saved and loaded and scored as evaluate does."""
    import torch

    from mnist_dvc.data.prepared import read_normalization
    from mnist_dvc.model.nets import load_model, save_model, score
    from mnist_dvc.runtime import configure_torch, to_device
    from mnist_dvc.training.trainer import Trainer

    cpu, cfg = torch.device("cpu"), dataclasses.replace(params.train, seed=seed)
    configure_torch(SEED_THREADS, cpu)  # review's thread count: it changes the bits
    trainer = Trainer(cfg, params.model.net, to_device(read_split(prepared, "train"), cpu), cpu)
    for _ in range(cfg.epochs):
        trainer.run_epoch()
    with tempfile.TemporaryDirectory(prefix="calibration-") as scratch:
        path = Path(scratch) / "model.pt"
        save_model(path, params.model.net, trainer.model, read_normalization(prepared))
        torch.set_num_threads(params.evaluate.threads)
        test = to_device(read_split(prepared, "test"), cpu)
        log_probs = score(load_model(path).model, *test, params.evaluate.batch_size).log_probs
    return int((log_probs.argmax(1) != test.labels).sum())


def called(base: list[int], head: list[int]) -> str | None:
    """Review's verdict on per-seed error counts: "better", "worse" or None."""
    return paired_test([-e for e in base], [-e for e in head]).direction


def calibrate(errors: dict[str, list[int]], sizes: list[int]) -> dict:
    defaults, rng, sd = errors["defaults"], np.random.default_rng(0), statistics.stdev(
        errors["defaults"])
    out: dict = {"sd_images": sd, "smallest_visible_effect": {}, "false_positive_rate": {},
                 "power": {}}
    for n in sizes:
        picks = list(itertools.permutations(range(len(defaults)), 2 * n)) \
            if math.perm(len(defaults), 2 * n) <= SPLITS else \
            [tuple(rng.permutation(len(defaults))[:2 * n]) for _ in range(SPLITS)]
        out["smallest_visible_effect"][str(n)] = smallest_visible_effect(sd, n)
        out["false_positive_rate"][str(n)] = sum(
            called([defaults[i] for i in p[:n]], [defaults[i] for i in p[n:]]) is not None
            for p in picks) / len(picks)
    for change, changed in errors.items():
        effect = statistics.mean(defaults) - statistics.mean(changed)  # images right, +: better
        if change != "defaults":
            out["power"][change] = {"effect_images": effect, **{str(n): statistics.mean(
                called([defaults[i] for i in s], [changed[i] for i in s])
                == ("better" if effect > 0 else "worse")
                for s in itertools.combinations(range(len(defaults)), n)) for n in sizes}}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mnist-dvc calibrate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--change", action="append", help=f"train.KEY=VALUE {CHANGES}")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--root", type=Path, default=Path("."), help="the project (.)")
    args = parser.parse_args(argv)
    layout = Layout(args.root)
    configs = {"defaults": load_params(layout.params)}
    for change in args.change or CHANGES:
        key, value = change.removeprefix("train.").split("=", 1)
        configs[change] = with_train(configs["defaults"], **{key: parse_yaml(value)})
    seeds = list(range(FIRST_SEED, FIRST_SEED + args.seeds))
    started = time.perf_counter()
    with ProcessPoolExecutor(SEED_JOBS, mp_context=get_context("spawn")) as pool:
        runs = {name: [pool.submit(seed_errors, params, layout.prepared, seed) for seed in seeds]
                for name, params in configs.items()}
        errors = {name: [run.result() for run in futures] for name, futures in runs.items()}
    seconds = time.perf_counter() - started
    write_json_atomic(layout.root / CALIBRATION, {
        "machine": machine(), "threads": SEED_THREADS, "jobs": SEED_JOBS, "seeds": seeds,
        "test_images": len(read_split(layout.prepared, "test").labels),
        "seconds": round(seconds), "errors": {
            name: dict(zip(map(str, seeds), e, strict=True)) for name, e in errors.items()},
        **calibrate(errors, args.sizes)})
    print(f"calibrate: wrote {layout.root / CALIBRATION} ({len(seeds)} seeds x "
          f"{len(configs)} configs in {seconds:.0f} s)")


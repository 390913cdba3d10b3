"""Calibrate ``mnist-dvc review --seeds``: how often its verdict calls a change where there is
none, and how often it sees a known one. Writes docs/review_calibration.json.

    python -m benchmarks.review_calibration [--seeds 20] [--change train.shift=0 ...]

Trains params.yaml's config, and each change, on seeds 100, 101, ... in process with the
project's Trainer, as review runs them (train.threads SEED_THREADS, SEED_JOBS at a time;
scored as evaluate scores), on data/prepared (run ``dvc repro`` first). Then, by review's
own verdict rule:
- false positives: the defaults' seeds split into two disjoint groups of N, paired in order
  (a change that moves every bit but not the expected accuracy): the share called better or
  worse, over every such split or SPLITS random ones;
- power: every set of N seeds, the defaults against a change, paired by seed as review pairs
  them: the share called in the direction of the change's mean effect over all seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import statistics
import time
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
SIZES = (3, 5)
SPLITS = 20_000  # random splits when there are more than this many


def seed_errors(params: Params, prepared: Path, seed: int) -> int:
    """Train ``seed`` as the train stage would (with review's thread count); score as
    evaluate does: the number of test images wrong."""
    import torch

    from mnist_dvc.model.nets import predict_log_probs
    from mnist_dvc.runtime import configure_torch, to_device
    from mnist_dvc.training.trainer import Trainer

    cpu = torch.device("cpu")
    cfg = dataclasses.replace(params.train, seed=seed, threads=SEED_THREADS)
    configure_torch(cfg.threads, cpu)
    trainer = Trainer(cfg, params.model.net, to_device(read_split(prepared, "train"), cpu), cpu)
    for _ in range(cfg.epochs):
        trainer.run_epoch()
    torch.set_num_threads(params.evaluate.threads)
    images, labels = to_device(read_split(prepared, "test"), cpu)
    predicted = predict_log_probs(trainer.model, images, params.evaluate.batch_size).argmax(1)
    return int((predicted != labels).sum())


def called(base: list[int], head: list[int]) -> str | None:
    """Review's verdict on per-seed error counts: "better", "worse" or None."""
    return paired_test([-e for e in base], [-e for e in head]).direction


def designs(count: int, size: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Ordered picks of 2 * size distinct indices: every one, or SPLITS random ones."""
    if math.perm(count, 2 * size) <= SPLITS:
        return list(itertools.permutations(range(count), 2 * size))
    return [tuple(rng.permutation(count)[:2 * size]) for _ in range(SPLITS)]


def calibrate(errors: dict[str, list[int]], sizes: tuple[int, ...]) -> dict:
    defaults, rng = errors["defaults"], np.random.default_rng(0)
    sd = statistics.stdev(defaults)
    result: dict = {"sd_images": sd, "smallest_visible_effect": {}, "false_positive_rate": {},
                    "power": {}}
    for n in sizes:
        picks = designs(len(defaults), n, rng)
        result["smallest_visible_effect"][str(n)] = smallest_visible_effect(sd, n)
        result["false_positive_rate"][str(n)] = sum(
            called([defaults[i] for i in p[:n]], [defaults[i] for i in p[n:]]) is not None
            for p in picks) / len(picks)
    for change, changed in errors.items():
        if change == "defaults":
            continue
        effect = statistics.mean(defaults) - statistics.mean(changed)  # images right, +: better
        entry: dict = {"effect_images": effect}
        for n in sizes:
            subsets = list(itertools.combinations(range(len(defaults)), n))
            entry[str(n)] = sum(called([defaults[i] for i in s], [changed[i] for i in s])
                                == ("better" if effect > 0 else "worse")
                                for s in subsets) / len(subsets)
        result["power"][change] = entry
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--change", action="append", help=f"train.KEY=VALUE {CHANGES}")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--root", type=Path, default=Path("."), help="the project (.)")
    args = parser.parse_args(argv)
    layout = Layout(args.root)
    defaults = load_params(layout.params)
    configs = {"defaults": defaults}
    for change in args.change or CHANGES:
        key, value = change.removeprefix("train.").split("=", 1)
        configs[change] = with_train(defaults, **{key: parse_yaml(value)})
    seeds = list(range(FIRST_SEED, FIRST_SEED + args.seeds))
    started = time.perf_counter()
    with ProcessPoolExecutor(SEED_JOBS, mp_context=get_context("spawn")) as pool:
        runs = {name: [pool.submit(seed_errors, params, layout.prepared, seed) for seed in seeds]
                for name, params in configs.items()}
        errors = {name: [run.result() for run in futures] for name, futures in runs.items()}
    seconds = time.perf_counter() - started
    out = {"machine": machine(), "threads": SEED_THREADS, "jobs": SEED_JOBS, "seeds": seeds,
           "test_images": len(read_split(layout.prepared, "test").labels),
           "seconds": round(seconds),
           "errors": {name: dict(zip(map(str, seeds), e, strict=True))
                      for name, e in errors.items()}, **calibrate(errors, tuple(args.sizes))}
    write_json_atomic(layout.root / CALIBRATION, out)
    print(f"review_calibration: wrote {layout.root / CALIBRATION} ({len(seeds)} seeds x "
          f"{len(configs)} configs in {seconds:.0f} s)")


if __name__ == "__main__":
    main()

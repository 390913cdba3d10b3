"""The train stage's fixed costs, one at a time, in a fresh process (``make benchmark`` runs it).

    python -m benchmarks.stage_anatomy    (in a directory laid out like the repository)

It calls the stage's own functions in the stage's order (``_train`` in stages/train.py),
writing its outputs into a temporary directory, and prints one JSON object: the seconds each
took. It runs through ``run_stage``, as the stage does, so that its process ends as the
stage's does: the caller times the whole process, and the interpreter's start and exit are
what its laps leave over. Imports are timed too, so nothing above ``main`` imports torch.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the real import is timed, in main
    from mnist_dvc.training.trainer import Trainer

LATER_STEPS = 20  # steady-state steps timed after the first, for comparison


def main() -> None:
    started = last = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        seconds[name] = now - last
        last = now

    import torch

    lap("import torch")
    from mnist_dvc.config.schema import load_config
    from mnist_dvc.config.train import TrainConfig
    from mnist_dvc.config.workspace import Layout
    from mnist_dvc.data.prepared import read_normalization, read_split, split_digest
    from mnist_dvc.model.nets import check_net, save_model, score
    from mnist_dvc.model.torch_files import torch_save_verified
    from mnist_dvc.runtime import configure_torch, select_device, to_device
    from mnist_dvc.training.resume import run_fingerprint, training_record
    from mnist_dvc.training.trainer import Trainer
    from stages import train

    lap("import the stage's other modules")
    gc.freeze()  # where run_stage freezes for the stage: after its imports
    layout = Layout()
    params = load_config(layout.params, TrainConfig)
    check_net(params.model.net, layout.params)
    train.check_data(params, layout)
    device = select_device(params.train.device)
    configure_torch(params.train.threads, device)
    train_set = to_device(read_split(layout.prepared, "train"), device)
    test_set = to_device(read_split(layout.prepared, "test"), device)
    lap("read params, map the prepared arrays")
    fingerprint = run_fingerprint(params, device, split_digest(layout.prepared, "train"),
                                  split_digest(layout.prepared, "test"))
    lap("fingerprint the run (hash both splits)")
    importlib.import_module("torch._dynamo")
    lap("import torch._dynamo (any torch.optim optimizer's constructor does)")
    trainer = Trainer(params.train, params.model.net, train_set, device)
    lap("build the network and its optimizer")
    step_ends = run_steps(trainer, 1 + LATER_STEPS)
    seconds["first training step"] = step_ends[0] - last
    seconds["a later step (median)"] = statistics.median(
        end - start for start, end in itertools.pairwise(step_ends))
    last = time.perf_counter()
    score(trainer.model, *test_set, train.SCORE_BATCH_SIZE)
    lap("score the test set")
    history = [train.history_row(1, 0.0, 0.0, 0.0, 0.0)]
    with tempfile.TemporaryDirectory(prefix="anatomy-") as scratch:
        out = Layout(Path(scratch))
        save_model(out.model, params.model.net, trainer.model,
                   read_normalization(layout.prepared))
        torch_save_verified(out.checkpoint, training_record(fingerprint, history,
                                                            trainer.state_dict()))
        train.write_metrics(out, history, params.train.epochs)
        lap("write the model, the training state and the metrics")
    print(json.dumps({"torch": torch.__version__, "seconds": seconds,
                      "in process": time.perf_counter() - started}))


def run_steps(trainer: Trainer, steps: int) -> list[float]:
    """Run the first ``steps`` steps of an epoch; the clock at the end of each."""
    ends: list[float] = []

    class Enough(Exception):
        pass

    def hook(step: int) -> None:
        ends.append(time.perf_counter())
        if step + 1 == steps:
            raise Enough

    with contextlib.suppress(Enough):
        trainer.run_epoch(on_step=hook)
    return ends


if __name__ == "__main__":
    from mnist_dvc.errors import run_stage

    run_stage(main)

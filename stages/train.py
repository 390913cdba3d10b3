"""Stage 3, train: fit the network named by ``model.net`` on the prepared arrays.

Outputs (written once the run is complete, each atomically):

- ``data/model/model.pt``: the weights, the net's name, the input normalization and the
  dataset's image shape and class names (from ``data/prepared/dataset.json``);
- ``data/model/checkpoint.pt``: the final training state (mnist_dvc/training/resume.py);
- ``metrics/train.json``, the per-epoch ``metrics/train_history.csv`` and
  ``metrics/train_steps.csv``: the training loss and accuracy over each window of
  ``STEP_WINDOW`` batches (the last of an epoch may be shorter), a curve finer than epochs
  that costs no extra pass and leaves the results unchanged. Scoring the test set that often
  would cost about a third more time per window (measured), so test metrics stay per epoch.

The two metrics files are also rewritten after every epoch, so ``dvc exp show`` shows a
running experiment's progress; ``train.json`` then says ``"epoch": k`` of ``"epochs": n``,
and a run that stopped early never reads as a finished one. After every epoch the state is
saved under ``data/resume/`` so that a killed run, rerun, continues exactly.

With ``train.nproc`` > 1 the stage relaunches itself in that many processes with torchrun
(mnist_dvc/training/distributed.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from mnist_dvc.config.schema import load_config
from mnist_dvc.config.train import TrainConfig
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.prepared import read_normalization, read_split, split_digest
from mnist_dvc.data.spec import DATASET_FILE, read_dataset
from mnist_dvc.errors import PeerLost, StageError, run_stage
from mnist_dvc.files import file_digest, write_csv_atomic, write_json_atomic
from mnist_dvc.model.nets import check_fits, check_net, save_model, score
from mnist_dvc.model.torch_files import torch_save_verified
from mnist_dvc.runtime import configure_torch, select_device, to_device
from mnist_dvc.training import distributed
from mnist_dvc.training.distributed import Group
from mnist_dvc.training.resume import ResumeStore, run_fingerprint, training_record
from mnist_dvc.training.trainer import EpochStats, Trainer

SCORE_BATCH_SIZE = 1000  # larger batches score no faster and cost more memory
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")
STEP_WINDOW = 25  # optimizer steps per row of train_steps.csv
STEP_COLUMNS = ("step", "epoch", "train_loss", "train_acc")  # epoch: fractional, steps done


def main(layout: Layout = Layout()) -> None:
    params = load_config(layout.params, TrainConfig)
    check_net(params.model.net, layout.params)
    cfg = params.train
    if cfg.nproc > 1 and not distributed.under_torchrun():
        distributed.check_process_count(cfg.nproc, select_device(cfg.device))
        check_data(params, layout)  # before paying for the launcher
        distributed.launch(cfg, "stages.train")
        return
    try:
        train(params, layout)
    except RuntimeError as err:
        if distributed.under_torchrun() and distributed.lost_peer(err):
            raise PeerLost from err  # no traceback: the peer that failed says why
        raise


def check_data(params: TrainConfig, layout: Layout) -> int:
    """The training set's size, once the prepared data and ``train.batch_size`` fit."""
    count = len(read_split(layout.prepared, "train").labels)
    read_split(layout.prepared, "test")
    read_normalization(layout.prepared)
    check_fits(params.model.net, read_dataset(layout.prepared))
    cfg = params.train
    if cfg.batch_size > count:
        raise StageError(f"{layout.params}: train.batch_size {cfg.batch_size} is larger than "
                         f"the training set ({count} images)")
    last_batch = count % cfg.batch_size or cfg.batch_size
    if last_batch < cfg.nproc:
        raise StageError(f"{layout.params}: train.batch_size {cfg.batch_size} leaves a last "
                         f"batch of {last_batch} image(s), fewer than train.nproc "
                         f"({cfg.nproc}) processes to share it")
    return count


def train(params: TrainConfig, layout: Layout) -> list[dict[str, float]]:
    """Train (or resume) and write every output; returns the per-epoch history."""
    cfg = params.train
    check_data(params, layout)
    device = select_device(cfg.device)
    group = distributed.join(cfg, device)  # (under torchrun: one GPU per process)
    try:
        return _train(params, layout, group, distributed.local_device(group, device))
    finally:
        distributed.leave(group)


def _train(params: TrainConfig, layout: Layout, group: Group,
           device: torch.device) -> list[dict[str, float]]:
    cfg = params.train
    configure_torch(cfg.threads, device)
    train_set = to_device(read_split(layout.prepared, "train"), device)
    test_set = to_device(read_split(layout.prepared, "test"), device)
    dataset = read_dataset(layout.prepared)
    fingerprint = run_fingerprint(params, device, split_digest(layout.prepared, "train"),
                                  split_digest(layout.prepared, "test"),
                                  file_digest(layout.prepared / DATASET_FILE, "sha256"))
    if len(set(group.gather(fingerprint))) > 1:
        raise StageError("the training processes disagree on params, data or code "
                         "(every machine needs the same checkout and data)")
    trainer = Trainer(cfg, params.model.net, train_set, device, group, dataset.num_classes)
    store = ResumeStore(layout.resume, fingerprint)
    history: list[dict[str, float]] = []
    steps: list[tuple[float, ...]] = []  # STEP_COLUMNS: numbers only, pickled the same anew
    record = group.broadcast(store.load() if group.is_main else None)
    if record is not None:
        trainer.load_state_dict(record["trainer"])
        # Rebuilt with our own key objects: pickle then writes the next state byte for byte
        # as an uninterrupted run would.
        history = [history_row(*(row[k] for k in HISTORY_COLUMNS)) for row in record["history"]]
        steps = [tuple(row) for row in record.get("steps", [])]
        if group.is_main:
            print(f"train: resuming from {store.path} after epoch {len(history)}")

    state = None
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        started = time.perf_counter()

        def on_window(done: int, window: EpochStats, epoch: int = epoch) -> None:
            step = (epoch - 1) * trainer.steps_per_epoch + done
            steps.append((step, step / trainer.steps_per_epoch, window.loss, window.accuracy))

        stats = trainer.run_epoch(f"epoch {epoch}/{cfg.epochs}", on_window=on_window,
                                  window=STEP_WINDOW)
        state = trainer.state_dict()  # on every rank: it gathers their generators
        if group.is_main:
            _, test_loss, test_acc = score(trainer.model, *test_set, SCORE_BATCH_SIZE)
            history.append(history_row(epoch, stats.loss, stats.accuracy, test_loss, test_acc))
            store.save(training_record(fingerprint, history, state, steps))
            if epoch < cfg.epochs:  # the final metrics come after the model, below
                write_metrics(layout, history, cfg.epochs, steps)
            print(f"train: epoch {epoch}/{cfg.epochs} loss {stats.loss:.4f} "
                  f"train acc {stats.accuracy:.4f} test acc {test_acc:.4f} "
                  f"({time.perf_counter() - started:.1f} s)", flush=True)
        group.barrier()

    if state is None:  # resumed from a state whose epochs were all done
        state = trainer.state_dict()
    if group.is_main:
        save_model(layout.model, params.model.net, trainer.model,
                   read_normalization(layout.prepared), dataset)
        torch_save_verified(layout.checkpoint,
                            training_record(fingerprint, history, state, steps))
        write_metrics(layout, history, cfg.epochs, steps)
        store.clear()
    group.barrier()
    return history


def history_row(*values: float) -> dict[str, float]:
    return dict(zip(HISTORY_COLUMNS, values, strict=True))


def write_metrics(layout: Layout, history: list[dict[str, float]], epochs: int,
                  steps: Sequence[tuple[float, ...]] = ()) -> None:
    """``train.json`` (the last epoch: how far, and the training loss and accuracy), the
    history of every epoch so far and the finer curve of ``steps``."""
    rounded = [{k: (v if k == "epoch" else round(v, 6)) for k, v in row.items()}
               for row in history]
    last = rounded[-1]
    write_csv_atomic(layout.train_history, HISTORY_COLUMNS,
                     ([row[k] for k in HISTORY_COLUMNS] for row in rounded))
    write_csv_atomic(layout.train_steps, STEP_COLUMNS, (
        (int(step), *(round(value, 6) for value in rest)) for step, *rest in steps))
    write_json_atomic(layout.train_metrics, {
        "epoch": last["epoch"], "epochs": epochs,
        "train_loss": last["train_loss"], "train_acc": last["train_acc"]})


if __name__ == "__main__":
    run_stage(main, __doc__)

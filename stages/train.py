"""Stage 3, train: fit the network chosen in params on the prepared arrays.

Batches are slices of a seeded permutation of the memory-mapped training arrays: no
DataLoader, no per-item transform. After every epoch the full training state is saved to
``data/checkpoints/last.pt`` (a ``persist: true`` out), so a killed run resumes from its
last complete epoch and ends bit-identical to an uninterrupted one.

Outputs: ``data/model/model.pt``, ``metrics/train.json`` and the per-epoch history
``metrics/train_history.csv``; the metrics are rewritten after each epoch, so a running
experiment shows its progress.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from stages.artifacts import write_csv_atomic, write_json_atomic
from stages.errors import StageError, run_stage
from stages.model import build_model, save_model, score
from stages.params import Params, TrainParams, load_params
from stages.paths import CHECKPOINT_FILE, MODEL_FILE, PREPARED_DIR, TRAIN_HISTORY, TRAIN_METRICS
from stages.prepared import split_digest
from stages.runtime import configure_torch, load_split, select_device
from stages.torch_io import torch_load_verified, torch_save_verified

SCORE_BATCH_SIZE = 1000  # larger batches score no faster and cost more memory
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")


@dataclass
class Paths:
    prepared: Path = PREPARED_DIR
    model: Path = MODEL_FILE
    checkpoint: Path = CHECKPOINT_FILE
    metrics: Path = TRAIN_METRICS
    history: Path = TRAIN_HISTORY


def main() -> None:
    train(load_params(), Paths())


def train(params: Params, paths: Paths) -> list[dict[str, float]]:
    """Train (or resume) and write every output; returns the per-epoch history."""
    cfg = params.train
    device = select_device(cfg.device)
    configure_torch(cfg.threads, device)
    train_set = load_split(paths.prepared, "train", device)
    test_set = load_split(paths.prepared, "test", device)
    fingerprint = run_fingerprint(params, split_digest(paths.prepared, "train"),
                                  split_digest(paths.prepared, "test"))

    torch.manual_seed(cfg.seed)  # weight init and dropout draw from the global generator
    model = build_model(params.model.net, device)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = -(-len(train_set["labels"]) // cfg.batch_size)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []

    checkpoint = load_checkpoint(paths.checkpoint, fingerprint)
    if checkpoint is not None:
        history = restore(checkpoint, model, optimizer, scheduler, shuffle, device)
        print(f"train: resuming from {paths.checkpoint} after epoch {len(history)}")

    for epoch in range(len(history) + 1, cfg.epochs + 1):
        started = time.perf_counter()
        train_loss, train_acc = train_one_epoch(model, optimizer, scheduler, train_set, cfg,
                                                shuffle, device, f"epoch {epoch}/{cfg.epochs}")
        _, test_loss, test_acc = score(model, test_set["images"], test_set["labels"],
                                       SCORE_BATCH_SIZE)
        history.append(history_row(epoch, train_loss, train_acc, test_loss, test_acc))
        torch_save_verified(paths.checkpoint, {
            "fingerprint": fingerprint, "history": history,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng_global": torch.get_rng_state(), "rng_shuffle": shuffle.get_state(),
            # dropout on a GPU draws from the device's own generator
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        })
        write_metrics(paths, history)
        print(f"train: epoch {epoch}/{cfg.epochs} loss {train_loss:.4f} "
              f"train acc {train_acc:.4f} test acc {test_acc:.4f} "
              f"({time.perf_counter() - started:.1f} s)", flush=True)

    save_model(paths.model, params.model.net, model, params.preprocess.mean,
               params.preprocess.std)
    write_metrics(paths, history)
    return history


def restore(checkpoint: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler | None, shuffle: torch.Generator,
            device: torch.device) -> list[dict[str, float]]:
    """Put the training state back as it was after the checkpoint's epoch; return the history."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["rng_global"])
    shuffle.set_state(checkpoint["rng_shuffle"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(checkpoint["rng_cuda"], device)
    # Rebuilt with our own key objects: pickle then writes the next checkpoint byte for byte
    # as an uninterrupted run would.
    return [history_row(*(row[k] for k in HISTORY_COLUMNS)) for row in checkpoint["history"]]


def history_row(*values: float) -> dict[str, float]:
    return dict(zip(HISTORY_COLUMNS, values, strict=True))


def make_optimizer(model: nn.Module, cfg: TrainParams) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    # train.momentum is Adam's first-moment decay (beta1): the same role, the same name.
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.momentum, 0.999),
                            weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainParams,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``onecycle`` steps per batch; ``step`` multiplies lr by ``step_gamma`` each epoch."""
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
            pct_start=cfg.warmup_fraction, cycle_momentum=False)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=cfg.step_gamma)
    return None


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
                    data: dict[str, Any], cfg: TrainParams, shuffle: torch.Generator,
                    device: torch.device, label: str) -> tuple[float, float]:
    """One pass over the data in shuffled batches; returns (mean loss, accuracy)."""
    images, labels = data["images"], data["labels"]
    count = len(labels)
    order = torch.randperm(count, generator=shuffle).to(device)
    # Sums stay on the device: reading them every step would stall an accelerator.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    model.train()
    batches = tqdm(range(0, count, cfg.batch_size), desc=label, unit="batch", leave=False,
                   disable=None, file=sys.stdout)
    for step, start in enumerate(batches):
        index = order[start:start + cfg.batch_size]
        inputs, targets = images[index], labels[index]
        loss, log_probs = train_step(model, optimizer, scheduler, inputs, targets, cfg.bf16)
        loss_sum += loss * len(targets)
        correct += (log_probs.argmax(1) == targets).sum()
        if step % 50 == 0 and not batches.disable:
            batches.set_postfix(loss=f"{loss.item():.4f}")
    if isinstance(scheduler, torch.optim.lr_scheduler.StepLR):
        scheduler.step()
    return loss_sum.item() / count, correct.item() / count


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None, inputs: torch.Tensor,
               targets: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on one batch; returns (loss, log-probabilities), left on the device."""
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
        log_probs = model(inputs)
    loss = F.nll_loss(log_probs.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        scheduler.step()
    return loss.detach(), log_probs.detach()


def run_fingerprint(params: Params, *data_digests: str) -> str:
    """Identifies everything a checkpoint's numbers depend on: params, data and code."""
    code = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        code.update(source.read_bytes())
    described = {"train": dataclasses.asdict(params.train), "model": params.model.net,
                 "data": data_digests, "code": code.hexdigest()}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it belongs to this run; otherwise set it aside."""
    if not path.exists():
        return None
    try:
        checkpoint = torch_load_verified(path)
        if not isinstance(checkpoint, dict) or "fingerprint" not in checkpoint:
            raise StageError(f"{path}: not a checkpoint written by this stage")
    except StageError as err:
        reason, suffix = str(err), ".corrupt"
    else:
        if checkpoint["fingerprint"] == fingerprint:
            return checkpoint
        reason, suffix = f"{path}: written under other params, data or code", ".stale"
    aside = set_aside_path(path, suffix)
    aside.parent.mkdir(parents=True, exist_ok=True)
    path.replace(aside)
    print(f"train: not resuming: {reason}; moved it to {aside}, training from scratch",
          file=sys.stderr)
    return None


def set_aside_path(checkpoint: Path, suffix: str) -> Path:
    """Where an unusable checkpoint goes: ``data/checkpoints.set-aside/last.pt<suffix>``.

    Beside the checkpoint directory, not in it, so the DVC output's hash does not depend on
    what was set aside before.
    """
    directory = checkpoint.parent
    return directory.parent / f"{directory.name}.set-aside" / f"{checkpoint.name}{suffix}"


def write_metrics(paths: Paths, history: list[dict[str, float]]) -> None:
    rounded = [{k: (v if k == "epoch" else round(v, 6)) for k, v in row.items()}
               for row in history]
    write_json_atomic(paths.metrics, rounded[-1])
    write_csv_atomic(paths.history, HISTORY_COLUMNS, ([row[k] for k in HISTORY_COLUMNS]
                                                      for row in rounded))


if __name__ == "__main__":
    run_stage(main)

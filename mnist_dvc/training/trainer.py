"""The training loop, in one place: the train stage, the benchmark and every data-parallel
worker drive this ``Trainer``.

Batches are slices of a seeded permutation of the training arrays: no DataLoader, no
per-item transform. All randomness comes from generators seeded by ``train.seed``, and
``state_dict`` captures every one of them, so a run restored from it continues exactly as
the uninterrupted run would have.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mnist_dvc.config.train import TrainParams
from mnist_dvc.data.spec import MNIST
from mnist_dvc.model.nets import build_model
from mnist_dvc.runtime import TensorSplit
from mnist_dvc.training.distributed import SINGLE, Group

# ranks other than 0 draw dropout from their own stream, seeded from train.seed by this
RANK_SEED_STRIDE = 1_000_003
AUGMENT_SEED_OFFSET = 12345  # the shifts' generator: seeded apart from the shuffling order


class EpochStats(NamedTuple):
    loss: float      # mean training loss over the epoch's batches, weighted by their size
    accuracy: float  # share of training images classified right while being trained on


StepHook = Callable[[int], None]  # called after each optimizer step with its 0-based index
# called every ``window`` steps (and after the epoch's last) with the steps done in the epoch
# and the training loss and accuracy over the batches since the previous call
WindowHook = Callable[[int, EpochStats], None]


class Trainer:
    """A network, its optimizer and schedule, and the order the images come in."""

    def __init__(self, cfg: TrainParams, net: str, data: TensorSplit,
                 device: torch.device, group: Group = SINGLE,
                 num_classes: int = MNIST.num_classes) -> None:
        self.cfg, self.data, self.device, self.group = cfg, data, device, group
        torch.manual_seed(cfg.seed)  # weight init (the same on every rank) and dropout
        height, width = data.images.shape[-2:]  # the net is built for the data's images
        self.model = build_model(net, device, (height, width), num_classes)
        self.optimizer = make_optimizer(self.model, cfg)
        self.steps_per_epoch = -(-len(data.labels) // cfg.batch_size)
        self.scheduler = make_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)  # the same order on every rank
        # the same shifts on every rank too: drawn for the global batch, then shared out
        self.augment = torch.Generator().manual_seed(cfg.seed + AUGMENT_SEED_OFFSET)
        if group.rank:
            torch.manual_seed(cfg.seed + RANK_SEED_STRIDE * group.rank)
        self.network = group.wrap(self.model)

    def run_epoch(self, label: str = "", on_step: StepHook | None = None,
                  on_window: WindowHook | None = None, window: int = 25) -> EpochStats:
        """One pass over the training set in shuffled global batches. ``on_window`` sees the
        training curve at a finer grain than epochs, from the batches trained on: it costs no
        extra forward pass and draws no random number, so the run's results stay the same."""
        images, labels = self.data
        count = len(labels)
        order = torch.randperm(count, generator=self.shuffle).to(self.device)
        # Sums stay on the device: reading them every step would stall an accelerator.
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        window_stats = WindowStats(self.device)
        self.network.train()
        batches = tqdm(range(0, count, self.cfg.batch_size), desc=label, unit="batch",
                       leave=False, file=sys.stdout,
                       disable=None if self.group.is_main else True)
        for step, start in enumerate(batches):
            batch = order[start:start + self.cfg.batch_size]
            offsets = self.draw_shifts(len(batch))
            mine = self.group.share(batch)
            inputs = images[mine]
            if offsets is not None:
                inputs = shifted(inputs, self.group.share(offsets.T).T.to(self.device))
            loss, log_probs = self.step(inputs, labels[mine], len(batch))
            loss_sum += loss * (len(batch) / self.group.world)
            right = (log_probs.argmax(1) == labels[mine]).sum()
            correct += right
            if on_window is not None:
                window_stats.add(loss * (len(batch) / self.group.world), right, len(batch))
                if (step + 1) % window == 0 or start + self.cfg.batch_size >= count:
                    on_window(step + 1, window_stats.take(self.group))
            if on_step is not None:
                on_step(step)
            if step % 50 == 0 and not batches.disable:
                batches.set_postfix(loss=f"{loss.item():.4f}")
        if isinstance(self.scheduler, torch.optim.lr_scheduler.StepLR):
            self.scheduler.step()
        self.group.sum_(loss_sum)
        self.group.sum_(correct)
        return EpochStats(loss_sum.item() / count, correct.item() / count)

    def step(self, inputs: torch.Tensor, targets: torch.Tensor,
             global_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on this rank's share of a global batch.

        Returns (NLL loss, log-probabilities), left on the device. The loss is this share's
        mean weighted so that DDP's average over ranks is the mean over the global batch, even
        when the shares differ in size; in a single process the weight is exactly 1.
        """
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            log_probs = self.network(inputs).float()
        loss, nll = smoothed_nll(log_probs, targets, self.cfg.label_smoothing)
        weight = len(targets) * self.group.world / global_batch
        if weight != 1:
            loss, nll = loss * weight, nll * weight
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR):
            self.scheduler.step()
        return nll.detach(), log_probs.detach()

    def draw_shifts(self, count: int) -> torch.Tensor | None:
        """(2, count) row and column offsets in [-shift, shift] for a global batch, or None."""
        if not self.cfg.shift:
            return None
        return torch.randint(-self.cfg.shift, self.cfg.shift + 1, (2, count),
                             generator=self.augment)

    def state_dict(self) -> dict[str, Any]:
        """Everything the next epoch depends on; call it on every rank (it gathers each
        rank's generators)."""
        cuda = self.device.type == "cuda"
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng_shuffle": self.shuffle.get_state(),
            "rng_augment": self.augment.get_state(),
            "rng_global": self.group.gather(torch.get_rng_state()),
            # dropout on a GPU draws from the device's own generator
            "rng_cuda": self.group.gather(torch.cuda.get_rng_state(self.device))
            if cuda else None,
            "rng_mps": torch.mps.get_rng_state() if self.device.type == "mps" else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back a ``state_dict`` written by a run of the same world size."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.shuffle.set_state(state["rng_shuffle"])
        self.augment.set_state(state["rng_augment"])
        torch.set_rng_state(state["rng_global"][self.group.rank])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"][self.group.rank], self.device)
        elif self.device.type == "mps":
            torch.mps.set_rng_state(state["rng_mps"])


class WindowStats:
    """Sums over the batches since the last ``take``, kept on the device like the epoch's."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss, self.correct, self.images = self._zeros()

    def _zeros(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        return (torch.zeros((), device=self.device),
                torch.zeros((), dtype=torch.long, device=self.device), 0)

    def add(self, loss: torch.Tensor, correct: torch.Tensor, images: int) -> None:
        self.loss += loss
        self.correct += correct
        self.images += images

    def take(self, group: Group) -> EpochStats:
        """The window's mean loss and accuracy over every rank's images; then start anew."""
        group.sum_(self.loss)
        group.sum_(self.correct)
        stats = EpochStats(self.loss.item() / self.images, self.correct.item() / self.images)
        self.loss, self.correct, self.images = self._zeros()
        return stats


def smoothed_nll(log_probs: torch.Tensor, targets: torch.Tensor,
                 smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to minimize, the plain NLL): with label smoothing the target puts
    ``1 - smoothing`` on the label and ``smoothing`` spread evenly over all ten digits, as
    ``F.cross_entropy(logits, targets, label_smoothing=smoothing)`` does."""
    nll = F.nll_loss(log_probs, targets)
    if not smoothing:
        return nll, nll
    return (1 - smoothing) * nll - smoothing * log_probs.mean(1).mean(), nll


def shifted(images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Each image (N, C, H, W) moved by its own (row, column) offset, circularly.

    What leaves one side comes back on the other: MNIST's 2-pixel frame is blank (0.3 % of
    the ink), so a shift of a pixel or two brings in background. Measured on the compact net
    with label smoothing: +0.05 % over seeds 0-4 at 3 % more time per step; 2 pixels, or one
    shift for a whole batch, did no better than none.
    """
    count, channels, height, width = images.shape
    rows = (torch.arange(height, device=images.device) + offsets[0][:, None]) % height
    cols = (torch.arange(width, device=images.device) + offsets[1][:, None]) % width
    index = (rows[:, :, None] * width + cols[:, None, :]).view(count, 1, height * width)
    picked = images.reshape(count, channels, height * width).gather(
        2, index.expand(count, channels, height * width)).view(count, channels, height, width)
    return picked.contiguous(memory_format=torch.channels_last)


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

"""The train stage's params: ``train.*`` and ``model.*``.

``model.net`` names a class of the network registry (``mnist_dvc.model.nets.NETS``); the
train stage checks the name against it when it builds the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mnist_dvc.config.schema import DeviceName, bounded

OptimizerName = Literal["adam", "sgd"]
ScheduleName = Literal["onecycle", "constant", "step"]


@dataclass(frozen=True)
class ModelParams:
    net: str = "compact"


@dataclass(frozen=True)
class TrainParams:
    seed: int = bounded(1, ge=0)
    epochs: int = bounded(2, ge=1)
    batch_size: int = bounded(256, ge=1)
    optimizer: OptimizerName = "adam"
    lr: float = bounded(0.03, gt=0)
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(0.0, ge=0)
    label_smoothing: float = bounded(0.05, ge=0, lt=1)
    shift: int = bounded(1, ge=0, le=3)
    schedule: ScheduleName = "onecycle"
    warmup_fraction: float = bounded(0.25, gt=0, lt=1)
    step_gamma: float = bounded(0.7, gt=0, le=1)
    threads: int = bounded(2, ge=1)
    nproc: int = bounded(1, ge=1)
    device: DeviceName = "auto"
    bf16: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """The params.yaml sections the train stage reads."""

    train: TrainParams = field(default_factory=TrainParams)
    model: ModelParams = field(default_factory=ModelParams)

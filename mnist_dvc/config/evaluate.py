"""The evaluate stage's params: ``evaluate.*``."""

from __future__ import annotations

from dataclasses import dataclass, field

from mnist_dvc.config.schema import DeviceName, bounded


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = bounded(1000, ge=1)
    threads: int = bounded(2, ge=1)
    device: DeviceName = "auto"


@dataclass(frozen=True)
class EvaluateConfig:
    """The params.yaml sections the evaluate stage reads."""

    evaluate: EvaluateParams = field(default_factory=EvaluateParams)

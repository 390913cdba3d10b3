"""The preprocess stage's params: ``preprocess.*``."""

from __future__ import annotations

from dataclasses import dataclass, field

from mnist_dvc.config.schema import bounded


@dataclass(frozen=True)
class PreprocessParams:
    mean: float = bounded(0.1307, ge=0, le=1)
    std: float = bounded(0.3081, gt=0, le=1)


@dataclass(frozen=True)
class PreprocessConfig:
    """The params.yaml sections the preprocess stage reads."""

    preprocess: PreprocessParams = field(default_factory=PreprocessParams)

"""The preprocess stage's params: ``preprocess.*``.

``mean`` and ``std`` are in units of a pixel's full scale (``pixel / 255``). Left empty (null),
each is the dataset's own: the published value for a dataset that has one (MNIST's 0.1307 and
0.3081, in mnist_dvc/data/spec.py), else measured on the training split's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mnist_dvc.config.schema import bounded


@dataclass(frozen=True)
class PreprocessParams:
    mean: float | None = bounded(None, ge=0, le=1)
    std: float | None = bounded(None, gt=0, le=1)


@dataclass(frozen=True)
class PreprocessConfig:
    """The params.yaml sections the preprocess stage reads."""

    preprocess: PreprocessParams = field(default_factory=PreprocessParams)

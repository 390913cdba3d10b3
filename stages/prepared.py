"""The format of ``data/prepared/``: one file per split, written by preprocess.

Each ``<split>.pt`` holds ``images`` (float32, N x 1 x 28 x 28, normalized), ``labels``
(int64, N) and ``digest``, a hash of both that identifies the data in train checkpoints.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from stages.artifacts import torch_load_safe, torch_save_atomic
from stages.errors import StageError


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W), as ``ToTensor()`` + ``Normalize()``."""
    return images.unsqueeze(1).float().div_(255).sub_(mean).div_(std)


def write_split(prepared_dir: Path, split: str, images: torch.Tensor,
                labels: torch.Tensor) -> Path:
    digest = hashlib.sha256()
    for tensor in (images, labels):
        digest.update(tensor.contiguous().numpy().data)
    path = prepared_dir / f"{split}.pt"
    torch_save_atomic(path, {"images": images, "labels": labels, "digest": digest.hexdigest()})
    return path


def load_split(prepared_dir: Path, split: str,
               device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a split memory-mapped, check its layout, and move its tensors to ``device``."""
    path = prepared_dir / f"{split}.pt"
    data = torch_load_safe(path, mmap=True)
    try:
        if not isinstance(data, dict):  # e.g. a bare tensor, whose ["images"] is an IndexError
            raise TypeError(type(data).__name__)
        images, labels, digest = data["images"], data["labels"], data["digest"]
        valid = (images.dtype == torch.float32 and images.dim() == 4
                 and tuple(images.shape[1:]) == (1, 28, 28) and labels.dtype == torch.int64
                 and labels.shape == (len(images),) and isinstance(digest, str))
    except (TypeError, KeyError, AttributeError):
        valid = False
    if not valid:
        raise StageError(f"{path}: not a prepared split (rerun preprocess: dvc repro)")
    return {"images": images.to(device), "labels": labels.to(device), "digest": digest}

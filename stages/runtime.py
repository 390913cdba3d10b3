"""Where and how torch computes: device choice, thread count and determinism."""

from __future__ import annotations

import os

import torch

from stages.errors import StageError


def select_device(requested: str) -> torch.device:
    """``auto`` takes cuda, then mps, then cpu; a named device must be available."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return torch.device(next(name for name, ok in available.items() if ok))
    if not available[requested]:
        raise StageError(f"train.device is '{requested}' but no {requested} device is available")
    return torch.device(requested)


def configure_torch(threads: int, device: torch.device) -> None:
    """Fix the thread count and demand deterministic kernels.

    Results are bit-identical only for the same thread count: the reduction order of the
    CPU kernels depends on it.
    """
    torch.set_num_threads(threads)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    _use_deterministic_kernels()


def _use_deterministic_kernels() -> None:
    """``torch.use_deterministic_algorithms(True)`` for eager code, minus its start-up cost.

    The public call also imports torch._inductor (2.5 s on a laptop CPU) only to configure
    ``torch.compile``, which this project never uses; the eager switch is this one flag.
    """
    set_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_flag is None:  # a torch without the private hook: pay for the public call
        torch.use_deterministic_algorithms(True)
    else:
        set_flag(True)

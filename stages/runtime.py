"""Where and how torch computes: device choice, threads, determinism, the data on the device."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import torch
import torch.utils.deterministic

from stages.errors import StageError
from stages.prepared import read_split

# mallopt() options, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


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
    """Fix the thread count, demand deterministic kernels and tune malloc for training.

    Results are bit-identical only for the same thread count: the reduction order of the
    CPU kernels depends on it.
    """
    torch.set_num_threads(threads)
    _keep_freed_memory()
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    _use_deterministic_kernels()


def _keep_freed_memory() -> None:
    """Let glibc's malloc reuse freed activation buffers instead of giving them back.

    By default it maps each buffer of a few MB afresh and unmaps it when freed, so every
    training step faults its activations into memory again (about 2,000 page faults a step
    here, 100 with this); reusing them makes a CPU epoch 5-10 % faster and costs no memory
    that the next step would not take anyway.
    """
    if not sys.platform.startswith("linux"):
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # absent from some C libraries
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, 32 << 20)  # the largest value 64-bit glibc accepts
        mallopt(M_TRIM_THRESHOLD, 1 << 30)


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
    # The mode also fills every new tensor with NaN, a debugging aid for kernels that read
    # memory they never wrote; none of ours do, and the fills took 13 % of a profiled CPU step.
    torch.utils.deterministic.fill_uninitialized_memory = False


def load_split(prepared_dir: Path, split: str,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A prepared split as ``images`` and ``labels`` tensors on ``device``.

    On the CPU the tensors share the memory-mapped arrays: nothing is copied until a batch
    is indexed out of them.
    """
    images, labels = read_split(prepared_dir, split)
    return {"images": torch.from_numpy(images).to(device),
            "labels": torch.from_numpy(labels).to(device)}

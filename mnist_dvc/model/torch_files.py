"""Saving torch files atomically and verifiably, and loading untrusted ones safely.

Model files and checkpoints are pickles underneath. Each is written behind a sha256 header
line that is checked before a single byte is parsed (torch's own format does not notice a
flipped bit in tensor data), and then loaded with ``weights_only=True``, which refuses any
pickled code.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from mnist_dvc.errors import StageError, corrupt_file, os_error
from mnist_dvc.files import write_bytes_atomic

VERIFIED_HEADER = b"mnist-dvc sha256 "


def torch_save_verified(destination: Path | str, obj: Any) -> None:
    """Save ``obj`` atomically behind a sha256 header line."""
    buffer = io.BytesIO()  # serialized in memory: a full disk fails in write_bytes_atomic
    torch.save(obj, buffer)
    data = buffer.getvalue()
    header = VERIFIED_HEADER + hashlib.sha256(data).hexdigest().encode() + b"\n"
    write_bytes_atomic(destination, header + data)


def torch_load_verified(path: Path | str) -> Any:
    """Load a file written by ``torch_save_verified``: check its digest, then load safely."""
    path = Path(path)
    try:
        header, _, data = path.read_bytes().partition(b"\n")
    except FileNotFoundError:
        raise StageError(f"{path}: file not found (run the stage that makes it: dvc repro)") \
            from None
    except IsADirectoryError:
        raise StageError(f"{path}: is a directory, not a file") from None
    except OSError as err:
        raise os_error("read", path, err) from None
    if not header.startswith(VERIFIED_HEADER):
        raise StageError(f"{path}: not a file written by this project (no checksum header)")
    if header != VERIFIED_HEADER + hashlib.sha256(data).hexdigest().encode():
        raise StageError(f"{path}: checksum mismatch (damaged, truncated or tampered with)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise corrupt_file(path, err) from None

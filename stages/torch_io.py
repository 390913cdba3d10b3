"""Saving torch files atomically, and loading untrusted ones safely.

Model files and checkpoints are pickles underneath: they are loaded with
``weights_only=True``, which refuses any pickled code, and checkpoints carry a sha256 header
that is checked before a single byte is parsed.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from stages.artifacts import atomic_path, write_bytes_atomic
from stages.errors import StageError, corrupt_file

VERIFIED_HEADER = b"mnist-dvc sha256 "


def torch_save_atomic(destination: Path | str, obj: Any) -> None:
    with atomic_path(destination) as tmp, open(tmp, "wb") as f:
        # A file object, not a path: torch names the archive's records after the file, and
        # the random temporary name would make identical contents hash differently.
        torch.save(obj, f)


def torch_save_verified(destination: Path | str, obj: Any) -> None:
    """Save ``obj`` behind a sha256 header line, so a damaged file is caught before parsing.

    torch's own format does not notice a flipped bit in tensor data.
    """
    buffer = io.BytesIO()
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
        raise StageError(f"{path}: file not found") from None
    if header != VERIFIED_HEADER + hashlib.sha256(data).hexdigest().encode():
        raise StageError(f"{path}: checksum mismatch (truncated, tampered or not ours)")
    return _load_weights_only(io.BytesIO(data), path)


def torch_load_safe(path: Path | str) -> Any:
    """Load a tensor file with ``weights_only=True``; a missing or damaged file is a StageError."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: file not found (run the stage that produces it: dvc repro)")
    return _load_weights_only(path, path)


def _load_weights_only(source: Path | io.BytesIO, path: Path) -> Any:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise corrupt_file(path, err) from None

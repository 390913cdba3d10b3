"""Writing outputs atomically, hashing files and loading untrusted tensors safely.

Every artifact is written to a temporary file beside its destination and renamed over it,
so a stage killed at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from stages.errors import StageError

VERIFIED_HEADER = b"mnist-dvc sha256 "


@contextlib.contextmanager
def atomic_path(destination: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it over ``destination``."""
    destination = Path(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp",
                                   dir=destination.parent)
    except OSError as err:
        raise StageError(f"cannot write {destination}: {err.strerror}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp made it private (0600)
        os.replace(tmp_path, destination)
    finally:
        tmp_path.unlink(missing_ok=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(destination: Path | str, data: bytes) -> None:
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(destination: Path | str, payload: Any) -> None:
    write_bytes_atomic(destination, (json.dumps(payload, indent=2) + "\n").encode())


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
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def torch_load_safe(path: Path | str, *, mmap: bool = False) -> Any:
    """Load a tensor file with ``weights_only=True``; a missing or damaged file is a StageError."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: file not found (run the stage that produces it: dvc repro)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StageError(f"{path}: unreadable or corrupt ({reason[:160]})") from None


def file_digest(path: Path | str, algorithm: str = "md5") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

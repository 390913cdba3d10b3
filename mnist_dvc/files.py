"""Writing outputs atomically and hashing files (no torch here: download and preprocess
run without importing it).

Every artifact is written to a temporary file beside its destination and renamed over it,
so a stage killed at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mnist_dvc.errors import os_error


@contextlib.contextmanager
def atomic_path(destination: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it over ``destination``.

    Any OSError while writing (a full disk, a read-only directory) becomes one StageError
    naming ``destination``, which is left as it was.
    """
    destination = Path(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp",
                                   dir=destination.parent)
    except OSError as err:
        raise os_error("write", destination, err) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp made it private (0600)
        os.replace(tmp_path, destination)
    except OSError as err:
        raise os_error("write", destination, err) from None
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


def write_csv_atomic(destination: Path | str, columns: Sequence[str],
                     rows: Iterable[Sequence[Any]]) -> None:
    """A CSV file with a header row, as DVC's plots read it."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    write_bytes_atomic(destination, text.getvalue().encode())


def file_digest(path: Path | str, algorithm: str = "md5") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

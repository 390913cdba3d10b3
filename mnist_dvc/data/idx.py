"""The IDX file format of MNIST: strict parsing and writing.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order. Everything
is checked against the file's size before a byte of data is read, so a corrupt header
cannot make us allocate more than the file holds.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from mnist_dvc.errors import StageError

UINT8 = 0x08
MAX_DIMS = 4


class IdxError(StageError):
    """A file that is not a valid IDX file of the expected shape."""


def read_idx(path: Path | str, expected_dims: int,
             item_shape: tuple[int, ...] | None = ()) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``expected_dims`` dimensions.

    ``item_shape`` fixes every dimension after the first (e.g. ``(28, 28)`` for images);
    None accepts any.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = f.read(4 + 4 * MAX_DIMS)
            size = path.stat().st_size
            dims = _parse_header(path, header, size, expected_dims)
            _check_item_shape(path, dims, item_shape)
            f.seek(4 + 4 * len(dims))
            data = np.fromfile(f, dtype=np.uint8)
    except FileNotFoundError:
        raise IdxError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise IdxError(f"{path}: is a directory, expected an IDX file") from None
    return data.reshape(dims)


def decode_idx(data: bytes, origin: object, expected_dims: int,
               item_shape: tuple[int, ...] | None = ()) -> np.ndarray:
    """The array in IDX bytes already in memory (e.g. a decompressed ``.gz``); errors name
    ``origin``."""
    dims = _parse_header(origin, data[:4 + 4 * MAX_DIMS], len(data), expected_dims)
    _check_item_shape(origin, dims, item_shape)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def _check_item_shape(path: object, dims: tuple[int, ...],
                      item_shape: tuple[int, ...] | None) -> None:
    if item_shape is not None and dims[1:] != item_shape:
        raise IdxError(f"{path}: item shape {dims[1:]} is not the expected {item_shape}")


def _parse_header(path: object, header: bytes, size: int, expected_dims: int) -> tuple[int, ...]:
    if len(header) < 4:
        raise IdxError(f"{path}: truncated: {size} bytes is too short for an IDX header")
    zero, type_code, ndim = struct.unpack(">HBB", header[:4])
    if zero != 0 or type_code != UINT8 or ndim != expected_dims:
        raise IdxError(
            f"{path}: bad magic number 0x{header[:4].hex()}: expected "
            f"0x000008{expected_dims:02x} (unsigned bytes, {expected_dims} dimensions)"
        )
    header_size = 4 + 4 * ndim
    if len(header) < header_size:
        raise IdxError(f"{path}: truncated inside the header ({size} bytes)")
    dims = struct.unpack(f">{ndim}I", header[4:header_size])
    expected_size = header_size + math.prod(dims)  # exact: an int64 product can wrap
    if size != expected_size:
        state = "truncated" if size < expected_size else "has trailing bytes"
        raise IdxError(
            f"{path}: {state}: header says {'x'.join(map(str, dims))} = {expected_size} bytes, "
            f"file has {size}"
        )
    return dims


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array."""
    if array.dtype != np.uint8:
        raise ValueError(f"IDX writer supports uint8 only, got {array.dtype}")
    magic = struct.pack(">HBB", 0, UINT8, array.ndim)
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return magic + dims + np.ascontiguousarray(array).tobytes()

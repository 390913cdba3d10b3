"""mnist_dvc.data.idx: the IDX format, written and read strictly."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest

from mnist_dvc.data.idx import IdxError, encode_idx, read_idx
from mnist_dvc.errors import StageError
from tests.conftest import synthetic_digits

# The magic numbers the MNIST page documents: 0x00000801 for labels, 0x00000803 for images.
LABELS_MAGIC = 2049
IMAGES_MAGIC = 2051


def idx_header(*dims, ndim=None, type_code=0x08):
    """An IDX header written by hand, independently of encode_idx."""
    ndim = len(dims) if ndim is None else ndim
    return struct.pack(">HBB", 0, type_code, ndim) + struct.pack(f">{len(dims)}I", *dims)


def refused(path, expected_dims, item_shape=(), *, match):
    """Read ``path`` expecting an IdxError that names the file and contains ``match``."""
    with pytest.raises(IdxError) as info:
        read_idx(path, expected_dims, item_shape)
    message = str(info.value)
    assert isinstance(info.value, StageError)
    assert str(path) in message
    assert match in message
    assert "\n" not in message
    return message


# --- round trips ---------------------------------------------------------------------------

def test_labels_round_trip(tmp_path):
    _, labels = synthetic_digits(300, seed=3)
    data = encode_idx(labels)
    assert data[:8] == struct.pack(">II", LABELS_MAGIC, 300)
    assert len(data) == 8 + 300
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(data)

    back = read_idx(path, 1)

    assert back.dtype == np.uint8
    assert back.shape == (300,)
    np.testing.assert_array_equal(back, labels)


def test_images_round_trip(tmp_path):
    images, _ = synthetic_digits(50, seed=4)
    data = encode_idx(images)
    assert data[:16] == struct.pack(">IIII", IMAGES_MAGIC, 50, 28, 28)
    assert len(data) == 16 + 50 * 28 * 28
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(data)

    back = read_idx(str(path), 3, (28, 28))  # a str path is accepted too

    assert back.dtype == np.uint8
    assert back.shape == (50, 28, 28)
    np.testing.assert_array_equal(back, images)


def test_round_trip_of_a_non_contiguous_view(tmp_path):
    images, _ = synthetic_digits(8, seed=5)
    view = images[::2, ::2, 1::2]  # strided: encode_idx must write it in C order
    path = tmp_path / "view"
    path.write_bytes(encode_idx(view))

    np.testing.assert_array_equal(read_idx(path, 3, (14, 14)), view)


def test_round_trip_of_zero_items(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(encode_idx(np.zeros((0, 28, 28), dtype=np.uint8)))

    assert read_idx(path, 3, (28, 28)).shape == (0, 28, 28)


def test_reads_a_file_written_by_hand(tmp_path):
    pixels = bytes(range(12))
    path = tmp_path / "hand"
    path.write_bytes(idx_header(2, 2, 3) + pixels)

    back = read_idx(path, 3, (2, 3))

    np.testing.assert_array_equal(back, np.arange(12, dtype=np.uint8).reshape(2, 2, 3))


# --- refusals --------------------------------------------------------------------------------

def test_truncated_data_is_refused(tmp_path):
    images, _ = synthetic_digits(4, seed=6)
    path = tmp_path / "cut"
    path.write_bytes(encode_idx(images)[:-1])

    refused(path, 3, (28, 28), match="truncated")


def test_header_cut_inside_the_dimensions_is_refused(tmp_path):
    path = tmp_path / "cut-header"
    path.write_bytes(idx_header(10, 28, ndim=3))  # says three dims, holds two

    refused(path, 3, (28, 28), match="truncated")


def test_trailing_bytes_are_refused(tmp_path):
    _, labels = synthetic_digits(10, seed=7)
    path = tmp_path / "long"
    path.write_bytes(encode_idx(labels) + b"\x00")

    refused(path, 1, match="trailing bytes")


@pytest.mark.parametrize("magic", [
    b"\x00\x00\x0d\x01",  # float32 type code
    b"\x00\x00\x09\x01",  # signed bytes
    b"\x01\x00\x08\x01",  # the two leading bytes are not zero
    b"PK\x03\x04",  # a zip file
])
def test_a_wrong_magic_number_is_refused(tmp_path, magic):
    path = tmp_path / "magic"
    path.write_bytes(magic + struct.pack(">I", 3) + b"\x01\x02\x03")

    message = refused(path, 1, match="bad magic number")
    assert magic.hex() in message


def test_the_wrong_number_of_dimensions_is_refused(tmp_path):
    images, _ = synthetic_digits(3, seed=8)
    path = tmp_path / "images"
    path.write_bytes(encode_idx(images))

    refused(path, 1, match="bad magic number")  # an image file read as labels
    refused(path, 2, (28,), match="2 dimensions")


def test_an_enormous_header_is_refused_before_any_data_is_read(tmp_path, monkeypatch):
    path = tmp_path / "huge"
    path.write_bytes(idx_header(4_000_000_000, 28, 28) + bytes(100))

    def no_data_read(*args, **kwargs):
        raise AssertionError("read_idx read the data of a file whose header is wrong")

    monkeypatch.setattr(np, "fromfile", no_data_read)
    tracemalloc.start()
    try:
        message = refused(path, 3, (28, 28), match="truncated")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing near the 3 TB the header claims
    assert "4000000000x28x28" in message


def test_a_header_whose_size_overflows_64_bits_is_refused(tmp_path):
    # 2**22 * 2**21 * 2**21 == 2**64: a wrapping int64 product would say "0 bytes of data".
    path = tmp_path / "wrap"
    path.write_bytes(idx_header(2**22, 2**21, 2**21))

    refused(path, 3, (2**21, 2**21), match="truncated")


def test_a_wrong_item_shape_is_refused(tmp_path):
    images = np.zeros((5, 32, 32), dtype=np.uint8)
    path = tmp_path / "cifar-sized"
    path.write_bytes(encode_idx(images))

    message = refused(path, 3, (28, 28), match="item shape")
    assert "(32, 32)" in message
    assert "(28, 28)" in message


def test_a_missing_file_is_refused(tmp_path):
    refused(tmp_path / "absent", 1, match="file not found")


def test_a_directory_is_refused(tmp_path):
    refused(tmp_path, 1, match="is a directory")


@pytest.mark.parametrize("content", [b"", b"\x00", b"\x00\x00\x08"])
def test_a_file_shorter_than_four_bytes_is_refused(tmp_path, content):
    path = tmp_path / "stub"
    path.write_bytes(content)

    refused(path, 1, match="truncated")


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint16, np.float32, np.bool_])
def test_encode_idx_refuses_anything_but_uint8(dtype):
    with pytest.raises(ValueError, match="uint8"):
        encode_idx(np.zeros((2, 3), dtype=dtype))

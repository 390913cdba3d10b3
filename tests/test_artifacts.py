"""Atomic writes (mnist_dvc.files), verified checkpoints and safe loading
(mnist_dvc.model.torch_files)."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys

import pytest
import torch

from mnist_dvc.errors import StageError
from mnist_dvc.files import atomic_path, write_bytes_atomic
from mnist_dvc.model.torch_files import VERIFIED_HEADER, torch_load_verified, torch_save_verified
from tests.conftest import REPO_ROOT


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_written_files_get_normal_permissions(tmp_path):
    write_bytes_atomic(tmp_path / "atomic", b"x")
    (tmp_path / "plain").write_bytes(b"x")
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_an_output_directory_that_cannot_be_created_is_a_one_line_error(tmp_path):
    (tmp_path / "data").write_text("a file where a directory should be")
    with pytest.raises(StageError, match=r"cannot write .*data/model/model\.pt"):
        write_bytes_atomic(tmp_path / "data" / "model" / "model.pt", b"x")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_directory_is_a_one_line_error(tmp_path):
    out = tmp_path / "metrics"
    out.mkdir()
    (out / "eval.json").write_text("{}")
    out.chmod(0o555)
    try:
        with pytest.raises(StageError, match=r"cannot write .*eval\.json"):
            write_bytes_atomic(out / "eval.json", b"new")
        assert (out / "eval.json").read_text() == "{}"
    finally:
        out.chmod(0o755)


def test_verified_file_round_trips_and_catches_a_flipped_bit(tmp_path):
    state = {"weights": torch.arange(1000.0), "epoch": 3}
    torch_save_verified(tmp_path / "ckpt.pt", state)
    loaded = torch_load_verified(tmp_path / "ckpt.pt")
    assert torch.equal(loaded["weights"], state["weights"]) and loaded["epoch"] == 3

    data = bytearray((tmp_path / "ckpt.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "ckpt.pt").write_bytes(bytes(data))
    with pytest.raises(StageError, match="checksum mismatch"):
        torch_load_verified(tmp_path / "ckpt.pt")


def test_safe_loading_refuses_code_and_reports_missing_files(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch_save_verified(tmp_path / "evil.pt", {"x": Payload()})  # a true checksum
    with pytest.raises(StageError, match="unreadable or corrupt"):
        torch_load_verified(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(StageError, match="file not found"):
        torch_load_verified(tmp_path / "missing.pt")


def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "eval.json"
    target.write_text("old")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)  # where a full disk shows up last
    with pytest.raises(StageError) as info:
        write_bytes_atomic(target, b"new")
    assert str(info.value) == f"cannot write {target}: No space left on device"
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["eval.json"]


@pytest.mark.parametrize("body", [b"not a torch file", b"PK\x03\x04" + bytes(60)],
                         ids=["garbage", "broken-zip"])
def test_verified_file_with_a_true_checksum_but_no_torch_inside(tmp_path, body):
    # what a buggy writer (or one that knows the format) could leave: one line, not a traceback
    path = tmp_path / "ckpt.pt"
    path.write_bytes(VERIFIED_HEADER + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
    with pytest.raises(StageError) as info:
        torch_load_verified(path)
    assert str(info.value).startswith(f"{path}: unreadable or corrupt")
    assert "\n" not in str(info.value)


def test_download_and_preprocess_never_import_torch():
    # importing torch costs seconds; these stages need only numpy
    code = ("import sys, stages.download, stages.preprocess; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0

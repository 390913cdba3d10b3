"""``mnist-dvc push``'s failures, each one line naming the remote: the exceptions that DVC's
plugins really raise, and a real DVC repository (no git, no server) for the local cases.
The same failures against real S3 and SSH servers: tests/test_remotes.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mnist_dvc.cli import main
from mnist_dvc.commands.push import Remote, failure, resolve
from mnist_dvc.errors import StageError

S3 = Remote("storage", "s3://team-bucket/mnist-dvc")


def raised_from(cause: BaseException, outer: BaseException) -> BaseException:
    """``outer`` as DVC raises it: ``raise outer from cause``."""
    try:
        try:
            raise cause
        except BaseException as inner:
            raise outer from inner
    except BaseException as err:
        return err


@pytest.mark.parametrize("scheme", ["s3", "ssh", "gs", "azure"])
def test_a_missing_plugin_names_the_extra_that_installs_it(scheme):
    from dvc_objects.fs import registry

    remote = Remote("storage", f"{scheme}://place/path")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, f"dvc_{scheme}", None)  # as if not installed
        with pytest.raises(ImportError) as raised:
            registry[scheme]
    message = str(failure(remote, raised.value))
    assert message == (f"remote 'storage' ({scheme}://place/path) needs DVC's {scheme} plugin "
                       f"(dvc-{scheme}), which is not installed: pip install -e '.[{scheme}]'")


def test_a_plugin_this_project_has_no_extra_for_is_named_too():
    from dvc_objects.fs.errors import RemoteMissingDepsError

    err = RemoteMissingDepsError(None, "webdav", "webdav://host/path", ["dvc-webdav"])
    message = str(failure(Remote("dav", "webdav://host/path"), err))
    assert "dvc-webdav" in message and "pip install 'dvc[webdav]'" in message


def test_refused_credentials_are_found_in_the_chain_of_causes():
    from dvc.exceptions import UploadError

    err = raised_from(PermissionError(13, "Forbidden"), UploadError(3))
    message = str(failure(S3, err))
    assert message.startswith("remote 'storage' (s3://team-bucket/mnist-dvc) refused the "
                              "credentials (")
    assert ".dvc/config.local or the environment" in message


def test_a_missing_bucket_is_named():
    err = FileNotFoundError("The specified bucket does not exist")
    assert "the bucket 'team-bucket' does not exist" in str(failure(S3, err))


def test_a_server_that_cannot_be_reached_is_one_line_with_what_to_do():
    from asyncssh.sftp import SFTPNoConnection
    from botocore.exceptions import EndpointConnectionError

    for err in (EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/k"),
                SFTPNoConnection("Connection not open"),
                ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)")):
        message = str(failure(S3, err))
        assert message.startswith("cannot reach remote 'storage' (s3://team-bucket/mnist-dvc):")
        assert "nothing local changed: rerun when it is back" in message
        assert "\n" not in message


def test_anything_else_is_still_one_line_naming_the_remote():
    message = str(failure(S3, ValueError("first line\nsecond line")))
    assert message == ("push to remote 'storage' (s3://team-bucket/mnist-dvc) failed: "
                       "ValueError: first line")


def test_the_remote_is_the_named_one_or_the_default_one():
    config = {"core": {"remote": "team"},
              "remote": {"team": {"url": "s3://a/b"}, "other": {"url": "/mnt/x"}}}
    assert resolve(config, None) == Remote("team", "s3://a/b")
    assert resolve(config, "other") == Remote("other", "/mnt/x")
    with pytest.raises(StageError, match=r"no DVC remote named 'nope' \(configured: other, team"):
        resolve(config, "nope")
    with pytest.raises(StageError, match="no DVC remote: add one with `dvc remote add -d"):
        resolve({"core": {}, "remote": {}}, None)


@pytest.fixture
def dvc_repo(tmp_path, monkeypatch) -> Path:
    """A DVC repository (no git) tracking one file, as the working directory."""
    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "site-cache"))
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q", "--no-scm"], check=True)
    (root / "data.txt").write_text("shared\n")
    subprocess.run([*dvc, "add", "-q", "data.txt"], check=True)
    return root


def push(capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ended:
        main(["push"])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(ended.value.code or 0), out, err


def test_a_directory_remote_that_cannot_be_written_is_one_line(dvc_repo, capsys):
    (dvc_repo / "a-file").write_text("")
    target = dvc_repo / "a-file" / "remote"  # as an unmounted share: cannot be created
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-q", "-d", "storage",
                    str(target)], check=True)
    code, out, err = push(capsys)
    assert code == 1 and out == ""
    [line] = err.splitlines()
    assert line.startswith(f"error: cannot write to remote 'storage' ({target}): Not a "
                           f"directory ({target}/")
    assert line.endswith("): is it mounted and writable?")
    assert (dvc_repo / "data.txt").read_text() == "shared\n"


def test_a_directory_remote_receives_the_workspace_and_a_rerun_sends_nothing(
    dvc_repo, tmp_path, capsys,
):
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-q", "-d", "storage",
                    str(tmp_path / "remote")], check=True)
    code, out, _ = push(capsys)
    assert code == 0 and out.startswith("share: pushed 1 new object(s) to remote 'storage'")
    stored = [path for path in (tmp_path / "remote").rglob("*") if path.is_file()]
    assert [path.read_text() for path in stored] == ["shared\n"]
    code, out, _ = push(capsys)
    assert code == 0 and out.startswith("share: pushed 0 new object(s)")


def test_no_remote_at_all_is_one_line(dvc_repo, capsys):
    code, _, err = push(capsys)
    assert code == 1
    assert err == ("error: no DVC remote: add one with `dvc remote add -d NAME URL` "
                   "(docs/remotes.md), or name one with --remote\n")

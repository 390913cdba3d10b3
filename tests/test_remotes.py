"""Team storage on real servers: an S3 server (moto) and an SSH/SFTP server (asyncssh), each
started on 127.0.0.1 by the ``storage`` fixture (tests/servers.py) and stopped after the test.

They drive the real dvc CLI and ``python -m mnist_dvc push`` on the e2e session's tiny
pipeline (``pipeline`` in conftest.py), leave it as they found it, and run with a private
HOME, so no user's ~/.ssh, ~/.aws or DVC config is read.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PIPELINE, REPO_ROOT
from tests.dvc_repo import DvcRepo
from tests.servers import S3, SSH, make_keys
from tests.test_e2e import output_hashes, ran, restored

pytestmark = pytest.mark.e2e

BUCKET = "team-storage"
PUSH = ("python", "-m", "mnist_dvc", "push")
LR = "train.lr=0.02"  # an experiment the e2e tests also run: restored, when they ran first


@dataclass
class Storage:
    """A running server as DVC sees it: the URL, the settings and the credentials."""

    kind: str
    server: S3 | SSH
    url: str
    settings: dict[str, str]  # dvc remote modify --local NAME KEY VALUE
    env: dict[str, str]  # the credentials in the environment

    def files(self) -> dict[str, bytes]:
        """Every object under the remote's files/ (what ``dvc push`` uploads), by path."""
        if isinstance(self.server, S3):
            client = self.server.client()
            listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
            return {item["Key"]: client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
                    for item in listed if "/files/" in item["Key"]}
        root = self.server.root
        return {str(path.relative_to(root)): path.read_bytes()
                for path in (root / "storage" / "files").rglob("*") if path.is_file()}

    def names(self) -> set[str]:
        """Every file on the server, temporary ones included."""
        if isinstance(self.server, S3):
            listed = self.server.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])
            return {item["Key"] for item in listed}
        return {str(path) for path in self.server.root.rglob("*") if path.is_file()}

    def write(self, key: str, data: bytes | None) -> None:
        """Overwrite (or, with None, delete) one object on the server, behind DVC's back."""
        if isinstance(self.server, S3):
            client = self.server.client()
            if data is None:
                client.delete_object(Bucket=BUCKET, Key=key)
            else:
                client.put_object(Bucket=BUCKET, Key=key, Body=data)
        elif data is None:
            (self.server.root / key).unlink()
        else:
            (self.server.root / key).write_bytes(data)


def start_s3() -> Storage:
    server = S3.start()
    server.client().create_bucket(Bucket=BUCKET)
    return Storage("s3", server, f"s3://{BUCKET}/mnist-dvc", {"endpointurl": server.endpoint},
                   server.credentials)


def start_ssh(tmp_path: Path) -> Storage:
    (tmp_path / "sftp").mkdir()
    server = SSH.start(tmp_path / "sftp", tmp_path / "keys")
    return Storage("ssh", server, f"ssh://127.0.0.1:{server.port}/storage",
                   {"keyfile": str(server.client_key)}, {})


@pytest.fixture(params=["s3", "ssh"])
def storage(request, tmp_path) -> Iterator[Storage]:
    started = start_s3() if request.param == "s3" else start_ssh(tmp_path)
    yield started
    started.server.stop()


@pytest.fixture
def member(pipeline, storage, tmp_path) -> Iterator[DvcRepo]:
    """The e2e repository as a team member sees it: a private HOME, the server's credentials
    in the environment and the server as the default remote (``.dvc/config.local``)."""
    repo = team_member(pipeline[0].root, storage, tmp_path / "home")
    add_remote(repo, storage)
    yield repo
    repo.dvc("remote", "remove", "--local", "storage")
    repo.git("checkout", "--", ".")
    repo.dvc("checkout", "--force")
    assert repo.git("status", "--porcelain").stdout == ""


def team_member(root: Path, storage: Storage, home: Path) -> DvcRepo:
    home.mkdir(exist_ok=True)
    repo = DvcRepo(root)
    repo.env.update(storage.env, HOME=str(home))
    return repo


def add_remote(repo: DvcRepo, storage: Storage, scope: str = "--local") -> None:
    repo.dvc("remote", "add", scope, "-d", "storage", storage.url)
    repo.dvc("remote", "modify", scope, "storage", "verify", "true")
    for key, value in storage.settings.items():
        repo.dvc("remote", "modify", scope if key != "keyfile" else "--local", "storage",
                 key, value)


def clone_of(repo: DvcRepo, storage: Storage, root: Path) -> DvcRepo:
    """Another machine: a git clone, the same remote and credentials, nothing in its cache."""
    subprocess.run(["git", "clone", "-q", str(repo.root), str(root)], check=True)
    clone = DvcRepo(root)
    clone.env = {**repo.env, "DVC_SITE_CACHE_DIR": str(root.parent / "clone-site-cache")}
    add_remote(clone, storage)
    return clone


def model_bytes(repo: DvcRepo) -> bytes:
    return (repo.root / "data" / "model" / "model.pt").read_bytes()


def one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(("error: ", "interrupted: ")), result.stderr
    for text in expected:
        assert text in lines[0]
    return lines[0]


def nothing_lost(repo: DvcRepo, hashes: dict[str, str]) -> None:
    """The workspace's outputs and DVC's cache are as they were before the failure."""
    assert output_hashes(repo) == hashes
    assert repo.git("status", "--porcelain").stdout == ""
    status = repo.dvc("status", "--json").stdout
    assert json.loads(status) == {}, status  # every output present, matching dvc.lock


# --- sharing ------------------------------------------------------------------------------

def test_push_shares_every_run_and_a_clone_pulls_and_restores_without_training(
    member, storage, tmp_path,
):
    member.dvc("exp", "run", "-S", LR)
    experiment = json.loads((member.root / "metrics" / "eval.json").read_text())
    pushed = member.run(*PUSH).stdout
    assert "share: pushed" in pushed and storage.url in pushed
    member.git("checkout", "--", ".")
    member.dvc("checkout", "--force")

    clone = clone_of(member, storage, tmp_path / "clone")
    clone.dvc("pull")
    assert output_hashes(clone) == output_hashes(member)
    assert model_bytes(clone) == model_bytes(member)
    assert json.loads(clone.dvc("status", "--json").stdout) == {}

    output = clone.dvc("exp", "run", "--pull", "-S", LR).stdout
    after_train = {"train"} | {s for s, spec in PIPELINE.items() if "data/model" in spec["deps"]}
    assert ran(output) == set() and restored(output) == after_train
    assert json.loads((clone.root / "metrics" / "eval.json").read_text()) == experiment
    again = member.run(*PUSH).stdout
    assert "pushed 0 new object(s)" in again  # the remote holds them all


def test_exp_push_and_pull_then_a_clone_pulls_only_what_it_needs(member, storage, tmp_path):
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    member.git("remote", "add", "origin", str(origin))
    name = f"shared-{storage.kind}"
    try:
        member.git("push", "-q", "origin", "main")
        member.dvc("exp", "run", "-n", name, "-S", LR)
        experiment = model_bytes(member)
        member.dvc("exp", "push", "origin", name)  # git refs to origin, outputs to storage
        member.git("checkout", "--", ".")
        member.dvc("checkout", "--force")

        clone = clone_of(member, storage, tmp_path / "clone")
        clone.git("remote", "set-url", "origin", str(origin))
        clone.dvc("exp", "pull", "origin", name)
        clone.dvc("exp", "apply", name)
        assert model_bytes(clone) == experiment

        member.run(*PUSH)  # the run-cache too: what lets a clone restore instead of train
        lean = clone_of(member, storage, tmp_path / "lean")
        unchanged = lean.dvc("repro", "--pull", "--allow-missing").stdout
        assert ran(unchanged) == set() and not (lean.root / "data").exists()
        output = lean.dvc("exp", "run", "--pull", "--allow-missing", "-S", LR).stdout
        assert ran(output) == set()
        assert model_bytes(lean) == experiment
        assert not (lean.root / "data" / "raw").exists()  # never needed, never fetched
    finally:
        member.dvc("exp", "remove", name)
        member.git("remote", "remove", "origin")


def test_the_model_is_fetched_with_dvc_get_from_a_committed_remote(
    pipeline, storage, tmp_path,
):
    repo = team_member(pipeline[0].root, storage, tmp_path / "home")
    if isinstance(storage.server, SSH):  # the key is the user's: ~/.ssh/config names it
        (tmp_path / "home" / ".ssh").mkdir(parents=True)
        (tmp_path / "home" / ".ssh" / "config").write_text(
            f"Host 127.0.0.1\n  IdentityFile {storage.server.client_key}\n")
        storage.settings.pop("keyfile")
    add_remote(repo, storage, scope="--project")
    repo.commit("a default remote that clones can see")
    try:
        repo.dvc("push")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        repo.run("dvc", "get", str(repo.root), "data/model/model.pt", "-o", "model.pt",
                 cwd=elsewhere)
        assert (elsewhere / "model.pt").read_bytes() == model_bytes(repo)
    finally:
        repo.git("reset", "-q", "--hard", "HEAD~1")


# --- failures -----------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "extra"), [("s3://bucket/path", "s3"),
                                            ("ssh://127.0.0.1:1/storage", "ssh")])
def test_push_without_the_plugin_names_the_extra_to_install(pipeline, tmp_path, url, extra):
    repo = DvcRepo(pipeline[0].root)
    hashes = output_hashes(repo)
    shadow = tmp_path / "shadow"  # an environment without the plugin: its import fails
    shadow.mkdir()
    (shadow / f"dvc_{extra}.py").write_text(
        f"raise ModuleNotFoundError(\"No module named 'dvc_{extra}'\", name='dvc_{extra}')\n")
    repo.env["PYTHONPATH"] = str(shadow)
    repo.dvc("remote", "add", "--local", "-d", "storage", url)
    try:
        failed = repo.run(*PUSH, check=False)
        one_line_error(failed, f"remote 'storage' ({url})", f"dvc-{extra}",
                       f"pip install -e '.[{extra}]'")
        nothing_lost(repo, hashes)
    finally:
        repo.dvc("remote", "remove", "--local", "storage")


def test_refused_credentials_a_missing_bucket_and_a_server_down_are_one_line_each(
    member, storage, tmp_path,
):
    hashes = output_hashes(member)
    if isinstance(storage.server, S3):
        member.env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
        failed = member.run(*PUSH, check=False)
        member.env.update(storage.env)
    else:
        make_keys(tmp_path / "stranger")
        member.dvc("remote", "modify", "--local", "storage", "keyfile",
                   str(tmp_path / "stranger" / "client_key"))
        failed = member.run(*PUSH, check=False)
        member.dvc("remote", "modify", "--local", "storage", "keyfile",
                   storage.settings["keyfile"])
    one_line_error(failed, "refused the credentials", storage.url)
    nothing_lost(member, hashes)

    if isinstance(storage.server, S3):
        member.dvc("remote", "modify", "--local", "storage", "url", "s3://no-such-bucket/x")
        failed = member.run(*PUSH, check=False)
        one_line_error(failed, "the bucket 'no-such-bucket' does not exist")
        member.dvc("remote", "modify", "--local", "storage", "url", storage.url)
        nothing_lost(member, hashes)

    storage.server.stop()
    failed = member.run(*PUSH, check=False)
    one_line_error(failed, "cannot reach remote 'storage'", "rerun when it is back")
    nothing_lost(member, hashes)


def push_until(member: DvcRepo, storage: Storage, cut: Callable[[subprocess.Popen], None],
               ) -> subprocess.CompletedProcess:
    """Start a push, and ``cut`` it as soon as a new file reaches the server."""
    before = storage.names()
    process = subprocess.Popen(PUSH, cwd=member.root, env=member.env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while storage.names() == before and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    cut(process)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(PUSH, process.returncode, stdout, stderr)


def test_a_push_cut_off_midway_fails_in_one_line_and_a_rerun_completes(
    member, storage, tmp_path,
):
    hashes = output_hashes(member)
    failed = push_until(member, storage, lambda _: storage.server.stop())
    one_line_error(failed, "cannot reach remote 'storage'")
    nothing_lost(member, hashes)

    if isinstance(storage.server, SSH):  # back, with what it had received
        storage.server = storage.server.restart()
    else:  # moto keeps nothing: a new server on a new port
        restarted = start_s3()
        storage.server, storage.env = restarted.server, restarted.env
        member.env.update(restarted.env)
        member.dvc("remote", "modify", "--local", "storage", "endpointurl",
                   restarted.settings["endpointurl"])
    interrupted = push_until(member, storage, lambda process: process.send_signal(signal.SIGINT))
    assert interrupted.returncode == 130
    one_line_error(interrupted, "interrupted: nothing local changed")
    nothing_lost(member, hashes)

    assert "share: pushed" in member.run(*PUSH).stdout
    assert "in sync" in member.dvc("status", "--cloud").stdout


def test_an_object_damaged_on_the_remote_is_caught_when_pulled(member, storage, tmp_path):
    member.run(*PUSH)
    files = storage.files()
    key = next(key for key, data in files.items() if data == model_bytes(member))
    damaged = bytearray(files[key])
    damaged[-10] ^= 0xFF
    storage.write(key, bytes(damaged))

    clone = clone_of(member, storage, tmp_path / "clone")  # verify = true (docs/remotes.md)
    failed = clone.dvc("pull", "train", check=False)
    assert failed.returncode != 0
    assert not (clone.root / "data" / "model" / "model.pt").exists()
    cache = clone.root / ".dvc" / "cache" / "files" / "md5"
    assert not any(path.read_bytes() == bytes(damaged) for path in cache.rglob("*")
                   if path.is_file())  # dropped, not kept in the cache

    trusting = clone_of(member, storage, tmp_path / "trusting")
    trusting.dvc("remote", "modify", "--local", "storage", "verify", "false")
    trusting.dvc("pull", "train")  # DVC's default: the remote's bytes, unchecked
    assert model_bytes(trusting) == bytes(damaged)

    assert "pushed 0 new object(s)" in member.run(*PUSH).stdout  # push checks names only
    # The repair (docs/remotes.md): delete the damaged object and its directory's manifest
    # (else DVC's index of the remote still lists the object), then push again.
    manifest = output_hashes(member)["data/model"]
    storage.write(key, None)
    storage.write(next(name for name in files if name.endswith(f"{manifest[:2]}/{manifest[2:]}")),
                  None)
    assert "pushed 2 new object(s)" in member.run(*PUSH).stdout
    clone.dvc("pull", "train")
    assert model_bytes(clone) == model_bytes(member)


# --- docs/remotes.md ----------------------------------------------------------------------

def test_the_s3_commands_of_docs_remotes_run_against_the_s3_server(pipeline, tmp_path):
    """The ```sh blocks of docs/remotes.md marked ``<!-- checked against moto ... -->``, in
    order, as one shell script, with the doc's placeholders replaced by the local server's
    values; those marked "on another machine" start in another directory."""
    storage = start_s3()
    repo = team_member(pipeline[0].root, storage, tmp_path / "home")
    repo.env = {key: value for key, value in repo.env.items() if not key.startswith("AWS_")}
    repo.dvc("exp", "run", "-S", LR)  # a run for the clone to restore (seen: restored here)
    experiment = model_bytes(repo)
    repo.run("sh", "-c", "git checkout -- . && dvc checkout --force")
    baseline = repo.git("rev-parse", "HEAD").stdout.strip()
    doc = (REPO_ROOT / "docs" / "remotes.md").read_text()
    blocks = re.findall(r"<!-- checked against moto(.*?) -->\n```sh\n(.*?)```", doc, re.S)
    assert len(blocks) >= 5
    script = "\n".join(f"cd {tmp_path}\n{block}" if where else block for where, block in blocks)
    served = tmp_path / "git" / "mnist-dvc.git"  # the team's git server: this repository
    served.parent.mkdir()
    served.symlink_to(repo.root)
    for placeholder, value in {
        "https://s3.example.com": storage.server.endpoint,
        "my-team-bucket": BUCKET,
        "YOUR_KEY_ID": storage.env["AWS_ACCESS_KEY_ID"],
        "YOUR_SECRET": storage.env["AWS_SECRET_ACCESS_KEY"],
        "https://git.example.com/team/mnist-dvc.git": str(served),
        "make push": " ".join(PUSH),
    }.items():
        assert placeholder in script
        script = script.replace(placeholder, value)
    script = re.sub(r"^pip install .*$", "", script, flags=re.M)  # installed here
    try:
        output = repo.run("bash", "-euo", "pipefail", "-c", script).stdout
        assert ran(output) == set() and "Stage 'train' is cached" in output
        clone = tmp_path / "mnist-dvc"
        assert (clone / "data" / "model" / "model.pt").read_bytes() == experiment
        assert (clone / "model.pt").read_bytes() == model_bytes(repo)  # dvc get: the commit's
    finally:
        storage.server.stop()
        repo.git("reset", "-q", "--hard", baseline)
        repo.dvc("remote", "remove", "--local", "storage", check=False)
        assert repo.git("status", "--porcelain").stdout == ""


def test_no_server_is_left_running():
    """Run last in this file: every server the tests started has stopped."""
    listed = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert [line for line in listed.splitlines() if "-m tests.servers" in line] == []

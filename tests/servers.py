"""Real storage servers for the remote tests: S3 (moto) and SSH/SFTP (asyncssh), on 127.0.0.1.

Each runs in a child process (``python -m tests.servers s3|ssh ...``) so that a test can kill
it mid-transfer. A server is bounded: it exits by itself after ``--lifetime`` seconds, and
with its parent (PR_SET_PDEATHSIG on Linux); ``Server.stop`` ends it at once.

The S3 server checks signatures as AWS does: it starts with one IAM user allowed ``s3:*``,
whose key it prints, and refuses any other key (moto's IAM simulation, switched on through
its ``/moto-api/reset-auth`` endpoint once the user exists).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
REGION = "us-east-1"
LIFETIME_S = 900  # an upper bound on a test session's use of one server
START_TIMEOUT_S = 60
S3_POLICY = {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the process that started it dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def announce(facts: dict[str, Any]) -> None:
    print(json.dumps(facts), flush=True)


def serve_s3(lifetime: float) -> None:
    import boto3  # type: ignore[import-untyped]
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(HOST, 0, verbose=False)
    server.start()
    endpoint = "http://{}:{}".format(*server.get_host_and_port())
    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION,
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="team")
    iam.put_user_policy(UserName="team", PolicyName="s3", PolicyDocument=json.dumps(S3_POLICY))
    key = iam.create_access_key(UserName="team")["AccessKey"]
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    announce({"endpoint": endpoint, "key_id": key["AccessKeyId"],
              "secret": key["SecretAccessKey"]})
    time.sleep(lifetime)
    server.stop()


def serve_ssh(root: Path, host_key: Path, authorized_keys: Path, port: int,
              lifetime: float) -> None:
    import asyncssh

    class Storage(asyncssh.SFTPServer):
        """SFTP confined to ``root``: the remote's ``/storage`` is ``root/storage``."""

        def __init__(self, channel: Any) -> None:
            super().__init__(channel, chroot=os.fsencode(root))

    async def serve() -> None:
        server = await asyncssh.listen(
            HOST, port, server_host_keys=[str(host_key)],
            authorized_client_keys=str(authorized_keys), sftp_factory=Storage,
            allow_scp=False, reuse_address=True)
        announce({"port": server.sockets[0].getsockname()[1]})
        await asyncio.sleep(lifetime)
        server.close()

    asyncio.run(serve())


@dataclass
class Server:
    """A server child process; ``facts`` is what it printed once it was ready."""

    process: subprocess.Popen[str]
    facts: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, *args: str) -> Server:
        root = Path(__file__).resolve().parent.parent
        with tempfile.TemporaryFile("w+") as log:  # a file: a full pipe would stall the server
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.servers", *args], cwd=root, text=True,
                stdout=subprocess.PIPE, stderr=log, preexec_fn=die_with_parent)
            assert process.stdout is not None
            with selectors.DefaultSelector() as selector:
                selector.register(process.stdout, selectors.EVENT_READ)
                ready = selector.select(START_TIMEOUT_S)
            line = process.stdout.readline() if ready else ""
            if not line:
                process.kill()
                process.communicate(timeout=10)
                log.seek(0)
                raise RuntimeError(f"server {args[0]} did not start: {log.read()[-2000:]}")
        return cls(process, json.loads(line))

    def kill(self) -> None:
        """SIGKILL: the server is gone, mid-transfer if one is running."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=30)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


@dataclass
class S3:
    """A moto S3 server: ``endpoint``, and the one key it accepts."""

    server: Server

    @classmethod
    def start(cls) -> S3:
        return cls(Server.start("s3"))

    @property
    def endpoint(self) -> str:
        return str(self.server.facts["endpoint"])

    @property
    def credentials(self) -> dict[str, str]:
        """The environment a client needs (as a user would export it)."""
        return {"AWS_ACCESS_KEY_ID": self.server.facts["key_id"],
                "AWS_SECRET_ACCESS_KEY": self.server.facts["secret"],
                "AWS_DEFAULT_REGION": REGION}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.server.facts["key_id"],
                            aws_secret_access_key=self.server.facts["secret"])

    def stored_bytes(self, bucket: str) -> int:
        listed = self.client().list_objects_v2(Bucket=bucket).get("Contents", [])
        return sum(int(item["Size"]) for item in listed)

    def stop(self) -> None:
        self.server.kill()


@dataclass
class SSH:
    """An SFTP server whose storage is ``root`` and that accepts one client key."""

    server: Server
    root: Path
    keys: Path  # client_key, client_key.pub, host_key, host_key.pub

    @classmethod
    def start(cls, root: Path, keys: Path, port: int = 0) -> SSH:
        if not (keys / "host_key").is_file():
            make_keys(keys)
        server = Server.start("ssh", "--root", str(root), "--host-key", str(keys / "host_key"),
                              "--authorized-keys", str(keys / "client_key.pub"),
                              "--port", str(port))
        return cls(server, root, keys)

    @property
    def port(self) -> int:
        return int(self.server.facts["port"])

    @property
    def client_key(self) -> Path:
        return self.keys / "client_key"

    def known_hosts_line(self) -> str:
        """The ``~/.ssh/known_hosts`` entry of this server (what ``ssh-keyscan`` prints)."""
        return f"[{HOST}]:{self.port} {(self.keys / 'host_key.pub').read_text().strip()}\n"

    def stored_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.root.rglob("*") if path.is_file())

    def restart(self) -> SSH:
        """The same storage, keys and port, in a new process."""
        self.stop()
        return self.start(self.root, self.keys, self.port)

    def stop(self) -> None:
        self.server.kill()


def make_keys(directory: Path) -> None:
    """An ed25519 key pair for the client and one for the server host."""
    import asyncssh

    directory.mkdir(parents=True, exist_ok=True)
    for name in ("client_key", "host_key"):
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(str(directory / name))
        key.write_public_key(str(directory / f"{name}.pub"))
        os.chmod(directory / name, 0o600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=("s3", "ssh"))
    parser.add_argument("--lifetime", type=float, default=LIFETIME_S)
    parser.add_argument("--root", type=Path)
    parser.add_argument("--host-key", type=Path)
    parser.add_argument("--authorized-keys", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.kind == "s3":
            serve_s3(args.lifetime)
        else:
            serve_ssh(args.root, args.host_key, args.authorized_keys, args.port, args.lifetime)


if __name__ == "__main__":
    main()

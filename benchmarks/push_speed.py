"""``mnist-dvc push`` of a checkout where ``dvc repro`` ran (``--repo``, default this one; its
.dvc/config.local gets a remote ``bench`` meanwhile) to an empty S3 and an empty SSH server
(tests/servers.py, 127.0.0.1), then again with nothing new; median of 3 rounds."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.servers import S3, SSH

PUSH = (sys.executable, "-m", "mnist_dvc", "push", "-r", "bench")


def dvc(repo: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True)


def start(kind: str, scratch: Path) -> tuple[S3 | SSH, str, dict[str, str]]:
    """A new, empty server: (it, the remote URL, its settings)."""
    if kind == "s3":
        s3 = S3.start()
        s3.client().create_bucket(Bucket="bench")
        return s3, "s3://bench/mnist-dvc", {"endpointurl": s3.endpoint}
    (scratch / "sftp").mkdir()
    ssh = SSH.start(scratch / "sftp", scratch / "keys")
    return ssh, f"ssh://127.0.0.1:{ssh.port}/storage", {"keyfile": str(ssh.client_key)}


def one_round(repo: Path, kind: str, scratch: Path) -> tuple[float, float, int]:
    """(first push s, push with nothing new s, bytes stored) against a new, empty server."""
    server, url, settings = start(kind, scratch)
    env = {**os.environ, "HOME": str(scratch), "DVC_NO_ANALYTICS": "1",
           **(server.credentials if isinstance(server, S3) else {})}
    dvc(repo, "remote", "add", "--local", "-f", "bench", url)
    for key, value in settings.items():
        dvc(repo, "remote", "modify", "--local", "bench", key, value)
    try:
        times = []
        for _ in range(2):
            began = time.perf_counter()
            subprocess.run(PUSH, cwd=repo, check=True, capture_output=True, env=env)
            times.append(time.perf_counter() - began)
        stored = server.stored_bytes("bench") if isinstance(server, S3) else server.stored_bytes()
    finally:
        server.stop()
        dvc(repo, "remote", "remove", "--local", "bench")
    return times[0], times[1], stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    repo = parser.parse_args().repo.resolve()
    print("| server | first push (median) | MB | MB/s | push with nothing new |")
    print("|---|---|---|---|---|")
    for kind in ("s3", "ssh"):
        rounds = []
        for _ in range(3):  # each against a new server
            with tempfile.TemporaryDirectory() as scratch:
                rounds.append(one_round(repo, kind, Path(scratch)))
        first, again = (statistics.median(run[i] for run in rounds) for i in (0, 1))
        megabytes = rounds[0][2] / 1e6
        print(f"| {kind} | {first:.1f} s | {megabytes:.0f} | {megabytes / first:.0f} | "
              f"{again:.1f} s |")


if __name__ == "__main__":
    main()

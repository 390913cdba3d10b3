"""Share every run DVC has seen: ``dvc push --run-cache``, plus the outputs of those runs.

    mnist-dvc push [--remote NAME]     (make push)

``dvc push --run-cache`` uploads the run-cache's records and the outputs of the workspace,
but not the outputs of other runs, and never the ``cache: false`` metrics and plots that
this project commits to git (DVC keeps them in its cache for the run-cache all the same).
Without them another clone cannot restore those runs: ``dvc exp run --pull`` trains again.
This command does what ``dvc push --run-cache`` does, then uploads the outputs of every
run-cache record, metrics and plots included, through DVC's own remote code. Afterwards, in
any clone, ``dvc exp run --pull -S ...`` (or ``dvc repro --pull``) fetches the records and
outputs it needs and restores a run that was pushed instead of computing it.

A failure (no plugin for the remote's kind, the server unreachable or gone mid-push, refused
credentials, a missing bucket) is one line naming the remote; nothing local is touched, and
a rerun uploads only what the remote lacks. Setting up S3 and SSH remotes: docs/remotes.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from mnist_dvc.errors import StageError

# URL scheme -> this project's extra that installs DVC's plugin for it (pyproject.toml)
EXTRAS = {"s3": "s3", "ssh": "ssh", "gs": "gs", "azure": "azure"}
DVC_LOGGERS = ("dvc", "dvc_objects", "dvc_data")  # as dvc.logger.setup() configures them
# What the plugins' errors say, lower case and without spaces
DENIED = ("permissiondenied", "forbidden", "accessdenied", "invalidaccesskeyid",
          "signaturedoesnotmatch", "unabletolocatecredentials", "authenticationfailed")
NO_BUCKET = ("bucketdoesnotexist", "nosuchbucket", "containernotfound",
             "containerdoesnotexist")
UNREACHABLE = ("couldnotconnect", "connectionnotopen", "connectionlost", "connectionrefused",
               "connectcallfailed", "timedout")
UNREACHABLE_TYPES = {"ConnectionError", "TimeoutError", "gaierror", "EndpointConnectionError",
                     "ConnectTimeoutError", "ReadTimeoutError", "SFTPNoConnection",
                     "SFTPConnectionLost", "ConnectionLost", "DisconnectError",
                     "ClientConnectorError", "ServerDisconnectedError"}


@dataclass(frozen=True)
class Remote:
    name: str
    url: str

    def __str__(self) -> str:
        return f"remote '{self.name}' ({self.url})"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mnist-dvc push", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-r", "--remote", help="DVC remote (default: the default remote)")
    args = parser.parse_args(argv)
    try:
        target, runs, objects = share(args.remote)
    except KeyboardInterrupt:
        print("interrupted: nothing local changed; rerun `make push` to finish (what the "
              "remote already holds is not sent again)", file=sys.stderr)
        sys.exit(130)
    print(f"share: pushed {objects} new object(s) to {target}: the outputs of the workspace "
          f"and of the {runs} run(s) in DVC's run-cache, metrics and plots included")


def share(remote: str | None = None) -> tuple[Remote, int, int]:
    """Push the workspace, the run-cache and its runs' outputs to ``remote`` (by default the
    default remote): (the remote, run-cache records, objects uploaded)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        repo = Repo()
    except DvcException as err:  # not in a DVC repository, or a broken config
        raise StageError(f"dvc: {first_line(err)}") from None
    with repo, dvc_errors() as logged:
        target = resolve(repo.config, remote)
        try:
            pushed = repo.push(remote=target.name)  # the workspace's outputs, as dvc push
            records = repo.stage_cache.push(target.name)  # as dvc push --run-cache
            for objects in repo.stage_cache.get_used_objs(records).values():
                result = repo.cloud.push(objects, remote=target.name)
                if result.failed:
                    raise StageError(f"{len(result.failed)} run-cache object(s) could not be "
                                     "pushed (missing from the local cache?)")
                pushed += len(result.transferred)
            if logged:  # DVC logs a run-cache record it failed to copy, and goes on
                raise logged[0]
        except (StageError, KeyboardInterrupt):
            raise
        except Exception as err:  # whatever the remote's library raises: one line
            raise failure(target, logged[0] if logged else err) from None
    return target, len(records), pushed


def resolve(config: Any, name: str | None) -> Remote:
    """The remote ``name`` (or the default one) from DVC's config, or one line saying why not."""
    name = name or config["core"].get("remote")
    remotes = config["remote"]
    if not name:
        raise StageError("no DVC remote: add one with `dvc remote add -d NAME URL` "
                         "(docs/remotes.md), or name one with --remote")
    if name not in remotes:
        known = ", ".join(sorted(remotes)) or "none"
        raise StageError(f"no DVC remote named '{name}' (configured: {known})")
    return Remote(name, str(remotes[name]["url"]))


class _DvcLog(logging.Handler):
    """DVC's log while it runs as a library: warnings go to stderr as one line each, and
    logged exceptions are kept (the first is usually the cause of the error DVC raises)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])
        elif record.levelno < logging.ERROR:
            print(f"dvc: warning: {record.getMessage().splitlines()[0]}", file=sys.stderr)


@contextlib.contextmanager
def dvc_errors() -> Iterator[list[BaseException]]:
    """Route DVC's loggers through ``_DvcLog`` (never a traceback on the terminal)."""
    loggers = [logging.getLogger(name) for name in DVC_LOGGERS]
    handler = _DvcLog()
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [handler], False
    try:
        yield handler.errors
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            logger.handlers, logger.propagate = handlers, propagate


def causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or during, innermost last."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def failure(remote: Remote, err: BaseException) -> StageError:
    """One line for a failed push to ``remote``: what went wrong and what to do."""
    scheme = urlparse(remote.url).scheme or "local"
    chain = list(causes(err))
    for cause in chain:
        missing = getattr(cause, "missing_deps", None)
        if missing is not None or "is supported, but requires" in str(cause):
            extra = EXTRAS.get(scheme)
            how = (f"pip install -e '.[{extra}]'" if extra else f"pip install 'dvc[{scheme}]'")
            return StageError(f"{remote} needs DVC's {scheme} plugin (dvc-{scheme}), which is "
                              f"not installed: {how}")
    if scheme in ("local", "file"):
        for cause in chain:
            if isinstance(cause, OSError):
                return StageError(f"cannot write to {remote}: {cause.strerror or cause} "
                                  f"({cause.filename}): is it mounted and writable?")
    for cause in chain:
        said = squashed(cause)
        if isinstance(cause, PermissionError) or any(words in said for words in DENIED):
            return StageError(f"{remote} refused the credentials ({first_line(cause)}): set "
                              "them in .dvc/config.local or the environment (docs/remotes.md)")
        if any(words in said for words in NO_BUCKET):
            bucket = urlparse(remote.url).netloc
            return StageError(f"{remote}: the bucket '{bucket}' does not exist; create it, "
                              "or correct the URL (dvc remote modify NAME url URL)")
    for cause in chain:
        kinds = {kind.__name__ for kind in type(cause).__mro__}
        if kinds & UNREACHABLE_TYPES or any(words in squashed(cause) for words in UNREACHABLE):
            return StageError(f"cannot reach {remote}: {first_line(cause)}; nothing local "
                              "changed: rerun when it is back (what it holds is not sent again)")
    return StageError(f"push to {remote} failed: {type(chain[-1]).__name__}: "
                      f"{first_line(chain[-1])}")


def squashed(err: BaseException) -> str:
    return str(err).lower().replace(" ", "")

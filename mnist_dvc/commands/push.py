"""Share every run DVC has seen: ``dvc push --run-cache``, plus the outputs of those runs.

    mnist-dvc push [--remote NAME]     (make push)

``dvc push --run-cache`` uploads the run-cache's records and the outputs of the workspace,
but not the outputs of other runs, and never the ``cache: false`` metrics and plots that
this project commits to git (DVC keeps them in its cache for the run-cache all the same).
Without them another clone cannot restore those runs: ``dvc exp run --pull`` trains again.
This command does what ``dvc push --run-cache`` does, then uploads the outputs of every
run-cache record, metrics and plots included, through DVC's own remote code. Afterwards, in
any clone, ``dvc pull --run-cache`` and ``dvc exp run --pull -S ...`` (or ``dvc repro
--pull``) restore a run that was pushed instead of computing it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mnist_dvc.errors import StageError


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mnist-dvc push", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-r", "--remote", help="DVC remote (default: the default remote)")
    args = parser.parse_args(argv)
    runs, objects = share(args.remote)
    print(f"share: pushed {runs} run-cache record(s) and {objects} new object(s) of their "
          "outputs")


def share(remote: str | None = None) -> tuple[int, int]:
    """Push the workspace, the run-cache and its runs' outputs; (records, objects pushed)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo() as repo:
            repo.push(remote=remote)  # the workspace's outputs, as dvc push
            records = repo.stage_cache.push(remote)  # the run-cache, as dvc push --run-cache
            pushed = 0
            for objects in repo.stage_cache.get_used_objs(records).values():
                result = repo.cloud.push(objects, remote=remote)
                if result.failed:
                    raise StageError(f"{len(result.failed)} run-cache object(s) could not be "
                                     "pushed (missing from the local cache?)")
                pushed += len(result.transferred)
    except DvcException as err:
        raise StageError(f"dvc: {str(err).splitlines()[0]}") from None
    return len(records), pushed


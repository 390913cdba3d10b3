"""The one way a stage reports an expected failure: a single line and a non-zero exit."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable


class StageError(Exception):
    """A failure the user can fix (bad param, bad file, no source); printed as one line."""


class PeerLost(Exception):
    """A data-parallel worker whose peers stopped (one failed, or was killed): it exits with
    ``PEER_LOST`` and prints nothing; the launcher or the failed worker says what happened."""


class AlreadyReported(Exception):
    """A failure whose one line another process has printed: exit 1 and say nothing more."""


PEER_LOST = 3


def corrupt_file(path: object, err: BaseException) -> StageError:
    """The error for a file that exists but cannot be read: its name and the first line of why."""
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return StageError(f"{path}: unreadable or corrupt ({reason[:160]})")


def os_error(action: str, path: object, err: OSError) -> StageError:
    """``cannot write metrics/eval.json: No space left on device``."""
    return StageError(f"cannot {action} {path}: {err.strerror or err}")


def run_stage(main: Callable[[], None], description: str | None = None,
              program: bool | None = None) -> None:
    """Run a stage's ``main`` as a command: one-line errors, exit 1; Ctrl-C exits 130.

    A stage takes no arguments (params.yaml drives it); ``--help`` prints ``description``.

    Run as ``python -m stages.<name>`` (outside torchrun's workers, whose launcher checks for
    them), it fails instead of ending normally if the params or code DVC will record for the
    stage changed while it ran (mnist_dvc/records.py).

    Run as a program (``program``, by default when ``main`` is defined in ``__main__``), it
    freezes the objects alive before and after ``main`` out of the garbage collector. The
    modules imported by then
    (180,000 objects for torch, 130,000 more for the torch._dynamo that torch.optim imports)
    live as long as the process, and walking them in every full collection, above all in
    the collections at exit, is pure cost: ``make benchmark`` times the train stage with
    and without it. ``main``'s own garbage is collected first, so its finalizers run.
    """
    if description is not None:
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        argparse.ArgumentParser(
            prog=f"python -m {spec.name}" if spec else None, description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="Parameters come from params.yaml; run the pipeline with `dvc repro`.",
        ).parse_args()
    if program is None:
        program = getattr(main, "__module__", None) == "__main__"  # not a test calling in
    stage = _stage_run_by_dvc() if program else None
    if stage is not None:
        from mnist_dvc import records  # here: records imports modules that import this one

        main = records.guarded(stage, main)
    if program:
        gc.freeze()
    try:
        main()
    except AlreadyReported:
        sys.exit(1)
    except PeerLost:
        sys.exit(PEER_LOST)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        if os.environ.get("TORCHELASTIC_RUN_ID"):  # a torchrun worker: its launcher says it
            sys.exit(130)
        print("interrupted: rerun to continue (train resumes from its last complete epoch)",
              file=sys.stderr)
        sys.exit(130)
    finally:
        if program:
            gc.collect()
            gc.freeze()


def _stage_run_by_dvc() -> str | None:
    """``train`` in ``python -m stages.train``; None in a torchrun worker or another program."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    package, _, name = (spec.name if spec else "").partition(".")
    if package != "stages" or not name or os.environ.get("TORCHELASTIC_RUN_ID"):
        return None
    return name

"""The one way a stage reports an expected failure: a single line and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable


class StageError(Exception):
    """A failure the user can fix (bad param, bad file, no source); printed as one line."""


def corrupt_file(path: object, err: BaseException) -> StageError:
    """The error for a file that exists but cannot be read: its name and the first line of why."""
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return StageError(f"{path}: unreadable or corrupt ({reason[:160]})")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main`` as a command: one-line errors, exit 1; Ctrl-C exits 130."""
    try:
        main()
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: outputs already written are complete; rerun to continue",
              file=sys.stderr)
        sys.exit(130)

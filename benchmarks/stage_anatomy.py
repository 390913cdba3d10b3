"""The train stage's fixed costs: the real stage, its calls timed (``make benchmark`` runs it).

    python -m benchmarks.stage_anatomy    (in a directory laid out like the repository)

It runs ``stages.train`` as the stage's program does (``main`` through ``run_stage``, which
freezes the collector) with a timer around each call the stage makes into the library, and
prints one JSON object as its last line: the seconds of the imports, and of each call summed
over its calls. Nothing is copied from the stage: what is timed is what the stage runs, in
its order. The caller times the whole process; the interpreter's start and exit are what the
seconds in process leave over. Nothing above ``main`` imports torch: its import is timed too.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# the names stages/train.py calls, looked up in its own module as it looks them up
STAGE_CALLS = ("load_config", "check_net", "check_data", "select_device", "configure_torch",
               "read_split", "to_device", "split_digest", "run_fingerprint", "Trainer",
               "score", "write_metrics", "save_model", "torch_save_verified")
TRAINER_CALLS = ("run_epoch", "state_dict")
STORE_CALLS = ("load", "save", "clear")  # the unfinished run's state


@contextlib.contextmanager
def timed(targets: Sequence[tuple[Any, str]]) -> Iterator[dict[str, list[float]]]:
    """While the block runs, each ``getattr(owner, name)`` is wrapped in a timer: the
    seconds of each call, by qualified name. A call made inside another timed call counts in
    the outer one only, so that the times add up."""
    seconds: dict[str, list[float]] = {}
    depth = 0

    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        label = getattr(function, "__qualname__", repr(function))

        def timer(*args: Any, **kwargs: Any) -> Any:
            nonlocal depth
            depth += 1
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                depth -= 1
                if not depth:
                    seconds.setdefault(label, []).append(time.perf_counter() - started)
        return timer

    originals = [(owner, name, getattr(owner, name)) for owner, name in targets]
    for owner, name, function in originals:
        setattr(owner, name, wrap(function))
    try:
        yield seconds
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)


def main() -> None:
    started = last = time.perf_counter()
    imports: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal last
        imports[name], last = time.perf_counter() - last, time.perf_counter()

    import torch

    lap("import torch")
    import torch._dynamo  # noqa: F401

    lap("import torch._dynamo (the constructor of every torch.optim optimizer imports it)")
    from mnist_dvc.errors import run_stage
    from mnist_dvc.training.resume import ResumeStore
    from mnist_dvc.training.trainer import Trainer
    from stages import train

    lap("import the stage's modules")
    targets = [(train, name) for name in STAGE_CALLS] + \
        [(Trainer, name) for name in TRAINER_CALLS] + [(ResumeStore, name) for name in STORE_CALLS]
    with timed(targets) as calls:
        run_stage(train.main, program=True)
    print(json.dumps({"imports": imports,
                      "calls": {name: [len(times), sum(times)] for name, times in calls.items()},
                      "in process": time.perf_counter() - started}))


if __name__ == "__main__":
    main()

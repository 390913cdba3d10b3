"""Records that cannot lie: a stage never ends as if it had run on inputs it did not use.

DVC reads a stage's params and hashes its deps *after* the command ends, and writes them to
``dvc.lock`` and the run-cache beside the outputs; ``dvc exp run -S`` rewrites params.yaml
before it takes the repository's lock. So a params.yaml or a source file changed while a
stage runs (a second ``dvc exp run -S`` in another terminal, an editor's save) would be
recorded as the input of outputs computed from the old one, and the run-cache would later
restore those outputs for the new input.

``run_stage`` guards every ``python -m stages.<name>`` process: it snapshots what the stage
reads that DVC records, as it starts, and again just before it exits. What it snapshots is
found by convention, so a stage declares nothing extra:

- its params sections, as params.yaml holds them: the fields of ``<Stage>Config`` in
  ``mnist_dvc.config.<stage>`` (parsed values, so a comment or another stage's section may
  change freely);
- its code deps: the files ``mnist_dvc.code_deps.code_files("stages.<stage>")`` lists, the
  ones dvc.yaml declares (sha256, a few milliseconds).

If either changed, the stage removes the outputs dvc.yaml declares for it (as DVC does before
running it: nothing is left reading as a finished run of the wrong inputs) and fails in one
line; DVC then records neither ``dvc.lock`` nor a run-cache entry. Data deps are not hashed:
they are other stages' outputs, which DVC's repository lock guards.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mnist_dvc.code_deps import REPO_ROOT, code_files
from mnist_dvc.config.schema import ParamsError, parse_yaml, read_params_file
from mnist_dvc.errors import StageError

PARAMS_FILE = "params.yaml"
PIPELINE_FILE = "dvc.yaml"
OUTPUT_KINDS = ("outs", "metrics", "plots")
# Tests only: before its final check the stage waits until this file exists, so that a test
# can change an input at a known point of the run.
HOLD_ENV = "MNIST_DVC_HOLD_BEFORE_CHECK"
HOLD_LIMIT_S = 600.0


@dataclass(frozen=True)
class InputSnapshot:
    """What a stage reads that DVC records, at one moment."""

    params: Mapping[str, Any] | None  # the stage's sections; None: params.yaml unreadable
    code: Mapping[str, str | None]  # file (relative to the code root) -> sha256; None: gone


def stage_config(stage: str) -> type | None:
    """``<Stage>Config`` in ``mnist_dvc.config.<stage>`` (``export_onnx`` ->
    ``ExportOnnxConfig``): the params sections ``stage`` reads; None when the stage has no
    config module."""
    try:
        module = importlib.import_module(f"mnist_dvc.config.{stage}")
    except ModuleNotFoundError as err:
        if err.name != f"mnist_dvc.config.{stage}":
            raise
        return None
    config: type = getattr(module, "".join(p.capitalize() for p in stage.split("_")) + "Config")
    return config


def stage_sections(stage: str) -> tuple[str, ...]:
    """The params.yaml sections ``stage`` reads (none without a config module)."""
    config = stage_config(stage)
    return () if config is None else tuple(field.name for field in fields(config))


def take_snapshot(stage: str, workdir: Path = Path("."),
                  code_root: Path = REPO_ROOT) -> InputSnapshot:
    """``stage``'s params sections in ``workdir``'s params.yaml and the hashes of its code
    files under ``code_root``."""
    try:
        files = code_files(f"stages.{stage}", code_root)
    except (OSError, SyntaxError, UnicodeDecodeError) as err:
        raise StageError(f"cannot list the code of stages.{stage}: {err}") from None
    return InputSnapshot(read_sections(workdir / PARAMS_FILE, stage_sections(stage)),
                         hash_files(code_root, files))


def retake(before: InputSnapshot, stage: str, workdir: Path = Path("."),
           code_root: Path = REPO_ROOT) -> InputSnapshot:
    """The same inputs as ``before``, read again (the same code files, even if an import
    was added or removed meanwhile: the edited file's hash shows it)."""
    return InputSnapshot(read_sections(workdir / PARAMS_FILE, stage_sections(stage)),
                         hash_files(code_root, before.code))


def read_sections(path: Path, sections: tuple[str, ...]) -> Mapping[str, Any] | None:
    if not sections:
        return {}
    try:
        raw = read_params_file(path)
    except ParamsError:
        return None  # the stage reports it itself, in its own words
    return {name: raw.get(name) for name in sections}


def hash_files(root: Path, names: Iterable[str]) -> dict[str, str | None]:
    hashes: dict[str, str | None] = {}
    for name in names:
        try:
            hashes[name] = hashlib.sha256((root / name).read_bytes()).hexdigest()
        except OSError:
            hashes[name] = None
    return hashes


def changes(before: InputSnapshot, after: InputSnapshot) -> list[str]:
    """What differs, each as one name: ``params.yaml train.lr``, ``stages/train.py``."""
    if before.params is None or after.params is None:
        changed_params = [] if before.params is after.params else [PARAMS_FILE]
    else:
        changed_params = [f"{PARAMS_FILE} {key}"
                          for key in changed_keys(before.params, after.params)]
    changed_code = [name for name in before.code if before.code[name] != after.code.get(name)]
    return changed_params + changed_code


def changed_keys(before: Any, after: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ. Values compare by type too: ``1`` is not ``1.0``
    and ``true`` is not ``1`` (dvc.lock would show the new spelling)."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = list(before) + [key for key in after if key not in before]
        return [changed for key in keys
                for changed in changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")]
    return [] if _same(before, after) else [prefix.rstrip(".")]


def _same(before: Any, after: Any) -> bool:
    if isinstance(before, list) and isinstance(after, list):
        return len(before) == len(after) and all(map(_same, before, after))
    if isinstance(before, dict) and isinstance(after, dict):
        return not changed_keys(before, after)
    return type(before) is type(after) and (before == after or before != before)  # NaN


def declared_outputs(stage: str, workdir: Path = Path(".")) -> list[Path]:
    """The outs, metrics and plots ``workdir``'s dvc.yaml declares for ``stage``."""
    try:
        spec = parse_yaml((workdir / PIPELINE_FILE).read_text(encoding="utf-8"))
        declared = spec["stages"][stage]
    except (OSError, KeyError, TypeError):
        return []
    paths = []
    for kind in OUTPUT_KINDS:
        for entry in declared.get(kind) or []:
            paths.append(workdir / (next(iter(entry)) if isinstance(entry, dict) else entry))
    return paths


def remove_outputs(paths: list[Path]) -> None:
    for path in paths:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as err:
            raise StageError(f"cannot remove {path}: {err.strerror or err}") from None


def check_unchanged(before: InputSnapshot, stage: str, workdir: Path = Path("."),
                    code_root: Path = REPO_ROOT) -> None:
    """Fail, with ``stage``'s outputs removed, if its inputs differ from ``before``."""
    _hold_for_tests()
    changed = changes(before, retake(before, stage, workdir, code_root))
    if changed:
        remove_outputs(declared_outputs(stage, workdir))
        raise StageError(f"{', '.join(changed)} changed while {stage} ran: its outputs are "
                         "removed, not recorded; rerun (docs/concurrent-runs.md)")


def guarded(stage: str, main: Callable[[], None], workdir: Path = Path("."),
            code_root: Path = REPO_ROOT) -> Callable[[], None]:
    """``main``, refusing to end if ``stage``'s inputs changed while it ran."""
    def run() -> None:
        before = take_snapshot(stage, workdir, code_root)
        main()
        check_unchanged(before, stage, workdir, code_root)
    return run


def _hold_for_tests() -> None:
    release = os.environ.get(HOLD_ENV)
    if not release:
        return
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.05)

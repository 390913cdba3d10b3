"""The typed, validated reading of ``params.yaml``: the machinery every stage's config uses.

A stage's config is a frozen dataclass with one field per params.yaml section it reads (e.g.
``mnist_dvc.config.train.TrainConfig``: ``train`` and ``model``), each section a frozen
dataclass of its keys. ``load_config`` checks those sections before the stage does any work:
a missing or unknown key, a wrong type or an out-of-range value raises ``ParamsError`` with a
single line naming the full key and what is allowed. Every key of a section must be in the
file (DVC tracks each one; a hidden default would not show in ``dvc params diff``); the
dataclass defaults equal the committed params.yaml (a test checks it). Sections a stage does
not read are not its business: each stage depends on its own config module only, so adding
a key to one stage's section reruns no other stage.

The file is read as DVC reads it: YAML 1.2, with DVC's own parser (ruamel.yaml). PyYAML
follows YAML 1.1, where ``5e-3`` is a string and ``off`` is false, so the same file would
mean one thing to ``dvc params diff`` and another to a stage.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, TypeVar

from ruamel.yaml import YAML, YAMLError

from mnist_dvc.errors import StageError

PARAMS_FILE = Path("params.yaml")

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
Config = TypeVar("Config")


class ParamsError(StageError):
    """params.yaml is unreadable or breaks the schema."""


def bounded(default: Any, *, gt: float | None = None, ge: float | None = None,
             lt: float | None = None, le: float | None = None) -> Any:
    """A dataclass field whose value must lie within the given bounds."""
    return field(default=default, metadata={"gt": gt, "ge": ge, "lt": lt, "le": le})


def parse_yaml(text: str | bytes) -> Any:
    """YAML as DVC parses it (params.yaml, dvc.yaml, dvc.lock): safe, YAML 1.2."""
    return YAML(typ="safe").load(text)


def dump_yaml(data: Any) -> str:
    """``data`` as block-style YAML, keys in their order, that ``parse_yaml`` reads back."""
    writer = YAML(typ="safe")
    writer.default_flow_style = False
    writer.sort_base_mapping_type_on_output = False  # type: ignore[assignment]  # typed None
    text = io.StringIO()
    writer.dump(data, text)
    return text.getvalue()


def load_config(path: Path | str, config: type[Config]) -> Config:
    """Read ``path`` and validate the sections ``config`` names; each must hold every key."""
    return parse_config(read_params_file(path), config, source=str(path), complete=True)


def read_params_file(path: Path | str) -> dict[str, Any]:
    """The parsed mapping of a params file; a missing, unreadable or empty file is one line."""
    path = Path(path)
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise ParamsError(f"{path}: not valid YAML (not UTF-8 text)") from None
    except YAMLError as err:
        where = getattr(err, "problem_mark", None)
        problem = (getattr(err, "problem", None) or "").splitlines()[:1]
        detail = "; ".join(([f"line {where.line + 1}"] if where else []) + problem)
        raise ParamsError(f"{path}: not valid YAML" + (f" ({detail})" if detail else "")) from None
    if raw is None:
        raise ParamsError(f"{path}: empty; it must set every parameter (docs/parameters.md)")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {_describe(raw)}")
    return raw


def parse_config(raw: Any, config: type[Config], source: str = "params",
                 complete: bool = False, only_known: bool = False) -> Config:
    """Validate an already-parsed mapping against ``config``'s sections.

    ``complete``: every key must be given; otherwise missing keys take their defaults.
    ``only_known``: a top-level section ``config`` does not name is an error (the whole
    file's check); otherwise other stages' sections are left alone.
    """
    if isinstance(raw, dict) and not only_known:
        names = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
        raw = {key: value for key, value in raw.items() if key in names}
    built: Config = _build(config, raw, prefix="", source=source, complete=complete)
    return built


def _build(cls: type, raw: Any, prefix: str, source: str, complete: bool) -> Any:
    label = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: {label} must be a mapping, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            allowed = ", ".join(fields)
            raise ParamsError(
                f"{source}: unknown key '{prefix}{key}'{hint} (allowed: {allowed})"
            )
    values = {}
    for name, spec in fields.items():
        key = f"{prefix}{name}"
        if name not in raw:
            if complete:
                raise ParamsError(f"{source}: missing key '{key}'")
            continue
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], f"{key}.", source, complete)
        else:
            values[name] = _coerce(raw[name], hint, key, source)
            _check_bounds(values[name], spec.metadata, key, source)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return _coerce(value, inner, key, source)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ParamsError(f"{source}: {key} must be one of {allowed}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple) or not value:
            raise ParamsError(f"{source}: {key} must be a non-empty list, got {_describe(value)}")
        items = tuple(_coerce(v, args[0], key, source) for v in value)
        if len(set(items)) != len(items):
            raise ParamsError(f"{source}: {key} lists an entry twice: {list(items)}")
        return items
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{source}: {key} must be true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{source}: {key} must be an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamsError(f"{source}: {key} must be a number, got {_describe(value)}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ParamsError(f"{source}: {key} must be a finite number, got {value}")
        try:
            return float(value)
        except OverflowError:  # an int too large for a float
            raise ParamsError(
                f"{source}: {key} must be a finite number, got an integer too large for a float"
            ) from None
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ParamsError(f"{source}: {key} must be a non-empty string, got {_describe(value)}")
        return value
    raise TypeError(f"params schema: unsupported type {hint!r} for {key}")


def _check_bounds(value: Any, bounds: Any, key: str, source: str) -> None:
    checks = (("gt", "> ", lambda v, b: v > b), ("ge", ">= ", lambda v, b: v >= b),
              ("lt", "< ", lambda v, b: v < b), ("le", "<= ", lambda v, b: v <= b))
    if value is None:  # an optional key left empty
        return
    for name, symbol, ok in checks:
        bound = bounds.get(name)
        if bound is not None and not ok(value, bound):
            raise ParamsError(f"{source}: {key} must be {symbol}{bound:g}, got {value!r}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"

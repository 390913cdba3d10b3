"""The one typed, validated view of ``params.yaml`` that every stage reads.

Each section is a frozen dataclass. ``load_params`` checks the whole file against it before
any stage does work: a missing or unknown key, a wrong type or an out-of-range value raises
``ParamsError`` with a single line that names the full key and what is allowed. Every key
must be in the file (DVC tracks each one; a hidden default would not show in ``dvc params
diff``); the dataclass defaults equal the committed params.yaml (a test checks it) and let
code and tests build a configuration without a file.

The file is read as DVC reads it: YAML 1.2, with DVC's own parser (ruamel.yaml). PyYAML
follows YAML 1.1, where ``5e-3`` is a string and ``off`` is false, so the same file would
mean one thing to ``dvc params diff`` and another to a stage.

``model.net`` names a class of the network registry (``mnist_dvc.model.nets.NETS``); the stages that
build a network check the name against it, so that download and preprocess need not import
torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML, YAMLError

from mnist_dvc.errors import StageError

PARAMS_FILE = Path("params.yaml")

Source = Literal["mirrors", "pypi", "local"]
OptimizerName = Literal["adam", "sgd"]
ScheduleName = Literal["onecycle", "constant", "step"]
DeviceName = Literal["auto", "cpu", "cuda", "mps"]


class ParamsError(StageError):
    """params.yaml is unreadable or breaks the schema."""


def _bounded(default: Any, *, gt: float | None = None, ge: float | None = None,
             lt: float | None = None, le: float | None = None) -> Any:
    """A dataclass field whose value must lie within the given bounds."""
    return field(default=default, metadata={"gt": gt, "ge": ge, "lt": lt, "le": le})


@dataclass(frozen=True)
class DownloadParams:
    sources: tuple[Source, ...] = ("mirrors", "pypi", "local")
    local_path: str | None = None
    timeout_s: float = _bounded(30.0, gt=0)
    retries: int = _bounded(2, ge=0, le=10)


@dataclass(frozen=True)
class PreprocessParams:
    mean: float = _bounded(0.1307, ge=0, le=1)
    std: float = _bounded(0.3081, gt=0, le=1)


@dataclass(frozen=True)
class ModelParams:
    net: str = "compact"


@dataclass(frozen=True)
class TrainParams:
    seed: int = _bounded(1, ge=0)
    epochs: int = _bounded(2, ge=1)
    batch_size: int = _bounded(256, ge=1)
    optimizer: OptimizerName = "adam"
    lr: float = _bounded(0.03, gt=0)
    momentum: float = _bounded(0.9, ge=0, lt=1)
    weight_decay: float = _bounded(0.0, ge=0)
    label_smoothing: float = _bounded(0.05, ge=0, lt=1)
    shift: int = _bounded(1, ge=0, le=3)
    schedule: ScheduleName = "onecycle"
    warmup_fraction: float = _bounded(0.25, gt=0, lt=1)
    step_gamma: float = _bounded(0.7, gt=0, le=1)
    threads: int = _bounded(2, ge=1)
    nproc: int = _bounded(1, ge=1)
    device: DeviceName = "auto"
    bf16: bool = False


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = _bounded(1000, ge=1)
    threads: int = _bounded(2, ge=1)
    device: DeviceName = "auto"


@dataclass(frozen=True)
class Params:
    download: DownloadParams = field(default_factory=DownloadParams)
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)


def with_train(params: Params, **changes: Any) -> Params:
    """``params`` with some ``train`` keys changed, checked against the schema."""
    return parse_params({**dataclasses.asdict(params), "train": {
        **dataclasses.asdict(params.train), **changes}}, source="with_train")


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


def params_yaml(params: Params) -> str:
    """``params`` as params.yaml text (what tests and the benchmark write for a stage)."""
    return dump_yaml(json.loads(json.dumps(dataclasses.asdict(params))))  # tuples: lists


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate ``path``, which must hold every key of the schema."""
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
        raise ParamsError(f"{path}: empty; it must set every parameter (see README.md)")
    return parse_params(raw, source=str(path), complete=True)


def parse_params(raw: Any, source: str = "params", complete: bool = False) -> Params:
    """Validate an already-parsed mapping against the schema.

    ``complete``: every key must be given; otherwise missing keys take their defaults.
    """
    return _build(Params, raw, prefix="", source=source, complete=complete)


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
    for name, symbol, ok in checks:
        bound = bounds.get(name)
        if bound is not None and not ok(value, bound):
            raise ParamsError(f"{source}: {key} must be {symbol}{bound:g}, got {value!r}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"

"""The whole of ``params.yaml``: every stage's sections in one schema.

No stage reads this module (each reads its own config, so that adding a key to one stage
reruns no other); the tests, the benchmark and review use it to check, build and write the
file as a whole.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_dvc.config.download import DownloadParams
from mnist_dvc.config.evaluate import EvaluateParams
from mnist_dvc.config.export import ExportParams
from mnist_dvc.config.preprocess import PreprocessParams
from mnist_dvc.config.schema import PARAMS_FILE, dump_yaml, parse_config, read_params_file
from mnist_dvc.config.train import ModelParams, TrainParams


@dataclass(frozen=True)
class Params:
    download: DownloadParams = field(default_factory=DownloadParams)
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    export: ExportParams = field(default_factory=ExportParams)


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate the whole of ``path``: every section, every key, nothing unknown."""
    return parse_config(read_params_file(path), Params, source=str(path), complete=True,
                        only_known=True)


def parse_params(raw: Any, source: str = "params", complete: bool = False) -> Params:
    """Validate a parsed mapping of the whole file (missing keys take their defaults unless
    ``complete``)."""
    return parse_config(raw, Params, source=source, complete=complete, only_known=True)


def with_train(params: Params, **changes: Any) -> Params:
    """``params`` with some ``train`` keys changed, checked against the schema."""
    return parse_params({**dataclasses.asdict(params), "train": {
        **dataclasses.asdict(params.train), **changes}}, source="with_train")


def params_yaml(params: Params) -> str:
    """``params`` as params.yaml text (what tests and the benchmark write for a stage)."""
    return dump_yaml(json.loads(json.dumps(dataclasses.asdict(params))))  # tuples: lists

"""The export stage's params (``export.*``) and its output's path.

The path lives here, not in ``Layout``: every stage imports ``mnist_dvc.config.workspace``,
so a path added there would rerun them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mnist_dvc.config.schema import bounded
from mnist_dvc.config.workspace import Layout

# torch's dynamo exporter writes opset 18 and up natively (lower ones go through a converter
# that may refuse a graph); onnxruntime has read opset 18 since 1.14.
MIN_OPSET = 18


@dataclass(frozen=True)
class ExportParams:
    opset: int = bounded(18, ge=MIN_OPSET)


@dataclass(frozen=True)
class ExportConfig:
    """The params.yaml sections the export stage reads."""

    export: ExportParams = field(default_factory=ExportParams)


def onnx_dir(layout: Layout) -> Path:
    """export: the ONNX model, a DVC output of its own (DVC forbids one inside data/model)."""
    return layout.root / "data" / "onnx"


def onnx_model(layout: Layout) -> Path:
    return onnx_dir(layout) / "model.onnx"

"""Stage 5, export: the trained model as ONNX, for onnxruntime and any other ONNX runtime.

Writes ``data/onnx/model.onnx``: input ``pixels``, float32 (N, 1, H, W) in [0, 1] (28x28 for
MNIST), light digits on dark as MNIST holds them (``byte / 255``), any N; output
``log_probs``, float32 (N, classes). The normalization the model was trained with is inside
the graph; the sha256 of the ``model.pt`` it came from and the class names are in its
metadata.

Before it writes anything, the stage checks the graph: onnxruntime scores the whole test set
(the prepared images with preprocess's normalization undone) and must give the same digit
as PyTorch on all but one image in 10,000, every log-probability within a stated tolerance
(mnist_dvc/model/onnx_export.py). Otherwise it fails in one line and DVC records nothing.
"""

from __future__ import annotations

import json

from mnist_dvc.config.export import ExportConfig, ExportParams, onnx_model
from mnist_dvc.config.schema import load_config
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.prepared import read_normalization, read_split
from mnist_dvc.errors import StageError, run_stage
from mnist_dvc.files import file_digest, write_bytes_atomic
from mnist_dvc.model.nets import load_model
from mnist_dvc.model.onnx_export import Agreement, compare, export_onnx
from mnist_dvc.model.onnx_runtime import CLASS_NAMES, SOURCE_SHA256, OnnxModel


def main(layout: Layout = Layout()) -> None:
    export(load_config(layout.params, ExportConfig).export, layout)


def export(cfg: ExportParams, layout: Layout) -> Agreement:
    """Export the model, check it against PyTorch, then write it; returns the agreement."""
    saved = load_model(layout.model)
    test = read_split(layout.prepared, "test")
    normalization = read_normalization(layout.prepared)
    destination = onnx_model(layout)
    graph = export_onnx(saved, test.images.shape[1:], cfg.opset,
                        {SOURCE_SHA256: file_digest(layout.model, "sha256"),
                         CLASS_NAMES: json.dumps(list(saved.dataset.class_names))})
    agreement = compare(OnnxModel(graph, destination), saved, test, normalization)
    if not agreement.ok:
        raise StageError(f"{destination}: not written: onnxruntime and PyTorch disagree: "
                         f"{agreement.summary()}")
    write_bytes_atomic(destination, graph)
    print(f"export: {destination} ({len(graph) / 1000:.0f} kB, opset {cfg.opset}); "
          f"onnxruntime against PyTorch: {agreement.summary()}")
    return agreement


if __name__ == "__main__":
    run_stage(main, __doc__)

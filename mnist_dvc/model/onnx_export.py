"""The trained model as ONNX, and the check that onnxruntime computes what PyTorch does.

The graph holds the input normalization, so a caller passes plain pixels (``byte / 255``,
light digits on dark) and needs nothing of this project; the batch size is dynamic. torch's
dynamo exporter (``torch.onnx.export(..., dynamo=True)``, the default since torch 2.9)
traces the net with ``torch.export`` and translates it with onnxscript.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx
import torch
from torch import nn

from mnist_dvc.data.prepared import Normalization, PreparedSplit
from mnist_dvc.errors import StageError
from mnist_dvc.model.nets import SavedModel, predict_log_probs
from mnist_dvc.model.onnx_runtime import INPUT, OUTPUT, OnnxModel

# Measured on the default model over the 10,000 test images: log-probabilities differ by at
# most 4.3e-6 and no digit changes. A wrong graph (a lost normalization, other weights) is
# off by far more than the tolerance.
SCORE_ATOL = 1e-4
SCORE_RTOL = 1e-4  # of the score: log-probabilities near -50 carry larger rounding errors
# At most one digit in 10,000 may differ, where two classes' scores tie within the tolerance.
DISAGREEMENTS_PER_10K = 1
SCORE_BATCH_SIZE = 1000


class PixelsModel(nn.Module):
    """A trained net behind its normalization: pixels in [0, 1] in, log-probabilities out."""

    def __init__(self, net: nn.Module, normalization: Normalization) -> None:
        super().__init__()
        self.net = net
        self.mean, self.std = normalization

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net((pixels - self.mean) / self.std)  # preprocess's order: - mean, / std


def export_onnx(saved: SavedModel, image_shape: tuple[int, ...], opset: int,
                metadata: dict[str, str]) -> bytes:
    """``saved`` as an ONNX model (bytes) taking (N, *image_shape) pixels, any N."""
    model = PixelsModel(saved.model, saved.normalization).eval()
    example = torch.zeros(2, *image_shape)  # a batch of 1 would be specialized to 1
    try:
        program = torch.onnx.export(
            model, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
            dynamic_shapes=({0: "batch"},), opset_version=opset, verbose=False)
    except Exception as err:  # torch.export and onnxscript raise many kinds
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StageError(f"cannot export net '{saved.net}' to ONNX opset {opset}: "
                         f"{reason[:200]}") from None
    if program is None:  # only the legacy exporter, writing to a file, returns None
        raise StageError("torch.onnx.export returned no program")
    proto = program.model_proto
    written = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    if written != opset:  # the exporter falls back to its own opset when it cannot convert
        raise StageError(f"cannot export net '{saved.net}' to ONNX opset {opset}: the exporter "
                         f"wrote opset {written} (the installed onnx {onnx.__version__} knows "
                         f"opsets up to {onnx.defs.onnx_opset_version()})")
    # the exporter notes each node's Python stack trace: absolute paths of this checkout,
    # which would make the bytes depend on where the project lives
    for node in [*proto.graph.node, *(n for f in proto.functions for n in f.node)]:
        del node.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


class Agreement(NamedTuple):
    """How an exported model's scores compare with PyTorch's on the same images."""

    images: int
    same_digit: int
    max_difference: float  # the largest |onnx - torch| log-probability
    within_tolerance: bool  # every score within SCORE_ATOL + SCORE_RTOL * |torch|

    @property
    def allowed_disagreements(self) -> int:
        return self.images * DISAGREEMENTS_PER_10K // 10_000

    @property
    def ok(self) -> bool:
        return self.within_tolerance and \
            self.images - self.same_digit <= self.allowed_disagreements

    def summary(self) -> str:
        return (f"the same digit on {self.same_digit:,} of {self.images:,} test images "
                f"({self.images - self.allowed_disagreements:,} needed), log-probabilities "
                f"apart by up to {self.max_difference:.2g} (tolerance {SCORE_ATOL:g} + "
                f"{SCORE_RTOL:g} x |score|)")


def compare(exported: OnnxModel, saved: SavedModel, test: PreparedSplit,
            normalization: Normalization) -> Agreement:
    """Score the prepared ``test`` images with PyTorch, and the same images as pixels (the
    normalization undone) with ``exported``: the whole path a caller takes, normalization included.
    """
    expected = predict_log_probs(saved.model, torch.from_numpy(np.asarray(test.images)),
                                 SCORE_BATCH_SIZE).numpy()
    pixels = test.images * np.float32(normalization.std) + np.float32(normalization.mean)
    actual = exported.log_probs(pixels, SCORE_BATCH_SIZE)
    if actual.shape != expected.shape:
        raise StageError(f"the ONNX model returns scores of shape {actual.shape[1:]}, "
                         f"PyTorch {expected.shape[1:]}")
    alone = exported.log_probs(pixels[:1], batch_size=1)  # the batch size is dynamic: try one
    reference = np.concatenate([expected, expected[:1]])
    difference = np.abs(np.concatenate([actual, alone]) - reference)
    return Agreement(
        images=len(expected),
        same_digit=int((actual.argmax(1) == expected.argmax(1)).sum()),
        max_difference=float(np.nan_to_num(difference, nan=np.inf).max()),
        within_tolerance=bool(np.all(difference <= SCORE_ATOL + SCORE_RTOL * np.abs(reference))),
    )

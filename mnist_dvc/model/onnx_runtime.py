"""The exported model run by onnxruntime: predictions without importing torch.

``data/onnx/model.onnx`` (written by the export stage, mnist_dvc/model/onnx_export.py) takes
``pixels``, float32 (N, 1, H, W) with values in [0, 1], light digits on dark as MNIST holds
them (``byte / 255``), and returns ``log_probs``, float32 (N, classes): the log-probabilities
the PyTorch model returns. The normalization is inside the graph; the class names are in its
metadata. Importing onnxruntime costs about 0.1 s where torch costs seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime

from mnist_dvc.data.spec import MNIST, check_class_names
from mnist_dvc.errors import StageError, corrupt_file, os_error

INPUT = "pixels"
OUTPUT = "log_probs"
# The sha256 of the model.pt it was exported from, in the graph's metadata: predict uses
# the ONNX model only while it still matches the trained model.
SOURCE_SHA256 = "mnist_dvc.source_sha256"
CLASS_NAMES = "mnist_dvc.class_names"  # a JSON list: label k is the k-th name
BATCH_SIZE = 1000


class OnnxModel:
    """An onnxruntime session on an exported model, checked to take pixels and give scores."""

    def __init__(self, model: bytes, source: object = "model.onnx") -> None:
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: warnings would break one-line output
        try:
            self.session = onnxruntime.InferenceSession(
                model, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # InvalidProtobuf, Fail, InvalidGraph: no common base
            raise corrupt_file(source, err) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT] or [o.name for o in outputs] != [OUTPUT]:
            raise StageError(f"{source}: not a model written by the export stage "
                             f"(it takes {INPUT!r} and returns {OUTPUT!r})")
        self.image_shape = tuple(inputs[0].shape[1:])
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.class_names = read_class_names(self.metadata)
        except (ValueError, TypeError) as err:
            raise StageError(f"{source}: its class names are malformed ({err})") from None

    @classmethod
    def load(cls, path: Path) -> OnnxModel:
        """The model in the file at ``path``; any failure to read it is one line."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StageError(f"{path}: file not found (run the stage that makes it: "
                             "dvc repro)") from None
        except IsADirectoryError:
            raise StageError(f"{path}: is a directory, not a file") from None
        except OSError as err:
            raise os_error("read", path, err) from None
        return cls(data, path)

    def log_probs(self, pixels: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """float32 (N, classes) for float32 ``pixels`` (N, 1, H, W) in [0, 1], in batches."""
        batches = [self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(
            pixels[start:start + batch_size], dtype=np.float32)})[0]
            for start in range(0, len(pixels), batch_size)]
        return np.concatenate(batches)

    @property
    def input_shape(self) -> tuple[int, int]:
        """(height, width) of the images it takes."""
        _, height, width = self.image_shape
        return int(height), int(width)

    @property
    def source_sha256(self) -> str | None:
        """The sha256 of the model.pt it was exported from, as the export stage recorded it."""
        return self.metadata.get(SOURCE_SHA256)


def read_class_names(metadata: dict[str, str]) -> tuple[str, ...]:
    """The class names the export stage recorded; a model exported before it recorded them
    is an MNIST model."""
    if CLASS_NAMES not in metadata:
        return MNIST.class_names
    names = json.loads(metadata[CLASS_NAMES])
    check_class_names(names)
    return tuple(names)


def pixels_of(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) as the model takes them: float32 (N, 1, H, W), ``byte / 255``."""
    pixels = images[:, np.newaxis].astype(np.float32)
    pixels /= 255
    return pixels

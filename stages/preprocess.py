"""Stage 2, preprocess: parse and validate the IDX files, cache normalized arrays.

Writes ``data/prepared/{train,test}_{images,labels}.npy`` (format: mnist_dvc/data/prepared.py), with
images mapped exactly as torchvision's ``ToTensor()`` then ``Normalize(mean, std)`` would map
them, so training needs no per-item transform, and ``normalization.json`` beside them. Runs
without importing torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_dvc.config.preprocess import PreprocessConfig, PreprocessParams
from mnist_dvc.config.schema import load_config
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.idx import read_idx
from mnist_dvc.data.mnist import CANONICAL_FILES, verify_raw_dir
from mnist_dvc.data.prepared import (
    SPLITS,
    Normalization,
    normalize,
    write_normalization,
    write_split,
)
from mnist_dvc.errors import StageError, run_stage

IDX_PREFIX = {"train": "train", "test": "t10k"}


def main(layout: Layout = Layout()) -> None:
    params = load_config(layout.params, PreprocessConfig).preprocess
    # A flipped bit in a pixel still parses: only the md5 can tell.
    verify_raw_dir(layout.raw, CANONICAL_FILES)
    # Check every split before writing any: a bad test file must not leave a new train split
    # beside the old test split.
    prepared = {split: prepare_split(layout.raw, split, params) for split in SPLITS}
    for split, (images, labels) in prepared.items():
        write_split(layout.prepared, split, images, labels)
        print(f"preprocess: wrote the {split} split ({len(labels)} images) to {layout.prepared}")
    write_normalization(layout.prepared, Normalization(params.mean, params.std))


def prepare_split(raw_dir: Path, split: str,
                  params: PreprocessParams) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one split's IDX files; return (normalized images, labels)."""
    prefix = IDX_PREFIX[split]
    images = read_idx(raw_dir / f"{prefix}-images-idx3-ubyte", 3, (28, 28))
    labels = read_idx(raw_dir / f"{prefix}-labels-idx1-ubyte", 1)
    if len(images) != len(labels):
        raise StageError(f"{raw_dir}: {split} has {len(images)} images but {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise StageError(f"{raw_dir / f'{prefix}-labels-idx1-ubyte'}: label {labels.max()} "
                         "is not a digit 0-9")
    return normalize(images, params.mean, params.std), labels.astype(np.int64)


if __name__ == "__main__":
    run_stage(main, __doc__)

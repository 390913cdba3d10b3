"""Stage 2, preprocess: check and parse the IDX files, cache normalized arrays.

The files in data/raw/ must have the size and md5 the download stage recorded in
``data/raw/dataset.json`` (for MNIST, the canonical ones), and their image shape and labels
must agree with the dataset's spec there. Writes ``data/prepared/{train,test}_{images,labels}.npy``
(format: mnist_dvc/data/prepared.py), with images mapped exactly as torchvision's
``ToTensor()`` then ``Normalize(mean, std)`` would map them, so training needs no per-item
transform; ``normalization.json`` (the mean and std used) and ``dataset.json`` (the spec,
with that normalization) beside them. Runs without importing torch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from mnist_dvc.config.preprocess import PreprocessConfig, PreprocessParams
from mnist_dvc.config.schema import load_config
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.idx import read_idx
from mnist_dvc.data.prepared import SPLITS, normalize, write_normalization, write_split
from mnist_dvc.data.spec import DatasetSpec, Normalization, verify_raw_dir, write_dataset
from mnist_dvc.errors import StageError, run_stage


def main(layout: Layout = Layout()) -> None:
    params = load_config(layout.params, PreprocessConfig).preprocess
    spec = verify_raw_dir(layout.raw)
    # Check every split before writing any: a bad test file must not leave a new train split
    # beside the old test split.
    raw = {split: read_raw_split(layout.raw, split, spec) for split in SPLITS}
    normalization = choose_normalization(params, spec, raw["train"][0])
    for split, (images, labels) in raw.items():
        write_split(layout.prepared, split, normalize(images, *normalization), labels)
        print(f"preprocess: wrote the {split} split ({len(labels)} images) to {layout.prepared}")
    write_normalization(layout.prepared, normalization)
    write_dataset(layout.prepared, dataclasses.replace(spec, normalization=normalization),
                  files=False)
    print(f"preprocess: {spec.describe()}, normalized with mean {normalization.mean:.6g}, "
          f"std {normalization.std:.6g}")


def read_raw_split(raw_dir: Path, split: str, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one split's IDX files: (uint8 images N x H x W, int64 labels)."""
    images_name, labels_name = spec.split_files[split]
    images = read_idx(raw_dir / images_name, 3, spec.image_shape)
    labels = read_idx(raw_dir / labels_name, 1)
    if len(images) != len(labels):
        raise StageError(f"{raw_dir}: {split} has {len(images)} images but {len(labels)} labels")
    if labels.size and labels.max() >= spec.num_classes:
        raise StageError(f"{raw_dir / labels_name}: label {labels.max()} is not a class of "
                         f"{spec.name} (0-{spec.num_classes - 1})")
    return images, labels.astype(np.int64)


def choose_normalization(params: PreprocessParams, spec: DatasetSpec,
                         train_images: np.ndarray) -> Normalization:
    """``preprocess.mean`` and ``std`` where set; each one left empty is the dataset's own:
    its published value, else the training pixels' (``pixel / 255``)."""
    own = spec.normalization or measure_normalization(train_images)
    mean = own.mean if params.mean is None else params.mean
    std = own.std if params.std is None else params.std
    return Normalization(mean, std)


def measure_normalization(images: np.ndarray) -> Normalization:
    """The mean and standard deviation of all the pixels of ``images``, over 255 (from a
    histogram of the byte values: no float copy of the images)."""
    counts = np.bincount(images.reshape(-1), minlength=256).astype(np.float64)
    levels = np.arange(len(counts), dtype=np.float64)
    mean = float(counts @ levels / counts.sum())
    std = float(np.sqrt(counts @ (levels - mean) ** 2 / counts.sum()))
    if std == 0:
        raise StageError(f"the training images are all one grey level ({mean:g}): there is "
                         "nothing to learn from them")
    return Normalization(mean / 255, std / 255)


if __name__ == "__main__":
    run_stage(main, __doc__)

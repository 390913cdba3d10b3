"""Stage 1, download: put the dataset's four IDX files in data/raw/, verified, with its spec.

``download.dataset: mnist`` fetches the canonical MNIST files from the sources
``download.sources`` lists, each md5-verified; ``idx`` takes the user's own four IDX files
from ``download.local_path``, checked for structure (mnist_dvc/data/sources.py). Either way
the stage ends by writing ``data/raw/dataset.json``: the dataset's spec (name, image shape,
class names, normalization) and each file's size and md5, which preprocess checks the files
against and takes the shape and classes from.
"""

from __future__ import annotations

from mnist_dvc.config.download import DownloadConfig
from mnist_dvc.config.schema import load_config
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.sources import fetch_dataset
from mnist_dvc.data.spec import write_dataset
from mnist_dvc.errors import run_stage


def main(layout: Layout = Layout()) -> None:
    spec = fetch_dataset(layout.raw, load_config(layout.params, DownloadConfig).download)
    write_dataset(layout.raw, spec)


if __name__ == "__main__":
    run_stage(main, __doc__)

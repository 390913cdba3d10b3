"""``python -m mnist_dvc``: the same as the ``mnist-dvc`` command."""

from mnist_dvc.cli import main

main()

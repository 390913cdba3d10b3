"""The DVC stages, each run by dvc.yaml as ``python -m stages.<name>``: a thin ``main`` over
the ``mnist_dvc`` library. Nothing else lives here."""

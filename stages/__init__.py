"""mnist-dvc's code.

The DVC stages, each run by dvc.yaml as ``python -m stages.<name>``, each a thin ``main``:
``download``, ``preprocess``, ``train``, ``evaluate``. Commands beside the pipeline:
``predict`` (use the model), ``share`` (``make push``), ``review`` (``make review``).
Everything else is the library they share (CONTRIBUTING.md says what each module holds).
"""

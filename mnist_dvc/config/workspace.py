"""Where everything lives: one object for every path the stages read and write.

dvc.yaml declares the same paths as deps and outs (tests/test_dvc_yaml.py checks it). Stages
take a ``Layout`` so that tests can point a whole run at a temporary directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    # --- DVC outputs, cached (data/ is git-ignored) ---------------------------------------
    @property
    def raw(self) -> Path:
        """download: the four canonical MNIST IDX files."""
        return self.root / "data" / "raw"

    @property
    def prepared(self) -> Path:
        """preprocess: normalized arrays (mnist_dvc/data/prepared.py) and their normalization."""
        return self.root / "data" / "prepared"

    @property
    def model_dir(self) -> Path:
        """train: the model and the final training state."""
        return self.root / "data" / "model"

    @property
    def model(self) -> Path:
        return self.model_dir / "model.pt"

    @property
    def checkpoint(self) -> Path:
        """The final training state: model, optimizer, schedule and generators."""
        return self.model_dir / "checkpoint.pt"

    # --- DVC metrics and plots, committed to git (cache: false) ---------------------------
    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def train_metrics(self) -> Path:
        return self.metrics / "train.json"

    @property
    def train_history(self) -> Path:
        return self.metrics / "train_history.csv"

    @property
    def train_steps(self) -> Path:
        return self.metrics / "train_steps.csv"

    @property
    def eval_metrics(self) -> Path:
        return self.metrics / "eval.json"

    @property
    def predictions(self) -> Path:
        """evaluate: one row per test image, for the confusion matrix and for review."""
        return self.metrics / "predictions.csv"

    @property
    def per_class(self) -> Path:
        return self.metrics / "per_class.csv"

    @property
    def misclassified(self) -> Path:
        return self.metrics / "misclassified.png"

    # --- neither git nor DVC ---------------------------------------------------------------
    @property
    def resume(self) -> Path:
        """train: the state of an unfinished run, kept until it completes (git- and
        dvc-ignored, never a DVC output, so every stage stays run-cacheable)."""
        return self.root / "data" / "resume"

"""Where each stage reads and writes; dvc.yaml declares the same paths as deps and outs."""

from pathlib import Path

RAW_DIR = Path("data/raw")
PREPARED_DIR = Path("data/prepared")
MODEL_FILE = Path("data/model/model.pt")
CHECKPOINT_FILE = Path("data/checkpoints/last.pt")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_HISTORY = Path("metrics/train_history.csv")
EVAL_METRICS = Path("metrics/eval.json")
CONFUSION = Path("metrics/confusion.csv")
PER_CLASS = Path("metrics/per_class.csv")
MISCLASSIFIED = Path("metrics/misclassified.png")

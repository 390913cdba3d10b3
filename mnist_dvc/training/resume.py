"""Training state on disk: the resume state of an unfinished run, and the final checkpoint.

After every epoch the train stage saves its whole state (``Trainer.state_dict`` plus the
history) under ``data/resume/``, named by the run's fingerprint: a hash of the train and
model params, the prepared data and the code. A killed run rerun with the same fingerprint
continues after its last complete epoch and ends with the same bytes as an uninterrupted
run. The state is deleted once the run's outputs are written. It is no DVC output (DVC
never run-caches a stage with a ``persist`` output, and deletes plain ones before running
the stage), and it is git- and dvc-ignored.

The final checkpoint, ``data/model/checkpoint.pt``, is the same record for the finished run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

from mnist_dvc.code_deps import code_digest
from mnist_dvc.config.train import TrainConfig
from mnist_dvc.errors import StageError, os_error
from mnist_dvc.model.nets import CHECKPOINT_KIND
from mnist_dvc.model.torch_files import torch_load_verified, torch_save_verified


def run_fingerprint(params: TrainConfig, device: torch.device, *data_digests: str) -> str:
    """Identifies everything a run's numbers depend on: params, the device they ran on (not
    just ``auto``), torch's version, data and code."""
    described = {"train": dataclasses.asdict(params.train), "model": params.model.net,
                 "device": device.type, "torch": torch.__version__,
                 "data": data_digests, "code": code_digest("stages.train")}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def training_record(fingerprint: str, history: list[dict[str, float]],
                    trainer_state: dict[str, Any],
                    steps: list[tuple[float, ...]] | None = None) -> dict[str, Any]:
    """``steps``: the rows of train_steps.csv so far, kept so a resumed run writes them all."""
    return {"kind": CHECKPOINT_KIND, "fingerprint": fingerprint, "history": history,
            "steps": steps or [], "trainer": trainer_state}


class ResumeStore:
    """The resume state of the run with ``fingerprint``, in ``directory``."""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory = directory
        self.fingerprint = fingerprint
        self.path = directory / f"train-{fingerprint[:16]}.pt"

    def load(self) -> dict[str, Any] | None:
        """This run's saved state, if any; any other run's is deleted."""
        for other in sorted(self.directory.glob("train-*.pt")):
            if other != self.path:
                print(f"train: dropping {other}, the unfinished run of other params, data or "
                      "code", file=sys.stderr)
                self._remove(other)
        if not self.path.exists():
            return None
        try:
            record = torch_load_verified(self.path)
            if not (isinstance(record, dict) and record.get("kind") == CHECKPOINT_KIND
                    and record.get("fingerprint") == self.fingerprint):
                raise StageError(f"{self.path}: not a training state of this run")
        except StageError as err:
            print(f"train: cannot resume ({err}); dropped it, training from scratch",
                  file=sys.stderr)
            self._remove(self.path)
            return None
        return record

    def save(self, record: dict[str, Any]) -> None:
        torch_save_verified(self.path, record)

    def clear(self) -> None:
        self._remove(self.path)

    @staticmethod
    def _remove(path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            raise StageError(f"{path}: a directory where a training state belongs") from None
        except OSError as err:
            raise os_error("remove", path, err) from None

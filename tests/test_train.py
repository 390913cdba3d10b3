"""The train stage on small synthetic data: outputs, determinism, resume, failure handling."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import stages.train as train_module
from stages.errors import StageError
from stages.model import load_model
from stages.params import Params
from stages.prepared import write_split
from stages.preprocess import prepare_split
from stages.train import Paths, set_aside_path, train
from tests.conftest import with_train


def file_hashes(paths: Paths) -> dict[str, str]:
    return {name: hashlib.sha256(Path(p).read_bytes()).hexdigest()
            for name, p in (("model", paths.model), ("metrics", paths.metrics),
                            ("history", paths.history), ("checkpoint", paths.checkpoint))}


@pytest.fixture
def prepared_dir(raw_dir: Path, tiny_params: Params) -> Path:
    prepared = raw_dir.parent / "prepared"
    for split in ("train", "test"):
        write_split(prepared, split, *prepare_split(raw_dir, split, tiny_params.preprocess))
    return prepared


def run_paths(root: Path, prepared: Path) -> Paths:
    return Paths(prepared=prepared, model=root / "model" / "model.pt",
                 checkpoint=root / "checkpoints" / "last.pt",
                 metrics=root / "metrics" / "train.json",
                 history=root / "metrics" / "history.csv")


def test_training_learns_and_writes_every_output(tmp_path, prepared_dir, tiny_params):
    paths = run_paths(tmp_path / "run", prepared_dir)
    history = train(with_train(tiny_params, epochs=3), paths)

    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["test_acc"] > 0.9  # the synthetic digits are easy: it must learn them
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    metrics = json.loads(paths.metrics.read_text())
    assert metrics == {k: (v if k == "epoch" else round(v, 6)) for k, v in history[-1].items()}
    assert paths.history.read_text().splitlines()[0] == \
        "epoch,train_loss,train_acc,test_loss,test_acc"
    assert len(paths.history.read_text().splitlines()) == 4
    _, saved = load_model(paths.model)
    assert saved["net"] == "compact" and saved["mean"] == tiny_params.preprocess.mean


def test_same_params_give_bit_identical_outputs(tmp_path, prepared_dir, tiny_params):
    first, second = (run_paths(tmp_path / name, prepared_dir) for name in ("a", "b"))
    train(tiny_params, first)
    train(tiny_params, second)
    assert file_hashes(first) == file_hashes(second)

    other_seed = run_paths(tmp_path / "c", prepared_dir)
    train(with_train(tiny_params, seed=2), other_seed)
    assert file_hashes(other_seed)["model"] != file_hashes(first)["model"]


@pytest.mark.parametrize("changes", [
    {"optimizer": "sgd", "momentum": 0.5, "schedule": "constant"},
    {"optimizer": "sgd", "schedule": "step", "step_gamma": 0.5},
    {"optimizer": "adam", "weight_decay": 1e-4},
])
def test_each_optimizer_and_schedule_trains(tmp_path, prepared_dir, tiny_params, changes):
    history = train(with_train(tiny_params, epochs=2, **changes),
                    run_paths(tmp_path, prepared_dir))
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_step_schedule_decays_lr_each_epoch(tiny_params):
    cfg = with_train(tiny_params, optimizer="sgd", schedule="step", step_gamma=0.5, lr=0.1).train
    model = torch.nn.Linear(2, 2)
    optimizer = train_module.make_optimizer(model, cfg)
    scheduler = train_module.make_scheduler(optimizer, cfg, steps_per_epoch=10)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


def test_seed_net_trains(tmp_path, prepared_dir, tiny_params):
    params = Params(preprocess=tiny_params.preprocess, train=tiny_params.train,
                    model=type(tiny_params.model)(net="seed"))
    paths = run_paths(tmp_path, prepared_dir)
    train(params, paths)
    _, saved = load_model(paths.model)
    assert saved["net"] == "seed"


def test_interrupted_run_resumes_to_identical_result(tmp_path, prepared_dir, tiny_params,
                                                      monkeypatch, capsys):
    params = with_train(tiny_params, epochs=3)
    clean = run_paths(tmp_path / "clean", prepared_dir)
    train(params, clean)

    resumed = run_paths(tmp_path / "resumed", prepared_dir)
    real_epoch = train_module.train_one_epoch
    calls = []

    def interrupt_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", interrupt_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(params, resumed)
    assert not resumed.model.exists()
    assert json.loads(resumed.metrics.read_text())["epoch"] == 1

    monkeypatch.setattr(train_module, "train_one_epoch", real_epoch)
    calls.clear()
    train(params, resumed)
    assert "resuming from" in capsys.readouterr().out
    assert file_hashes(resumed) == file_hashes(clean)


def test_checkpoint_of_other_params_is_set_aside(tmp_path, prepared_dir, tiny_params, capsys):
    paths = run_paths(tmp_path, prepared_dir)
    train(tiny_params, paths)
    first_checkpoint = paths.checkpoint.read_bytes()

    history = train(with_train(tiny_params, lr=0.02), paths)
    err = capsys.readouterr().err
    assert "not resuming" in err and "other params" in err
    aside = paths.checkpoint.parent.with_name("checkpoints.set-aside") / "last.pt.stale"
    assert aside.read_bytes() == first_checkpoint
    assert f"moved it to {aside}" in err
    assert len(history) == 1  # trained from scratch, not continued
    # the DVC output holds the new checkpoint only
    assert [p.name for p in paths.checkpoint.parent.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("damage", ["truncate", "bit flip", "garbage", "foreign"])
def test_damaged_checkpoint_is_set_aside_and_training_restarts(tmp_path, prepared_dir,
                                                               tiny_params, capsys, damage):
    clean = run_paths(tmp_path / "clean", prepared_dir)
    train(tiny_params, clean)
    paths = run_paths(tmp_path / "damaged", prepared_dir)
    paths.checkpoint.parent.mkdir(parents=True)
    good = clean.checkpoint.read_bytes()
    if damage == "truncate":
        paths.checkpoint.write_bytes(good[: len(good) // 2])
    elif damage == "bit flip":  # in tensor data: torch.load alone would not notice
        flipped = bytearray(good)
        flipped[len(good) // 2] ^= 0x01
        paths.checkpoint.write_bytes(bytes(flipped))
    elif damage == "garbage":
        paths.checkpoint.write_bytes(b"\x00not a checkpoint" * 100)
    else:  # a valid torch file, but not a checkpoint of ours
        torch.save({"weights": torch.zeros(3)}, paths.checkpoint)

    train(tiny_params, paths)
    assert "not resuming" in capsys.readouterr().err
    aside = paths.checkpoint.parent.with_name("checkpoints.set-aside") / "last.pt.corrupt"
    assert aside.exists()
    assert set_aside_path(paths.checkpoint, ".corrupt") == aside
    assert [p.name for p in paths.checkpoint.parent.iterdir()] == ["last.pt"]
    assert file_hashes(paths) == file_hashes(clean)


def test_failed_run_keeps_previous_metrics(tmp_path, prepared_dir, tiny_params):
    paths = run_paths(tmp_path, prepared_dir)
    train(tiny_params, paths)
    before = paths.metrics.read_bytes(), paths.history.read_bytes()

    (prepared_dir / "test_images.npy").unlink()
    with pytest.raises(StageError, match=r"test_images\.npy: file not found"):
        train(with_train(tiny_params, lr=0.02), paths)
    assert (paths.metrics.read_bytes(), paths.history.read_bytes()) == before


def test_without_a_terminal_each_epoch_is_one_clean_line(tmp_path, prepared_dir, tiny_params,
                                                         capsys):
    train(with_train(tiny_params, epochs=2), run_paths(tmp_path, prepared_dir))
    out = capsys.readouterr().out
    assert "\r" not in out  # no progress bar redraws in CI logs
    lines = out.splitlines()
    assert [line.split(" loss")[0] for line in lines] == ["train: epoch 1/2", "train: epoch 2/2"]

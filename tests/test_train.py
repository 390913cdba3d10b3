"""The train stage on small synthetic data: outputs, determinism, resume, failure handling."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mnist_dvc.config.params import Params, with_train
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.prepared import (
    Normalization,
    read_normalization,
    read_split,
    write_normalization,
    write_split,
)
from mnist_dvc.data.spec import DatasetSpec, read_dataset, write_dataset
from mnist_dvc.errors import StageError
from mnist_dvc.model.nets import CHECKPOINT_KIND, load_model
from mnist_dvc.model.torch_files import torch_load_verified
from mnist_dvc.runtime import to_device
from mnist_dvc.training.resume import ResumeStore
from mnist_dvc.training.trainer import (
    Trainer,
    make_optimizer,
    make_scheduler,
    shifted,
    smoothed_nll,
)
from stages import train as train_stage
from stages.train import train
from tests.conftest import write_params

OUTPUTS = ("model", "checkpoint", "train_metrics", "train_history", "train_steps")


def output_hashes(layout: Layout) -> dict[str, str]:
    return {name: hashlib.sha256(getattr(layout, name).read_bytes()).hexdigest()
            for name in OUTPUTS}


def project_like(project: Layout, root: Path, params: Params) -> Layout:
    """Another project on the same prepared data, with ``params``."""
    layout = Layout(root)
    layout.root.mkdir(parents=True)
    (layout.root / "data").mkdir()
    layout.prepared.symlink_to(project.prepared.resolve())
    write_params(layout.params, params)
    return layout


def test_training_learns_and_writes_every_output(project, tiny_params):
    params = with_train(tiny_params, epochs=3)
    history = train(params, project)

    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["test_acc"] > 0.9  # the synthetic digits are easy: it must learn them
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert json.loads(project.train_metrics.read_text()) == {
        "epoch": 3, "epochs": 3, "train_loss": round(history[-1]["train_loss"], 6),
        "train_acc": round(history[-1]["train_acc"], 6)}
    lines = project.train_history.read_text().splitlines()
    assert lines[0] == "epoch,train_loss,train_acc,test_loss,test_acc" and len(lines) == 4
    saved = load_model(project.model)
    assert saved.net == "compact"
    assert saved.normalization == read_normalization(project.prepared)
    dataset = read_dataset(project.prepared)  # the shape and classes it was trained for
    assert (saved.dataset.image_shape, saved.dataset.class_names) == (dataset.image_shape,
                                                                      dataset.class_names)
    checkpoint = torch_load_verified(project.checkpoint)
    assert checkpoint["kind"] == CHECKPOINT_KIND and checkpoint["history"] == history
    assert not list(project.resume.iterdir())  # the unfinished-run state is gone


def test_the_step_curve_adds_up_to_each_epochs_training_numbers(project, tiny_params,
                                                                 monkeypatch):
    monkeypatch.setattr(train_stage, "STEP_WINDOW", 3)
    history = train(with_train(tiny_params, epochs=2), project)  # 512 images: 8 steps an epoch
    steps = pd.read_csv(project.train_steps)
    assert list(steps.columns) == list(train_stage.STEP_COLUMNS)
    assert steps.step.tolist() == [3, 6, 8, 11, 14, 16]  # the epoch's last window is shorter
    assert steps.epoch.tolist() == pytest.approx([step / 8 for step in steps.step], abs=1e-6)
    images = np.diff([0, *steps.step]) * 64  # every batch of 64: 512 is a multiple
    for epoch, row in enumerate(history, start=1):
        rows = (steps.step > (epoch - 1) * 8) & (steps.step <= epoch * 8)
        for column in ("train_loss", "train_acc"):
            mean = np.average(steps[column][rows], weights=images[rows])
            assert mean == pytest.approx(row[column], abs=1e-5), column
    checkpoint = torch_load_verified(project.checkpoint)
    assert [step for step, *_ in checkpoint["steps"]] == steps.step.tolist()


def test_the_step_curve_changes_neither_the_weights_nor_the_random_streams(project,
                                                                           tiny_params):
    data = to_device(read_split(project.prepared, "train"), torch.device("cpu"))
    runs = []
    for hook in (None, lambda done, stats: None):
        trainer = Trainer(tiny_params.train, "compact", data, torch.device("cpu"))
        trainer.run_epoch(on_window=hook, window=2)
        runs.append(trainer.state_dict())
    logged, plain = runs
    for key in ("rng_shuffle", "rng_augment"):
        assert torch.equal(logged[key], plain[key])
    assert torch.equal(logged["rng_global"][0], plain["rng_global"][0])
    for name, tensor in plain["model"].items():
        assert torch.equal(logged["model"][name], tensor), name


def test_the_model_keeps_the_normalization_preprocess_wrote_not_params(project, tiny_params):
    changed = Params(preprocess=type(tiny_params.preprocess)(mean=0.5, std=0.5),
                     train=tiny_params.train, model=tiny_params.model)
    train(changed, project)
    assert load_model(project.model).normalization == (0.1307, 0.3081)


def test_same_params_give_bit_identical_outputs(project, tiny_params, tmp_path):
    other = project_like(project, tmp_path / "other", tiny_params)
    train(tiny_params, project)
    train(tiny_params, other)
    assert output_hashes(project) == output_hashes(other)

    reseeded = project_like(project, tmp_path / "reseeded", tiny_params)
    train(with_train(tiny_params, seed=2), reseeded)
    assert output_hashes(reseeded)["model"] != output_hashes(project)["model"]


@pytest.mark.parametrize("changes", [
    {"optimizer": "sgd", "momentum": 0.5, "schedule": "constant"},
    {"optimizer": "sgd", "schedule": "step", "step_gamma": 0.5},
    {"optimizer": "adam", "weight_decay": 1e-4},
])
def test_each_optimizer_and_schedule_trains(project, tiny_params, changes):
    history = train(with_train(tiny_params, epochs=2, **changes), project)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_step_schedule_decays_lr_each_epoch(tiny_params):
    cfg = with_train(tiny_params, optimizer="sgd", schedule="step", step_gamma=0.5, lr=0.1).train
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=10)
    assert scheduler is not None
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


def test_seed_net_trains(project, tiny_params):
    params = Params(train=tiny_params.train, model=type(tiny_params.model)(net="seed"))
    train(params, project)
    assert load_model(project.model).net == "seed"


def interrupted(params: Params, layout: Layout) -> Path:
    """Run ``params`` with Ctrl-C in its second epoch; the resume state it leaves behind."""
    real = Trainer.run_epoch
    calls = []

    def run_epoch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "run_epoch", run_epoch)
        with pytest.raises(KeyboardInterrupt):
            train(params, layout)
    (state,) = layout.resume.iterdir()
    return state


def test_interrupted_run_resumes_to_identical_result(project, tiny_params, tmp_path, capsys):
    params = with_train(tiny_params, epochs=3)
    clean = project_like(project, tmp_path / "clean", params)
    train(params, clean)

    state = interrupted(params, project)
    assert not project.model.exists() and not project.checkpoint.exists()
    live = json.loads(project.train_metrics.read_text())
    assert (live["epoch"], live["epochs"]) == (1, 3)  # reads as unfinished
    capsys.readouterr()
    train(params, project)
    out = capsys.readouterr().out
    assert f"train: resuming from {state} after epoch 1" in out
    assert "epoch 1/3" not in out  # the completed epoch was not trained again
    assert output_hashes(project) == output_hashes(clean)
    assert not list(project.resume.iterdir())


def test_a_finished_state_left_behind_only_writes_the_outputs(project, tiny_params, capsys):
    train(tiny_params, project)
    clean = output_hashes(project)
    # what a run killed after its last epoch, before its outputs, leaves behind
    record = torch_load_verified(project.checkpoint)
    state = ResumeStore(project.resume, record["fingerprint"]).path
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_bytes(project.checkpoint.read_bytes())
    for name in OUTPUTS:
        getattr(project, name).unlink()
    capsys.readouterr()

    history = train(tiny_params, project)
    assert capsys.readouterr().out == f"train: resuming from {state} after epoch 1\n"
    assert len(history) == 1
    assert output_hashes(project) == clean


def test_state_of_other_params_is_dropped_with_one_line(project, tiny_params, capsys):
    left = interrupted(with_train(tiny_params, epochs=2), project)
    capsys.readouterr()

    history = train(with_train(tiny_params, epochs=2, lr=0.02), project)
    err = capsys.readouterr().err
    assert err == f"train: dropping {left}, the unfinished run of other params, data or code\n"
    assert [row["epoch"] for row in history] == [1, 2]  # from scratch, not continued
    assert not list(project.resume.iterdir())


def test_a_normal_run_prints_nothing_about_resume_state(project, tiny_params, capsys):
    train(tiny_params, project)
    train(with_train(tiny_params, lr=0.02), project)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("damage", ["truncate", "bit flip", "garbage", "foreign"])
def test_damaged_state_is_dropped_and_training_restarts(project, tiny_params, tmp_path,
                                                         capsys, damage):
    params = with_train(tiny_params, epochs=2)
    clean = project_like(project, tmp_path / "clean", params)
    train(params, clean)
    state = interrupted(params, project)
    good = state.read_bytes()
    if damage == "truncate":
        state.write_bytes(good[: len(good) // 2])
    elif damage == "bit flip":  # in tensor data: torch.load alone would not notice
        flipped = bytearray(good)
        flipped[len(good) // 2] ^= 0x01
        state.write_bytes(bytes(flipped))
    elif damage == "garbage":
        state.write_bytes(b"\x00not a checkpoint" * 100)
    else:  # a valid torch file, but not a state of ours
        torch.save({"weights": torch.zeros(3)}, state)
    capsys.readouterr()

    train(params, project)
    err = capsys.readouterr().err
    assert err.startswith(f"train: cannot resume ({state}: ") and err.count("\n") == 1
    assert "training from scratch" in err
    assert output_hashes(project) == output_hashes(clean)


def test_final_checkpoint_continues_training_exactly(project, tiny_params, tmp_path):
    """The checkpoint holds the whole state: one epoch, then one more from the checkpoint,
    equals two epochs in one go (a constant schedule, so the epoch count changes nothing
    else)."""
    params = with_train(tiny_params, optimizer="sgd", schedule="constant", lr=0.05)
    train(params, project)
    two = project_like(project, tmp_path / "two", with_train(params, epochs=2))
    train(with_train(params, epochs=2), two)

    trainer = Trainer(params.train, "compact", to_device(read_split(project.prepared, "train")),
                      torch.device("cpu"))
    trainer.load_state_dict(torch_load_verified(project.checkpoint)["trainer"])
    trainer.run_epoch()
    expected = load_model(two.model).model.state_dict()
    assert all(torch.equal(value, expected[name])
               for name, value in trainer.model.state_dict().items())


def test_a_missing_input_fails_before_any_output_is_written(project, tiny_params):
    train(tiny_params, project)
    before = output_hashes(project)
    (project.prepared / "test_images.npy").unlink()
    with pytest.raises(StageError, match=r"test_images\.npy: file not found"):
        train(with_train(tiny_params, lr=0.02), project)
    assert output_hashes(project) == before


def test_a_batch_larger_than_the_training_set_is_refused(project, tiny_params):
    with pytest.raises(StageError, match=r"train\.batch_size 100000 is larger than the "
                                         r"training set \(512 images\)"):
        train(with_train(tiny_params, batch_size=100_000), project)
    assert not project.model_dir.exists()


def test_without_a_terminal_each_epoch_is_one_clean_line(project, tiny_params, capsys):
    train(with_train(tiny_params, epochs=2), project)
    out = capsys.readouterr().out
    assert "\r" not in out  # no progress bar redraws in CI logs
    assert [line.split(" loss")[0] for line in out.splitlines()] == \
        ["train: epoch 1/2", "train: epoch 2/2"]


def test_shifted_moves_each_image_by_its_own_offset():
    images = torch.randn(5, 1, 28, 28)
    offsets = torch.tensor([[-1, 0, 1, 1, -1], [0, 1, -1, 1, -1]])
    moved = shifted(images, offsets)
    for index in range(5):
        expected = torch.roll(images[index], shifts=(-int(offsets[0, index]),
                                                     -int(offsets[1, index])), dims=(1, 2))
        assert torch.equal(moved[index], expected)


def test_label_smoothing_is_cross_entropy_with_smoothed_targets():
    logits = torch.randn(8, 10)
    targets = torch.randint(0, 10, (8,))
    loss, nll = smoothed_nll(logits.log_softmax(1), targets, 0.05)
    assert torch.allclose(loss, F.cross_entropy(logits, targets, label_smoothing=0.05))
    assert torch.allclose(nll, F.cross_entropy(logits, targets))
    plain, _ = smoothed_nll(logits.log_softmax(1), targets, 0.0)
    assert plain is _  # no smoothing: the NLL itself, not a recomputation


def test_without_shifts_or_smoothing_the_augmentation_generator_is_untouched(project,
                                                                            tiny_params):
    params = with_train(tiny_params, shift=0, label_smoothing=0.0)
    trainer = Trainer(params.train, "compact",
                      to_device(read_split(project.prepared, "train")), torch.device("cpu"))
    before = trainer.augment.get_state()
    trainer.run_epoch()
    assert torch.equal(trainer.augment.get_state(), before)


def test_a_net_with_dropout_resumes_exactly_too(project, tiny_params, tmp_path, capsys):
    """The seed net draws dropout masks from the global generator: resume restores it."""
    params = Params(train=with_train(tiny_params, epochs=3).train,
                    model=type(tiny_params.model)(net="seed"))
    clean = project_like(project, tmp_path / "clean", params)
    train(params, clean)
    interrupted(params, project)
    train(params, project)
    assert "resuming from" in capsys.readouterr().out
    assert output_hashes(project) == output_hashes(clean)


def test_images_too_small_for_the_net_stop_train_before_it_starts(tmp_path, tiny_params):
    layout = Layout(tmp_path)
    write_params(layout.params, tiny_params)
    for split, count in (("train", 64), ("test", 16)):
        write_split(layout.prepared, split, np.zeros((count, 1, 8, 8), np.float32),
                    np.arange(count, dtype=np.int64) % 2)
    write_normalization(layout.prepared, Normalization(0.1, 0.3))
    write_dataset(layout.prepared, DatasetSpec("idx", (8, 8), ("a", "b")), files=False)

    with pytest.raises(StageError, match=r"net 'compact' cannot take 8x8 images"):
        train(tiny_params, layout)
    assert not layout.model_dir.exists()

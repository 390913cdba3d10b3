"""Where and how the stages compute: the device they pick, the threads and deterministic
kernels they set, and a device that is not there (GPU cases skip where there is none)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mnist_dvc.config.params import with_train
from mnist_dvc.errors import run_stage
from mnist_dvc.runtime import configure_torch, select_device
from stages.evaluate import evaluate
from stages.evaluate import main as evaluate_main
from stages.train import main as train_main
from stages.train import train
from tests.conftest import write_params

HAS_CUDA = torch.cuda.is_available()
MISSING = [name for name, there in (("cuda", HAS_CUDA), ("mps", torch.backends.mps.is_available()))
           if not there]


@pytest.fixture
def torch_settings_restored():
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    yield
    torch.set_num_threads(saved[0])
    torch.use_deterministic_algorithms(saved[1])
    torch.utils.deterministic.fill_uninitialized_memory = saved[2]


@pytest.mark.parametrize(("cuda", "mps", "expected"), [
    (True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_takes_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert select_device("auto").type == expected


def test_auto_picks_a_device_that_computes_here():
    device = select_device("auto")
    assert (torch.ones(3, device=device) * 2).sum().item() == 6


@pytest.mark.parametrize("threads", [1, 2])
def test_the_stages_run_with_their_thread_count_and_deterministic_kernels(
    project, tiny_params, torch_settings_restored, threads,
):
    for other in (threads + 1, threads):  # from a different count each time
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = True
        torch.set_num_threads(other)
        train(with_train(tiny_params, threads=threads), project)
        assert torch.get_num_threads() == threads
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory  # no NaN fills

    torch.set_num_threads(threads + 1)
    torch.use_deterministic_algorithms(False)
    evaluate(dataclasses.replace(tiny_params.evaluate, threads=threads), project)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled()


@pytest.mark.skipif(not MISSING, reason="every device type is available here")
@pytest.mark.parametrize(("stage", "key"), [(train_main, "train"), (evaluate_main, "evaluate")])
def test_a_named_device_that_is_not_there_is_one_line_and_exit_1(
    project, tiny_params, capsys, stage, key,
):
    device = MISSING[0]
    params = dataclasses.replace(tiny_params, **{key: dataclasses.replace(
        getattr(tiny_params, key), device=device)})
    write_params(project.params, params)
    with pytest.raises(SystemExit) as exited:
        run_stage(lambda: stage(project))
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err == f"error: {key}.device is '{device}' but no {device} device is available\n"


def test_the_private_deterministic_hook_falls_back_to_the_public_call(
    torch_settings_restored, monkeypatch, capsys,
):
    real = torch._C._set_deterministic_algorithms

    def changed_signature(mode: bool, **kwargs: object) -> None:
        """As a later torch might have it: the public call (with warn_only) still works."""
        if "warn_only" not in kwargs:
            raise TypeError("missing keyword argument 'warn_only'")
        real(mode, **kwargs)

    monkeypatch.setattr(torch._C, "_set_deterministic_algorithms", changed_signature)
    torch.use_deterministic_algorithms(False)
    configure_torch(1, torch.device("cpu"))
    assert torch.are_deterministic_algorithms_enabled()
    err = capsys.readouterr().err
    assert err.startswith("note: torch._C._set_deterministic_algorithms unavailable "
                          "(TypeError)") and err.count("\n") == 1


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("bf16", [False, True])
def test_training_on_cuda_learns(project, tiny_params, bf16):
    history = train(with_train(tiny_params, device="cuda", bf16=bf16, epochs=3), project)
    assert history[-1]["test_acc"] > 0.9

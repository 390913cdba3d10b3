"""Device choice and the GPU path (GPU cases skip cleanly where there is none)."""

from __future__ import annotations

import pytest
import torch

from mnist_dvc.config.params import with_train
from mnist_dvc.errors import StageError
from mnist_dvc.runtime import configure_torch, select_device

HAS_CUDA = torch.cuda.is_available()


def test_auto_picks_the_best_available_device():
    expected = "cuda" if HAS_CUDA else "mps" if torch.backends.mps.is_available() else "cpu"
    assert select_device("auto").type == expected


def test_cpu_is_always_available():
    assert select_device("cpu") == torch.device("cpu")


@pytest.fixture
def torch_settings_restored():
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    yield
    torch.set_num_threads(saved[0])
    torch.use_deterministic_algorithms(saved[1])
    torch.utils.deterministic.fill_uninitialized_memory = saved[2]


def test_configure_torch_demands_deterministic_kernels_without_nan_fills(
    torch_settings_restored,
):
    torch.use_deterministic_algorithms(False)
    torch.utils.deterministic.fill_uninitialized_memory = True
    configure_torch(2, torch.device("cpu"))
    assert torch.get_num_threads() == 2
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.utils.deterministic.fill_uninitialized_memory


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_asking_for_a_missing_device_is_a_one_line_error():
    with pytest.raises(StageError, match=r"train\.device is 'cuda' but no cuda device"):
        select_device("cuda")


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
    from stages.train import train

    history = train(with_train(tiny_params, device="cuda", bf16=bf16, epochs=3), project)
    assert history[-1]["test_acc"] > 0.9

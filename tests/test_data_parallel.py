"""Data-parallel training without processes: the arithmetic and the set-up, in one process."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnist_dvc.config.train import TrainParams
from mnist_dvc.errors import StageError
from mnist_dvc.model.nets import NETS
from mnist_dvc.runtime import TensorSplit
from mnist_dvc.training import distributed
from mnist_dvc.training.distributed import Group, check_process_count, join
from mnist_dvc.training.trainer import Trainer
from tests.test_model import TinyNet


def test_each_rank_takes_a_contiguous_share_of_the_global_batch():
    batch = torch.arange(10)
    shares = [Group(rank, 3).share(batch).tolist() for rank in range(3)]
    assert shares == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert Group().share(batch) is batch


class OneOfTwo(Group):
    """A rank of a world of two, without DDP: the test averages the gradients itself."""

    def wrap(self, model: nn.Module) -> nn.Module:
        return model


def test_unequal_shares_average_to_the_global_batch_gradient(monkeypatch):
    monkeypatch.setitem(NETS, "linear", TinyNet)  # no BatchNorm: a share's gradient is its own
    cfg = TrainParams(lr=1e-9, label_smoothing=0.05, shift=0, device="cpu")
    images, labels = torch.randn(5, 1, 28, 28), torch.tensor([3, 1, 4, 1, 5])
    data = TensorSplit(images, labels)
    whole = Trainer(cfg, "linear", data, torch.device("cpu"))
    whole.step(images, labels, 5)
    gradients = []
    for rank in range(2):  # shares of 3 and 2 images, as Group.share cuts them
        trainer = Trainer(cfg, "linear", data, torch.device("cpu"), OneOfTwo(rank, 2))
        mine = OneOfTwo(rank, 2).share(torch.arange(5))
        trainer.step(images[mine], labels[mine], 5)
        gradients.append([p.grad for p in trainer.model.parameters()])
    for expected, *shares in zip((p.grad for p in whole.model.parameters()), *gradients,
                                 strict=True):
        torch.testing.assert_close(sum(shares) / 2, expected)  # what DDP's all-reduce does


def test_each_process_gets_its_own_gpu(monkeypatch):
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed, "die_with_parent", lambda: None)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: seen.update(set=device))
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, **kwargs: seen.update(backend=backend, **kwargs))
    group = join(TrainParams(nproc=2), torch.device("cuda"))
    assert (group.rank, group.world, group.local_rank) == (1, 2, 1)
    assert seen == {"set": torch.device("cuda", 1), "backend": "nccl",
                    "device_id": torch.device("cuda", 1)}  # NCCL refuses a device sans index


def test_a_world_that_params_do_not_describe_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed, "die_with_parent", lambda: None)
    with pytest.raises(StageError, match=r"torchrun started 4 processes but train\.nproc is 2"):
        join(TrainParams(nproc=2), torch.device("cpu"))
    monkeypatch.setenv("RANK", "3")  # the other ranks leave the explaining to rank 0
    with pytest.raises(SystemExit) as quiet:
        join(TrainParams(nproc=2), torch.device("cpu"))
    assert quiet.value.code == distributed.PEER_LOST  # "stopped when another process failed"


@pytest.mark.parametrize(("nproc", "device", "gpus", "expected"), [
    (64, "cpu", 0, "train.nproc is 64 but this machine has"),
    (3, "cuda", 2, "train.nproc is 3 but only 2 CUDA device(s) are visible"),
    (2, "mps", 0, "train.nproc > 1 needs the cpu or cuda device, not mps"),
])
def test_more_processes_than_the_machine_has_is_one_line(monkeypatch, nproc, device, gpus,
                                                         expected):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(StageError) as info:
        check_process_count(nproc, torch.device(device))
    assert expected in str(info.value) and "\n" not in str(info.value)


GLOO_RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
              "[127.0.0.1]:59301: Connection reset by peer. This is typically caused by a remote "
              "worker hanging or bugs in the application.")


def raised_in(filename: str, message: str) -> RuntimeError:
    """A RuntimeError raised by code that claims to live in ``filename``."""
    try:
        exec(compile(f"raise RuntimeError({message!r})", filename, "exec"))
    except RuntimeError as err:
        return err
    raise AssertionError("not raised")


def test_a_collective_whose_peer_died_is_recognised_where_it_failed():
    # DDP's gradient all-reduce fails inside backward: no torch.distributed frame, gloo's path
    assert distributed.lost_peer(raised_in("/site-packages/torch/autograd/graph.py", GLOO_RESET))
    assert distributed.lost_peer(raised_in("/site-packages/torch/autograd/graph.py",
                                           "NCCL communicator was aborted on rank 0."))
    # a call through torch.distributed, whatever the transport says of itself
    assert distributed.lost_peer(raised_in("/site-packages/torch/distributed/c10d.py",
                                           "Connection closed by peer [10.0.0.2]:29500"))


def test_other_failures_keep_their_traceback():
    elsewhere = "/project/mnist_dvc/training/trainer.py"
    assert not distributed.lost_peer(raised_in(elsewhere, "Connection reset by peer"))
    assert not distributed.lost_peer(raised_in("/site-packages/torch/distributed/c10d.py",
                                               "mat1 and mat2 shapes cannot be multiplied"))
    assert not distributed.lost_peer(ValueError(GLOO_RESET))

"""Data-parallel training with torch.distributed, launched by torchrun.

``train.nproc`` is the total number of processes. With 1 (the default) nothing here starts a
process or imports torch.distributed: the train stage runs as a plain process. With more,
``python -m stages.train`` relaunches itself through torchrun's own entry point
(``torch.distributed.run``) on this machine; a user may also start it with ``torchrun ...
-m stages.train`` on one or many machines, and then the world size must equal
``train.nproc`` (so params, and DVC, describe the run).

Every rank takes its contiguous share of each global batch (see ``Group.share``); gradients
are averaged by DistributedDataParallel; rank 0 writes every output while the others wait.
BatchNorm normalizes each rank's share with its own statistics, and the running statistics
that are saved are rank 0's (DDP broadcasts rank 0's buffers before every forward pass):
no extra communication, the usual DDP behaviour, on CPU and GPU alike. A BatchNorm over
the global batch (SyncBatchNorm) refuses CPU tensors, and one built on all-reduce was about
2x slower in a prototype.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from mnist_dvc.config.train import TrainParams
from mnist_dvc.errors import PEER_LOST, AlreadyReported, StageError

T = TypeVar("T")
PR_SET_PDEATHSIG = 1  # from linux/prctl.h
LAUNCHER_PID = "MNIST_DVC_LAUNCHER_PID"


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes; a group of one does no I/O."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of a global batch of indices (sizes differ by <= 1)."""
        return batch if self.world == 1 else batch.tensor_split(self.world)[self.rank]

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train: ``model`` itself, or a DistributedDataParallel around it."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over every rank, in place."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(values, value)
        return values

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value``, on every rank."""
        if self.world == 1:
            return value
        holder = [value]
        torch.distributed.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


SINGLE = Group()


def under_torchrun() -> bool:
    """Whether this process is one of several that torchrun started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(cfg: TrainParams, device: torch.device) -> Group:
    """Join the process group torchrun set up: gloo on the CPU, NCCL on CUDA."""
    if not under_torchrun():
        return SINGLE
    die_with_parent()
    world = int(os.environ["WORLD_SIZE"])
    if world != cfg.nproc:
        if int(os.environ.get("RANK", "0")):
            raise SystemExit(PEER_LOST)  # rank 0 says why, once; this exit prints nothing
        raise StageError(f"torchrun started {world} processes but train.nproc is {cfg.nproc}; "
                         f"run with -S train.nproc={world} (params describe the run)")
    group = Group(int(os.environ["RANK"]), world, int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        gpu = local_device(group, device)  # NCCL wants the device with its index
        torch.cuda.set_device(gpu)
        torch.distributed.init_process_group("nccl", device_id=gpu)
    else:
        torch.distributed.init_process_group("gloo")
    return group


def leave(group: Group) -> None:
    if group.world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def local_device(group: Group, device: torch.device) -> torch.device:
    """One GPU per process on CUDA (by local rank); the CPU is shared."""
    if device.type != "cuda" or group.world == 1:
        return device
    return torch.device("cuda", group.local_rank)


def check_process_count(nproc: int, device: torch.device) -> None:
    """A StageError unless this machine can run ``nproc`` processes of the train stage."""
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise StageError(f"train.nproc is {nproc} but only {gpus} CUDA device(s) are "
                             "visible: one process per GPU")
    elif device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
        if nproc > cores:
            raise StageError(f"train.nproc is {nproc} but this machine has {cores} CPU "
                             "core(s) for it")
    else:
        raise StageError(f"train.nproc > 1 needs the cpu or cuda device, not {device.type}")


def launch(cfg: TrainParams, module: str) -> None:
    """Run ``python -m module`` in ``cfg.nproc`` processes on this machine with torchrun.

    The workers inherit the environment: each sets its own thread count from params.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))  # else torchrun warns, sets 1
    os.environ[LAUNCHER_PID] = str(os.getpid())  # the workers' parent: see die_with_parent
    if "LOGLEVEL" not in os.environ:  # torchrun's own way to ask for its logs
        # it logs each failure at length; the workers and WorkerFailed say it in one line
        for name in list(logging.Logger.manager.loggerDict):
            if name.startswith("torch.distributed.elastic"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args([
        "--standalone", f"--nproc-per-node={cfg.nproc}", "--max-restarts=0",
        "--monitor-interval=0.2", "-m", module])
    try:
        run(args)
    except ChildFailedError as err:
        failed = WorkerFailed(err.failures)
        if failed.reported:
            raise AlreadyReported from None
        raise failed from None
    except SignalException as err:  # torchrun stopped its workers first
        if err.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise StageError(f"train: stopped by {err.sigval.name}") from None


class WorkerFailed(StageError):
    """A worker ended badly. One that exited 1 has printed its own one-line error."""

    def __init__(self, failures: dict[int, Any]) -> None:
        self.exit_codes = {rank: failure.exitcode for rank, failure in failures.items()}
        described = ", ".join(f"rank {rank} {_describe_exit(code)}"
                              for rank, code in sorted(self.exit_codes.items()))
        super().__init__(f"train: a worker process failed ({described})")

    @property
    def reported(self) -> bool:
        """Whether a worker printed why it failed (a StageError exits 1; torchrun then stops
        the others, which is no news)."""
        return 1 in self.exit_codes.values()


# What gloo and NCCL say when the process at the other end of a collective has gone
PEER_GONE = re.compile(r"[Cc]onnection (closed|reset) by peer|Broken pipe|"
                       r"remote process exited|NCCL communicator was aborted")
# how their errors name the library: gloo's quote its source file's path, NCCL's its name
COLLECTIVE_LIBRARY = re.compile(r"/gloo/|\bNCCL\b")


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing because a peer process died, rather than a
    fault of this process (which then keeps its traceback).

    The collective is either a call through torch.distributed or DDP's all-reduce of the
    gradients, which its reducer runs inside ``backward`` with no torch.distributed frame
    (then gloo or NCCL names itself in the message).
    """
    if not isinstance(err, RuntimeError) or not PEER_GONE.search(str(err)):
        return False
    frames = []
    traceback = err.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame.f_code.co_filename)
        traceback = traceback.tb_next
    return bool(COLLECTIVE_LIBRARY.search(str(err))) or any(
        f"{os.sep}torch{os.sep}" in name and "distributed" in name for name in frames)


def _describe_exit(code: int) -> str:
    if code == PEER_LOST:
        return "stopped when another process failed"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited {code}"


def die_with_parent() -> None:
    """Ask Linux to kill this worker when its launcher dies, even by SIGKILL, so that no
    orphan goes on training and writing outputs (torchrun puts each worker in its own
    session, out of reach of the launcher's process group)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    prctl: Callable[..., int] | None = getattr(libc, "prctl", None)
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher and os.getppid() != int(launcher):  # it died before the request took effect
        os._exit(PEER_LOST)

"""The process group of a training run: who this rank is, on which device, and sums across ranks.

A run is one rank (no process group) or several started by `torchrun`, by Ray Train or by
`stages.launch`; all of them describe the ranks through RANK / WORLD_SIZE / LOCAL_RANK and
MASTER_ADDR / MASTER_PORT. A process group that already exists (Ray Train makes one) is used as is.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  before any group exists: see `start`


class Ranks(NamedTuple):
    """This process's place in the run."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that writes shared files)."""
        return self.rank == 0


def resolve_device(choice: str) -> torch.device:
    """`auto` is CUDA when available, else CPU; `cuda` without a GPU is an error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was asked for but torch sees no GPU")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def env_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; (0, 1, 0) without one."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


def start(device_choice: str, backend: str) -> Ranks:
    """Join the run's process group (creating it when there are several ranks) and pick the device.

    DeepSpeed always wants a process group, so a single DeepSpeed rank gets a one-member group.
    `torch.distributed.nn` (which DDP and DeepSpeed import through `torch._dynamo`) is imported at
    the top of this module, before the group exists: its functions take `group.WORLD` as a default
    argument, and imported later they would hold the group, and its threads, until the interpreter exits.
    """
    device = resolve_device(device_choice)
    rank, world, local_rank = env_ranks()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized() and (world > 1 or backend == "deepspeed"):
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        for name, value in (("RANK", rank), ("WORLD_SIZE", world), ("LOCAL_RANK", local_rank)):
            os.environ.setdefault(name, str(value))
        if backend == "deepspeed":
            import deepspeed

            deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        else:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return Ranks(rank, world, local_rank, device)


def stop(wait: bool = True) -> None:
    """Leave the process group in order: wait for every rank (if `wait`), free what still holds its groups, destroy them.

    A group's threads (gloo's worker and socket loops) end when its last reference goes; threads
    still running while the interpreter exits can abort a rank whose run had finished. Call this
    after the engine is closed (`engines.*.close`); a rank that failed passes `wait=False`.
    """
    if not dist.is_initialized():
        return
    if wait:
        barrier()
    gc.collect()  # the closed engine's reference cycles: the last holders of its groups
    deepspeed_comm = sys.modules.get("deepspeed.comm")
    if deepspeed_comm is not None and deepspeed_comm.is_initialized():
        deepspeed_comm.destroy_process_group()  # torch's destroy, then DeepSpeed drops its own references to the groups
    else:
        dist.destroy_process_group()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """The elementwise sum of `values` over all ranks (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def barrier() -> None:
    """Wait for every rank (a no-op with one)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def free_port() -> int:
    """A TCP port free on this host right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

"""Single process, or torchrun/DDP: the same command works in both.

Under ``torchrun`` the environment holds RANK/WORLD_SIZE/LOCAL_RANK; NCCL is used on GPUs and
gloo on CPUs. SyncBatchNorm is used on CUDA only (PyTorch's SyncBatchNorm has no CPU kernel);
on CPU, DDP keeps BatchNorm buffers in step by broadcasting rank 0's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from unimatch.errors import ConfigError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


DEVICE_CHOICES = "auto, cpu or cuda (cuda:<index> for one GPU)"


def resolve_device(name: str | None) -> torch.device:
    """The device ``--device name`` asks for (None or ``auto``: CUDA when there is one), refused
    with a :class:`~unimatch.errors.ConfigError` when it is not a device name or this machine
    lacks it; every command checks it here, before a model is built."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name}: not a device; use {DEVICE_CHOICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: unsupported device type {device.type!r}; use {DEVICE_CHOICES}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available (torch.cuda.is_available() is False); "
                          "use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def setup_distributed(device: str | None = None) -> DistContext:
    """Initialise the process group when launched by torchrun; pick the device for this rank
    (under torchrun a CUDA rank uses the GPU of its LOCAL_RANK, one process the GPU it names)."""
    requested = resolve_device(device)
    want_cuda = requested.type == "cuda"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        dev = torch.device("cuda", local_rank if world_size > 1 or requested.index is None else requested.index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    return DistContext(rank, world_size, local_rank, dev)


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    model = model.to(ctx.device)
    if not ctx.distributed:
        return model
    if ctx.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[ctx.local_rank], broadcast_buffers=False,
                                                   output_device=ctx.local_rank, find_unused_parameters=False)
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: float, device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def gather_to_all(items: list) -> list:
    """Every rank's ``items`` concatenated in rank order, on every rank (a copy in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(items)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    Without SyncBatchNorm (CPU) each rank's running statistics drift apart after the last
    training forward; evaluation and checkpoints must all see rank 0's.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer, src=0)


def main_rank_first(make, ctx: "DistContext | None" = None):
    """``make()`` on rank 0 first, then on every rank, which returns its result.

    For work that writes shared files once (a synthetic dataset): the other ranks wait at the
    barrier and then find the files written instead of racing to write them.
    """
    if ctx is None or ctx.is_main:
        make()
    barrier()
    return make()

"""Multi-process training helpers (``torchrun --nproc_per_node N -m fcnseg train ...``).

Every helper is a no-op in a single process, so callers need no branches.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from fcnseg.errors import ConfigError

__all__ = ["DistContext", "setup", "cleanup", "is_distributed", "rank", "world_size", "is_main",
           "barrier", "all_reduce_sum", "all_reduce_max", "wrap_model", "unwrap", "env_world_size"]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """WORLD_SIZE from the environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def setup(device: str = "auto") -> DistContext:
    """Pick the device and, when RANK/WORLD_SIZE say so, join the process group.

    ``device``: auto|cpu|cuda|cuda:N. Under torchrun each rank uses ``cuda:LOCAL_RANK`` (NCCL);
    on CPU the backend is gloo.
    """
    world = env_world_size()
    if world > 1 or dist.is_initialized():
        lr = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device != "cpu"
        dev = torch.device("cuda", lr) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(dev)
        here = False
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
            here = True
        return DistContext(dist.get_rank(), dist.get_world_size(), lr, dev, here)
    if device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ConfigError(f"train.device: cannot use {device!r}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"train.device is {device!r} but CUDA is not available")
    return DistContext(device=dev)


def cleanup(ctx: DistContext, ok: bool = True) -> None:
    """Leave the process group if :func:`setup` created it (after a barrier when all went well, so
    no rank tears down its connections while another still talks to it)."""
    if ctx.initialized_here and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _reduce(tensor: torch.Tensor, op) -> torch.Tensor:
    if not is_distributed():
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        tmp = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(tmp, op=op)
        tensor.copy_(tmp.to(tensor.device))
    else:
        dist.all_reduce(tensor, op=op)
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place, and return it (identity in one process).

    Exact for integer tensors (confusion matrices); works on CPU tensors under NCCL too.
    """
    return _reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise max over all ranks, in place (identity in one process)."""
    return _reduce(tensor, dist.ReduceOp.MAX)


def wrap_model(model: nn.Module, ctx: DistContext, sync_bn: bool = False) -> nn.Module:
    """SyncBatchNorm conversion (optional) and DistributedDataParallel when distributed."""
    if ctx.world_size <= 1:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

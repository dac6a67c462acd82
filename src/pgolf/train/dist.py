"""Process-group set-up from torchrun's environment, and a few collective helpers.

torchrun (and any launcher speaking its protocol, including multi-node `--nnodes N --rdzv-*`)
exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT to each process. Reading those
launcher variables here is the one place pgolf's library code looks at the environment; nothing
else (world size, GPUs per node) is assumed. Without them we run as a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pgolf.config import ConfigError


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # we created the process group and should destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)  # launcher variable (torchrun); see the module docstring
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment {name}: expected an integer from the launcher, got {raw!r}") from None


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """train.device -> a torch.device; auto means CUDA (this process's local GPU) when available."""
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device: 'cuda' requested but CUDA is not available")
        n = torch.cuda.device_count()
        return torch.device("cuda", local_rank % n)
    if pref not in ("auto", "cpu"):
        raise ConfigError(f"train.device: expected auto | cpu | cuda, got '{pref}'")
    return torch.device("cpu")


def setup(device_pref: str = "auto") -> DistInfo:
    """Join (or create) the process group described by the launcher's env; NCCL on CUDA, gloo on CPU.

    A process group that is already initialized (e.g. by a caller) is reused and left alone.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        return DistInfo(rank, world, local_rank, resolve_device(device_pref, local_rank), owns_group=False)
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"environment RANK={rank} / WORLD_SIZE={world}: rank must be in [0, world)")
    device = resolve_device(device_pref, local_rank)
    if world == 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistInfo(0, 1, local_rank, device, owns_group=False)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", init_method="env://", rank=rank, world_size=world, device_id=device)
    else:
        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, device, owns_group=True)


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    return not is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (SUM then divide: gloo has no AVG); returns t."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """In-place max over ranks (used so every rank agrees to stop at the same step)."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Average gradients over ranks with one flat all-reduce (missing grads count as zero).

    Done once per optimizer step after the last micro-batch, which is what DDP's no_sync + final
    sync computes; a flat buffer keeps it one collective and works the same with torch.compile.
    """
    if not (is_initialized() and dist.get_world_size() > 1) or not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    world = dist.get_world_size()
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

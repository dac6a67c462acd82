"""Where code runs: the device, the autocast dtype, torch threads, and the process group.

torchrun (and any launcher speaking its protocol, multi-node included) exports RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; reading those launcher variables here is the one place
library code looks at the environment. Without them we run as one process. Every helper below is a
no-op (or the identity) without an initialized process group, so single-process code calls them freely.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from pgolf.config import TrainConfig
from pgolf.errors import ConfigError


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)  # launcher variable (torchrun); see the module docstring
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment {name}: expected an integer from the launcher, got {raw!r}") from None


def local_rank() -> int:
    return _env_int("LOCAL_RANK", rank())


def resolve_device(pref: str, local: int | None = None) -> torch.device:
    """train.device -> a torch.device; auto means this process's local GPU when CUDA is available."""
    if pref not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device: expected auto | cpu | cuda, got '{pref}'")
    if pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but CUDA is not available")
    if pref == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    local = local_rank() if local is None else local
    return torch.device("cuda", local % torch.cuda.device_count())


def autocast_dtype(train: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA unless train.dtype is fp32; on CPU only when asked (bf16 matmuls are ~10x slower there)."""
    if train.dtype == "bf16" or (train.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context for `dtype` (disabled for None)."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def use_compile(train: TrainConfig, device: torch.device) -> bool:
    return train.compile == "on" or (train.compile == "auto" and device.type == "cuda")


def set_threads(train: TrainConfig) -> None:
    """Fix torch's CPU thread count when the config asks (bitwise-reproducible CPU runs)."""
    if train.threads > 0:
        torch.set_num_threads(train.threads)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the process group ------------------------------------------------------------------------

def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if distributed() else 0


def world() -> int:
    return dist.get_world_size() if distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks; returns t."""
    if distributed() and world() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (SUM then divide: gloo has no AVG); returns t."""
    if distributed() and world() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(world())
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if distributed() and world() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_object(obj, src: int = 0):
    """`obj` from rank `src` on every rank."""
    if not (distributed() and world() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@dataclass
class Process:
    """This process's place in the job: rank, world size, device; whether we own the process group."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_pref: str = "auto") -> Process:
    """Join (or create) the process group from the launcher's env: NCCL on CUDA, gloo on CPU.

    An already initialized group (e.g. by a caller) is reused and left alone.
    """
    if distributed():
        return Process(rank(), world(), resolve_device(device_pref))
    n, r = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    if n < 1 or not 0 <= r < n:
        raise ConfigError(f"environment RANK={r} / WORLD_SIZE={n}: rank must be in [0, world)")
    device = resolve_device(device_pref, _env_int("LOCAL_RANK", r))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if n == 1:
        return Process(0, 1, device)
    if device.type == "cuda":
        dist.init_process_group("nccl", init_method="env://", rank=r, world_size=n, device_id=device)
    else:
        dist.init_process_group("gloo", init_method="env://", rank=r, world_size=n)
    return Process(r, n, device, owns_group=True)


def cleanup(proc: Process) -> None:
    if proc.owns_group and distributed():
        dist.destroy_process_group()


@contextmanager
def process_group(device_pref: str = "auto") -> Iterator[Process]:
    """setup() ... cleanup(). Ranks that finish meet at a barrier first, so none tears its group down
    while a peer still works (rank 0 packing or plotting): a gloo rank that did has aborted at exit."""
    proc = setup(device_pref)
    try:
        yield proc
        if proc.owns_group:
            barrier()
    finally:
        cleanup(proc)

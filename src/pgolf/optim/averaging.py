"""Weight averaging: EMA (every step) or SWA (uniform mean of snapshots every N steps).

Only parameters are averaged (buffers such as rotary tables are deterministic). Averages are kept
in fp32 on the parameters' device. At the end the trainer calls `copy_to(model)` and exports.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from pgolf.config import ConfigError, OptimConfig
from pgolf.errors import InputError

COUNT_KEY = "_averager.count"  # the one non-parameter entry of checkpoint_state()


class WeightAverager:
    """mode "ema": avg = decay*avg + (1-decay)*w on each update (starting from the first weights seen,
    or those passed to `reset`). mode "swa": avg = mean of the weights at enabled steps divisible by
    `every`."""

    def __init__(self, mode: str, decay: float = 0.0, every: int = 1, start_frac: float = 0.0):
        if mode not in ("ema", "swa"):
            raise ValueError(f"WeightAverager: mode must be ema | swa, got '{mode}'")
        if mode == "ema" and not 0.0 < decay < 1.0:
            raise ValueError(f"WeightAverager: EMA decay must be in (0, 1), got {decay}")
        if mode == "swa" and every < 1:
            raise ValueError(f"WeightAverager: SWA every must be >= 1, got {every}")
        self.mode, self.decay, self.every = mode, decay, every
        self.start_frac = start_frac  # SWA: the trainer enables updates once this fraction of training passed
        self.count = 0  # EMA: updates so far; SWA: snapshots summed
        self.avg: dict[str, torch.Tensor] = {}  # EMA: the average; SWA: the running sum

    @property
    def ready(self) -> bool:
        return self.count > 0

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Start over; EMA starts from the model's current weights (SWA starts empty)."""
        self.avg = {n: p.detach().float().clone() for n, p in model.named_parameters()}
        if self.mode == "swa":
            for t in self.avg.values():
                t.zero_()
        self.count = 1 if self.mode == "ema" else 0  # EMA: the starting weights count as folded in

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, enabled: bool = True) -> bool:
        """Fold in the current weights; returns whether this call changed the average."""
        if not enabled or (self.mode == "swa" and step % self.every != 0):
            return False
        if not self.avg:
            self.reset(model)
            if self.mode == "ema":  # the first weights seen are the starting average
                return True
        for n, p in model.named_parameters():
            w = p.detach().float()
            if self.mode == "ema":
                self.avg[n].lerp_(w, 1.0 - self.decay)  # = decay*avg + (1-decay)*w
            else:
                self.avg[n].add_(w)
        self.count += 1
        return True

    def averaged(self) -> dict[str, torch.Tensor]:
        """Parameter name -> averaged fp32 tensor (a fresh tensor for SWA, the live one for EMA)."""
        if not self.ready:
            raise RuntimeError("WeightAverager: no weights averaged yet")
        if self.mode == "swa":
            return {n: t / self.count for n, t in self.avg.items()}
        return dict(self.avg)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the averaged weights."""
        avg = self.averaged()
        for n, p in model.named_parameters():
            if n not in avg:
                raise InputError(f"averaged weights: no entry for parameter '{n}'")
            p.copy_(avg[n].to(p.dtype))

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Parameter name -> fp32 tensor (EMA average or SWA sum), plus COUNT_KEY (int64 scalar)."""
        out = {n: t.detach().clone() for n, t in self.avg.items()}
        out[COUNT_KEY] = torch.tensor(self.count, dtype=torch.int64)
        return out

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        if COUNT_KEY not in state:
            raise InputError(f"averager state: missing '{COUNT_KEY}' (expected a WeightAverager.checkpoint_state())")
        self.count = int(state[COUNT_KEY])
        self.avg = {n: t.detach().float().clone() for n, t in state.items() if n != COUNT_KEY}


def make_averager(cfg: OptimConfig) -> WeightAverager | None:
    """EMA when optim.ema_decay > 0, SWA when optim.swa_every > 0, else None."""
    if cfg.ema_decay > 0 and cfg.swa_every > 0:
        raise ConfigError("optim.swa_every: EMA (optim.ema_decay) and SWA are exclusive; pick one")
    if cfg.ema_decay > 0:
        return WeightAverager("ema", decay=cfg.ema_decay)
    if cfg.swa_every > 0:
        return WeightAverager("swa", every=cfg.swa_every, start_frac=cfg.swa_start_frac)
    return None

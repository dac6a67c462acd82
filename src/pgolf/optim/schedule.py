"""Wall-clock learning-rate schedule and Muon momentum warm-up.

The LR is flat at the peak and then decays linearly to 0 (or to a floor) at the end of training.
With a time budget the end is not known in steps, so it is estimated from the mean step time so
far. Training ends at whichever comes first, the time budget or max_steps; the schedule takes the
smaller scale of the two so the warmdown always reaches its floor at the real end.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pgolf.config import OptimConfig, TrainConfig
from pgolf.optim.muon import Muon


def lr_scale(
    step: int,
    elapsed_ms: float,
    *,
    budget_ms: float,
    max_steps: int,
    warmdown_iters: int = 0,
    warmdown_frac: float = 0.0,
    min_lr_frac: float = 0.0,
) -> float:
    """LR multiplier in [min_lr_frac, 1] for the update after `step` steps and `elapsed_ms` of training.

    budget_ms: training time budget (0 = none). warmdown_frac > 0 decays over that last fraction of
    the budget (or of max_steps without a budget); otherwise over the last `warmdown_iters` steps.
    """
    if warmdown_frac > 0:
        progress = step / max_steps
        if budget_ms > 0:
            progress = max(progress, elapsed_ms / budget_ms)
        scale = (1.0 - progress) / warmdown_frac
    elif warmdown_iters > 0:
        scale = (max_steps - step) / warmdown_iters
        if budget_ms > 0:
            step_ms = elapsed_ms / max(step, 1)
            remaining_ms = budget_ms - elapsed_ms
            scale = min(scale, remaining_ms / max(warmdown_iters * step_ms, 1e-9))
    else:
        scale = 1.0
    scale = min(max(scale, 0.0), 1.0)
    return min_lr_frac + (1.0 - min_lr_frac) * scale


def muon_momentum_at(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Linear warm-up of Muon's momentum from `start` to `end` over `warmup_steps` steps."""
    if warmup_steps <= 0:
        return end
    frac = min(step / warmup_steps, 1.0)
    return (1.0 - frac) * start + frac * end


def apply(optimizers: list[torch.optim.Optimizer], scale: float, muon_momentum: float | None = None) -> None:
    """Set every group's lr to base_lr * scale and, if given, Muon groups' momentum."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * scale
            if muon_momentum is not None and isinstance(opt, Muon):
                group["momentum"] = muon_momentum


@dataclass
class Schedule:
    """The run's schedule from its config; `update` computes and applies it each step."""

    budget_ms: float
    max_steps: int
    warmdown_iters: int
    warmdown_frac: float
    min_lr_frac: float
    momentum_start: float
    momentum_end: float
    momentum_warmup_steps: int
    last_scale: float = 1.0  # read by late QAT (switches on below a threshold)

    @classmethod
    def from_config(cls, train: TrainConfig, optim: OptimConfig) -> "Schedule":
        # Time kept back for GPTQ calibration comes out of the training budget.
        budget_s = max(train.max_seconds - train.gptq_reserve_seconds, 0.0) if train.max_seconds > 0 else 0.0
        return cls(budget_ms=budget_s * 1000.0, max_steps=train.max_steps, warmdown_iters=train.warmdown_iters,
                   warmdown_frac=train.warmdown_frac, min_lr_frac=train.min_lr_frac,
                   momentum_start=optim.muon_momentum_warmup_start, momentum_end=optim.muon_momentum,
                   momentum_warmup_steps=optim.muon_momentum_warmup_steps)

    def lr_scale(self, step: int, elapsed_ms: float) -> float:
        return lr_scale(step, elapsed_ms, budget_ms=self.budget_ms, max_steps=self.max_steps,
                        warmdown_iters=self.warmdown_iters, warmdown_frac=self.warmdown_frac,
                        min_lr_frac=self.min_lr_frac)

    def momentum(self, step: int) -> float:
        return muon_momentum_at(step, self.momentum_start, self.momentum_end, self.momentum_warmup_steps)

    def progress(self, step: int, elapsed_ms: float) -> float:
        """Fraction of training done in [0, 1] (time or steps, whichever is further): for SWA/recurrence starts."""
        p = step / self.max_steps
        if self.budget_ms > 0:
            p = max(p, elapsed_ms / self.budget_ms)
        return min(max(p, 0.0), 1.0)

    def update(self, optimizers: list[torch.optim.Optimizer], step: int, elapsed_ms: float) -> float:
        """Apply this step's LR scale and Muon momentum; returns the LR scale."""
        self.last_scale = self.lr_scale(step, elapsed_ms)
        apply(optimizers, self.last_scale, self.momentum(step))
        return self.last_scale

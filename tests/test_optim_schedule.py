"""LR warmdown (wall-clock, step and fraction based), floor, momentum warm-up, and applying them."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pgolf.config import OptimConfig, TrainConfig
from pgolf.optim.groups import build_optimizers
from pgolf.optim.schedule import Schedule, apply, lr_scale, muon_momentum_at


def test_wallclock_warmdown_from_mean_step_time():
    # 100 ms/step, 600 s budget: the run ends at step 6000 and warmdown covers its last 1200 steps.
    kw = dict(budget_ms=600_000.0, max_steps=20_000, warmdown_iters=1200)
    for step in (1, 1000, 4800):
        assert lr_scale(step, step * 100.0, **kw) == 1.0
    for step in (4801, 5400, 5999, 6000):
        expected = (600_000 - step * 100.0) / (1200 * 100.0)
        assert lr_scale(step, step * 100.0, **kw) == pytest.approx(expected)
    assert lr_scale(5400, 540_000.0, **kw) == pytest.approx(0.5)
    assert lr_scale(6000, 600_000.0, **kw) == 0.0
    assert lr_scale(6100, 610_000.0, **kw) == 0.0  # past the cap: clamped, never negative
    # Slower steps so far mean the warmdown starts earlier in time.
    assert lr_scale(4000, 500_000.0, **kw) == pytest.approx(100_000 / (1200 * 125.0))


def test_step_based_warmdown_without_budget():
    kw = dict(budget_ms=0.0, max_steps=100, warmdown_iters=20)
    assert [lr_scale(s, 1e9, **kw) for s in (0, 50, 80)] == [1.0, 1.0, 1.0]
    assert lr_scale(90, 0.0, **kw) == pytest.approx(0.5)
    assert lr_scale(100, 0.0, **kw) == 0.0
    # With a budget, max_steps still ends the run: whichever end comes first wins.
    assert lr_scale(90, 1000.0, budget_ms=600_000.0, max_steps=100, warmdown_iters=20) == pytest.approx(0.5)


def test_fractional_warmdown():
    kw = dict(budget_ms=1000.0, max_steps=10_000, warmdown_frac=0.5)
    assert lr_scale(10, 400.0, **kw) == 1.0
    assert lr_scale(10, 750.0, **kw) == pytest.approx(0.5)
    assert lr_scale(10, 1000.0, **kw) == 0.0
    # No budget: fraction of max_steps.
    assert lr_scale(75, 0.0, budget_ms=0.0, max_steps=100, warmdown_frac=0.5) == pytest.approx(0.5)
    assert lr_scale(100, 0.0, budget_ms=0.0, max_steps=100, warmdown_frac=0.5) == 0.0


def test_min_lr_floor_and_flat():
    kw = dict(budget_ms=1000.0, max_steps=10_000, warmdown_frac=0.5, min_lr_frac=0.1)
    assert lr_scale(10, 1000.0, **kw) == pytest.approx(0.1)
    assert lr_scale(10, 2000.0, **kw) == pytest.approx(0.1)
    assert lr_scale(10, 750.0, **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_scale(10, 100.0, **kw) == 1.0
    assert lr_scale(10**6, 10**9, budget_ms=1000.0, max_steps=10) == 1.0  # no warmdown configured


def test_momentum_warmup_endpoints():
    assert muon_momentum_at(0, 0.92, 0.99, 1500) == pytest.approx(0.92)
    assert muon_momentum_at(750, 0.92, 0.99, 1500) == pytest.approx(0.955)
    assert muon_momentum_at(1500, 0.92, 0.99, 1500) == pytest.approx(0.99)
    assert muon_momentum_at(5000, 0.92, 0.99, 1500) == pytest.approx(0.99)
    assert muon_momentum_at(0, 0.92, 0.99, 0) == 0.99


def _toy() -> nn.Module:
    m = nn.Module()
    m.tok_emb = nn.Embedding(16, 8)
    m.blocks = nn.ModuleList([nn.Linear(8, 8, bias=False)])
    m.scale = nn.Parameter(torch.ones(8))
    return m


def test_apply_scales_base_lr_and_sets_muon_momentum():
    cfg = OptimConfig(matrix_lr=0.02, embed_lr=0.06, scalar_lr=0.04)
    adam, muon = build_optimizers(_toy(), cfg)
    apply([adam, muon], 0.5, 0.9)
    assert [g["lr"] for g in adam.param_groups] == pytest.approx([0.03, 0.02])
    assert muon.param_groups[0]["lr"] == pytest.approx(0.01)
    assert muon.param_groups[0]["momentum"] == 0.9
    assert all("momentum" not in g for g in adam.param_groups)
    apply([adam, muon], 1.0)  # momentum untouched when not given
    assert muon.param_groups[0]["lr"] == pytest.approx(0.02) and muon.param_groups[0]["momentum"] == 0.9


def test_schedule_from_config_and_update():
    train = TrainConfig(max_seconds=100.0, gptq_reserve_seconds=20.0, warmdown_frac=0.5, min_lr_frac=0.1,
                        max_steps=1000)
    optim = OptimConfig(muon_momentum=0.99, muon_momentum_warmup_start=0.92, muon_momentum_warmup_steps=100)
    sched = Schedule.from_config(train, optim)
    assert sched.budget_ms == 80_000.0  # GPTQ reserve comes out of the training time
    opts = build_optimizers(_toy(), optim)
    scale = sched.update(opts, step=50, elapsed_ms=60_000.0)  # 75% of the budget -> halfway down
    assert scale == pytest.approx(0.1 + 0.9 * 0.5) and sched.last_scale == scale
    assert opts[1].param_groups[0]["lr"] == pytest.approx(optim.matrix_lr * scale)
    assert opts[1].param_groups[0]["momentum"] == pytest.approx(0.955)
    assert sched.progress(50, 60_000.0) == pytest.approx(0.75)
    assert sched.progress(900, 1_000.0) == pytest.approx(0.9)
    assert sched.progress(2000, 0.0) == 1.0
    assert Schedule.from_config(TrainConfig(max_seconds=0.0), optim).budget_ms == 0.0

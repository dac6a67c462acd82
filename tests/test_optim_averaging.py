"""EMA and SWA against their closed forms; state round-trip; factory."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pgolf.config import ConfigError, OptimConfig
from pgolf.errors import InputError
from pgolf.optim.averaging import COUNT_KEY, WeightAverager, make_averager


def _model() -> nn.Module:
    m = nn.Module()
    m.w = nn.Parameter(torch.zeros(3, 4))
    m.b = nn.Parameter(torch.zeros(4))
    return m


def _weights(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"w": torch.randn(3, 4, generator=g, dtype=torch.float64),
             "b": torch.randn(4, generator=g, dtype=torch.float64)} for _ in range(n)]


def _set(model: nn.Module, ws: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(ws[n])


def test_ema_closed_form():
    d, seq = 0.9, _weights(12)
    model, ema = _model(), WeightAverager("ema", decay=d)
    _set(model, seq[0])
    ema.reset(model)  # starts from w_0
    for step, ws in enumerate(seq[1:], start=1):
        _set(model, ws)
        assert ema.update(model, step)
    n = len(seq) - 1
    for name in ("w", "b"):
        # ema_n = d^n w_0 + (1-d) sum_k d^(n-k) w_k
        expected = d ** n * seq[0][name] + (1 - d) * sum(d ** (n - k) * seq[k][name] for k in range(1, n + 1))
        torch.testing.assert_close(ema.averaged()[name].double(), expected, atol=1e-5, rtol=1e-5)


def test_ema_lazy_start_and_disabled_updates():
    seq = _weights(3)
    model, ema = _model(), WeightAverager("ema", decay=0.5)
    assert not ema.ready
    _set(model, seq[0])
    assert ema.update(model, 0)  # first weights seen become the average
    torch.testing.assert_close(ema.averaged()["w"], seq[0]["w"].float())
    _set(model, seq[1])
    assert not ema.update(model, 1, enabled=False)
    torch.testing.assert_close(ema.averaged()["w"], seq[0]["w"].float())
    ema.update(model, 2)
    torch.testing.assert_close(ema.averaged()["w"], (0.5 * seq[0]["w"] + 0.5 * seq[1]["w"]).float())


def test_swa_is_mean_of_snapshots():
    seq = _weights(20)
    model, swa = _model(), WeightAverager("swa", every=3)
    taken = []
    for step, ws in enumerate(seq):
        _set(model, ws)
        enabled = step >= 8  # the trainer switches SWA on late in training
        if swa.update(model, step, enabled=enabled):
            taken.append(step)
    assert taken == [9, 12, 15, 18] and swa.count == 4
    for name in ("w", "b"):
        expected = torch.stack([seq[s][name] for s in taken]).mean(0)
        torch.testing.assert_close(swa.averaged()[name].double(), expected, atol=1e-6, rtol=1e-6)
    swa.copy_to(model)
    torch.testing.assert_close(model.w.detach().double(), torch.stack([seq[s]["w"] for s in taken]).mean(0),
                               atol=1e-6, rtol=1e-6)


def test_swa_not_ready_before_first_snapshot():
    swa = WeightAverager("swa", every=5)
    assert not swa.update(_model(), 3)
    with pytest.raises(RuntimeError, match="no weights averaged"):
        swa.copy_to(_model())


def test_checkpoint_state_round_trip_and_continue():
    seq = _weights(6)
    model, a = _model(), WeightAverager("swa", every=1)
    for step, ws in enumerate(seq[:3]):
        _set(model, ws)
        a.update(model, step)
    state = a.checkpoint_state()
    assert set(state) == {"w", "b", COUNT_KEY} and int(state[COUNT_KEY]) == 3
    assert all(t.dtype == torch.float32 for k, t in state.items() if k != COUNT_KEY)
    b = WeightAverager("swa", every=1)
    b.load_checkpoint_state(state)
    for step, ws in enumerate(seq[3:], start=3):
        _set(model, ws)
        a.update(model, step)
        b.update(model, step)
    torch.testing.assert_close(a.averaged()["w"], b.averaged()["w"])
    torch.testing.assert_close(b.averaged()["w"].double(), torch.stack([s["w"] for s in seq]).mean(0),
                               atol=1e-6, rtol=1e-6)
    with pytest.raises(InputError, match=COUNT_KEY):
        b.load_checkpoint_state({"w": torch.zeros(3, 4)})


def test_copy_to_keeps_param_dtype_and_rejects_unknown_model():
    model, ema = _model(), WeightAverager("ema", decay=0.9)
    ema.update(model, 0)
    other = nn.Module()
    other.v = nn.Parameter(torch.zeros(2))
    with pytest.raises(InputError, match="'v'"):
        ema.copy_to(other)
    half = _model().half()
    ema.copy_to(half)
    assert half.w.dtype == torch.float16


def test_make_averager():
    assert make_averager(OptimConfig()) is None
    ema = make_averager(OptimConfig(ema_decay=0.997))
    assert ema is not None and ema.mode == "ema" and ema.decay == 0.997
    swa = make_averager(OptimConfig(swa_every=50, swa_start_frac=0.6))
    assert swa is not None and swa.mode == "swa" and swa.every == 50 and swa.start_frac == 0.6
    with pytest.raises(ConfigError, match="optim.swa_every"):
        make_averager(OptimConfig(ema_decay=0.9, swa_every=5))
    with pytest.raises(ValueError, match="decay"):
        WeightAverager("ema", decay=1.0)

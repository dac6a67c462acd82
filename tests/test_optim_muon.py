"""Muon: Newton-Schulz variants, update scaling, momentum, weight decay, MuonEq-R, distributed step."""
from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgolf.config import ConfigError
from pgolf.optim import muon as muon_mod
from pgolf.optim.muon import (NS_FIXED, POLAR_EXPRESS, Muon, ns_coefficients, orthogonalized_update, row_normalize,
                              zeropower_via_newtonschulz)


def _svals(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(x.double())


def _with_spectrum(rows: int, cols: int, s: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(s), generator=g))
    v, _ = torch.linalg.qr(torch.randn(cols, len(s), generator=g))
    return u @ torch.diag(s) @ v.T


@pytest.mark.parametrize("shape", [(32, 128), (128, 32)])
def test_ns_singular_values_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(1))  # condition number ~3
    fixed = _svals(zeropower_via_newtonschulz(g, 5, NS_FIXED))
    polar = _svals(zeropower_via_newtonschulz(g, 5, POLAR_EXPRESS, safety=0.02))
    # The fixed quintic oscillates around 1 in roughly [0.7, 1.2] instead of converging.
    assert fixed.min() > 0.5 and fixed.max() < 1.5
    assert polar.min() > 0.8 and polar.max() < 1.2
    assert (polar - 1).abs().max() < (fixed - 1).abs().max()


def test_ns_matches_exact_polar_factor_and_orientation():
    s = torch.logspace(0, -2, 24)  # ill-conditioned: singular values from 1 down to 0.01
    g = _with_spectrum(40, 24, s)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh
    for coeffs, safety in ((NS_FIXED, 0.0), (POLAR_EXPRESS, 0.02)):
        o = zeropower_via_newtonschulz(g, 5, coeffs, safety=safety)
        cos = (o * polar).sum() / (o.norm() * polar.norm())
        assert cos > 0.9
        # Tall inputs are handled on the wide side: NS(G^T) = NS(G)^T.
        torch.testing.assert_close(zeropower_via_newtonschulz(g.T, 5, coeffs, safety=safety), o.T)
    # Polar Express lifts the small singular values much further in the same 5 steps.
    fixed_min = _svals(zeropower_via_newtonschulz(g, 5, NS_FIXED)).min()
    polar_min = _svals(zeropower_via_newtonschulz(g, 5, POLAR_EXPRESS, safety=0.02)).min()
    assert polar_min > fixed_min + 0.1


def test_ns_zero_and_dtype():
    z = zeropower_via_newtonschulz(torch.zeros(8, 16), 5)
    assert torch.equal(z, torch.zeros(8, 16))
    g = torch.randn(8, 16, dtype=torch.float64)
    assert zeropower_via_newtonschulz(g, 3, dtype=torch.float32).dtype == torch.float64
    with pytest.raises(ValueError, match="2-D"):
        zeropower_via_newtonschulz(torch.randn(2, 3, 4), 5)


def test_ns_coefficient_tables():
    assert ns_coefficients("fixed", 3) == [NS_FIXED] * 3
    assert ns_coefficients("polar_express", 5) == list(POLAR_EXPRESS)
    for a, b, c in POLAR_EXPRESS:  # each quintic is increasing near 0: p'(0) = a > 1
        assert a > 1 and b < 0 and c > 0
    with pytest.raises(ConfigError, match="optim.muon_ns_steps"):
        ns_coefficients("polar_express", 6)
    with pytest.raises(ConfigError, match="optim.muon_ns_coeffs"):
        ns_coefficients("cubic", 5)


def _one_step(p0: torch.Tensor, grads: list[torch.Tensor], **kw) -> torch.Tensor:
    p = torch.nn.Parameter(p0.clone())
    opt = Muon([p], **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


@pytest.mark.parametrize("shape,factor", [((64, 16), 2.0), ((16, 64), 1.0), ((32, 32), 1.0)])
def test_update_shape_scaling(shape, factor):
    g = torch.randn(*shape)
    p = _one_step(torch.zeros(shape), [g], lr=1.0, momentum=0.0)
    expected = zeropower_via_newtonschulz(g, 5, NS_FIXED) * factor
    torch.testing.assert_close(p, -expected)
    assert math.isclose(factor, math.sqrt(max(1.0, shape[0] / shape[1])))


@pytest.mark.parametrize("nesterov", [True, False])
def test_momentum_and_nesterov(nesterov):
    mu = 0.9
    g1, g2 = torch.randn(16, 24), torch.randn(16, 24)
    p = _one_step(torch.zeros(16, 24), [g1, g2], lr=1.0, momentum=mu, nesterov=nesterov)
    m1 = g1
    m2 = mu * m1 + g2
    u1, u2 = (g1 + mu * m1, g2 + mu * m2) if nesterov else (m1, m2)
    expected = -(orthogonalized_update(u1) + orthogonalized_update(u2))
    torch.testing.assert_close(p, expected, atol=1e-5, rtol=1e-5)
    other = _one_step(torch.zeros(16, 24), [g1, g2], lr=1.0, momentum=mu, nesterov=not nesterov)
    assert (p - other).abs().max() > 1e-3


def test_weight_decay_is_decoupled():
    p0 = torch.randn(16, 32)
    lr, wd = 0.1, 0.5
    # A zero gradient orthogonalizes to zero: only the decay acts.
    torch.testing.assert_close(_one_step(p0, [torch.zeros(16, 32)], lr=lr, weight_decay=wd), p0 * (1 - lr * wd))
    g = torch.randn(16, 32)
    with_wd = _one_step(p0, [g], lr=lr, momentum=0.0, weight_decay=wd)
    torch.testing.assert_close(with_wd, p0 * (1 - lr * wd) - lr * orthogonalized_update(g))


def test_eq_r_normalizes_rows_before_ns(monkeypatch):
    u = torch.randn(12, 40) * torch.logspace(0, 2, 12)[:, None]  # very unequal row norms
    torch.testing.assert_close(row_normalize(u).norm(dim=1), torch.ones(12))
    torch.testing.assert_close(orthogonalized_update(u, eq_r=True), orthogonalized_update(row_normalize(u)))
    assert (orthogonalized_update(u, eq_r=True) - orthogonalized_update(u)).abs().max() > 1e-2

    seen: list[torch.Tensor] = []
    real = muon_mod.zeropower_via_newtonschulz

    def spy(G, *args, **kwargs):
        seen.append(G.clone())
        return real(G, *args, **kwargs)

    monkeypatch.setattr(muon_mod, "zeropower_via_newtonschulz", spy)
    _one_step(torch.zeros(12, 40), [u], momentum=0.0, eq_r=True)
    _one_step(torch.zeros(12, 40), [u], momentum=0.0, eq_r=False)
    torch.testing.assert_close(seen[0].norm(dim=1), torch.ones(12))
    torch.testing.assert_close(seen[1], u)


def test_eq_r_floors_the_row_norm_like_the_records():
    # upstream: g / g.norm(dim=-1).clamp_min(1e-7); rows with norms near 1e-7 still get unit norm
    u = torch.randn(6, 32, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True) * torch.tensor([1.0, 1e-3, 1e-6, 3e-7, 1e-7, 1e-9], dtype=torch.float64)[:, None]
    got = row_normalize(u).norm(dim=1)
    want = u.norm(dim=1) / torch.clamp(u.norm(dim=1), min=1e-7)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert abs(float(got[2]) - 1.0) < 1e-12 and abs(float(got[5]) - 0.01) < 1e-12  # (n + eps) gives 0.909 and 0.0099


def test_group_lr_and_momentum_are_read_each_step():
    p = torch.nn.Parameter(torch.randn(8, 8))
    p0 = p.detach().clone()
    opt = Muon([p], lr=0.1, momentum=0.5)
    opt.param_groups[0]["lr"] = 0.0
    p.grad = torch.randn(8, 8)
    opt.step()
    torch.testing.assert_close(p.detach(), p0)
    opt.param_groups[0]["momentum"] = 0.0
    g2 = torch.randn(8, 8)
    p.grad = g2
    opt.step()  # momentum 0: buffer becomes exactly g2
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], g2)


def test_rejects_vectors():
    with pytest.raises(ValueError, match="ndim >= 2"):
        Muon([torch.nn.Parameter(torch.zeros(4))])


# ---------------------------------------------------------------------------------------------
# distributed == single process (2-process gloo on CPU)

SHAPES = [(32, 16), (16, 48), (24, 24), (8, 40), (40, 8)]


def _run_steps(steps: int = 3) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s, generator=gen)) for s in SHAPES]
    opt = Muon([dict(params=params[:3]), dict(params=params[3:], ns_coeffs="polar_express", eq_r=True)],
               lr=0.05, momentum=0.9, weight_decay=0.1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach().clone() for p in params], [opt.state[p]["momentum_buffer"].clone() for p in params]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(_run_steps(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_step_matches_single_process(tmp_path):
    single_params, single_bufs = _run_steps()
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        params, bufs = torch.load(tmp_path / f"rank{rank}.pt")
        for a, b in zip(params, single_params):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        for a, b in zip(bufs, single_bufs):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.gpu
def test_cuda_bf16_newtonschulz_and_step():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = torch.randn(256, 1024, device="cuda")
    o = zeropower_via_newtonschulz(g, 5, NS_FIXED)  # bf16 by default on CUDA
    s = _svals(o.float().cpu())
    assert s.min() > 0.5 and s.max() < 1.5
    p = torch.nn.Parameter(torch.zeros(1024, 256, device="cuda"))
    opt = Muon([p], lr=1.0, momentum=0.0)
    p.grad = g.T.contiguous()
    opt.step()
    ref = orthogonalized_update(g.T.cpu(), dtype=torch.float32)
    cos = (p.detach().cpu() * -ref).sum() / (p.detach().cpu().norm() * ref.norm())
    assert cos > 0.99


# ---------------------------------------------------------------------------------------------
# PR #1855's Muon: bf16 momentum, no Polar Express margin (reference written from the record's math)

def _record_ns(G: torch.Tensor, coeffs, eps: float = 1e-7) -> torch.Tensor:
    X = G.bfloat16()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for a, b, c in coeffs:
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if tall else X


def test_ns_without_margin_is_the_records_polar_express():
    g = torch.randn(48, 96, generator=torch.Generator().manual_seed(3))
    for G in (g, g.T):
        ours = zeropower_via_newtonschulz(G, 5, list(POLAR_EXPRESS), torch.bfloat16, safety=0.0)
        assert torch.equal(ours, _record_ns(G, POLAR_EXPRESS).to(G.dtype))
        with_margin = orthogonalized_update(G, 5, "polar_express", dtype=torch.bfloat16)  # the kind's own 2%
        assert not torch.allclose(with_margin, ours, atol=1e-3)


def test_bf16_momentum_steps_as_the_record():
    torch.manual_seed(0)
    shapes = [(64, 64), (96, 32)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [p.detach().clone() for p in ours]
    opt = Muon(ours, lr=0.02, momentum=0.97, ns_coeffs="polar_express", eq_r=True, weight_decay=0.095,
               ns_dtype=torch.bfloat16, ns_safety=0.0, momentum_dtype=torch.bfloat16)
    bufs = [None, None]
    for step in range(3):
        grads = [torch.randn(s, generator=torch.Generator().manual_seed(10 * step + i)) for i, s in enumerate(shapes)]
        for p, g in zip(ours, grads):
            p.grad = g.clone()
        opt.step()
        for i, (w, g) in enumerate(zip(ref, grads)):  # the record: g = grad.bfloat16(), buffer in bf16
            g = g.bfloat16()
            bufs[i] = torch.zeros_like(g) if bufs[i] is None else bufs[i]
            bufs[i].mul_(0.97).add_(g)
            u = g.add(bufs[i], alpha=0.97)
            u = u / u.float().norm(dim=-1, keepdim=True).clamp_min(1e-7).to(u.dtype)
            upd = _record_ns(u, POLAR_EXPRESS)
            w.mul_(1 - 0.02 * 0.095)
            w.add_(upd.float(), alpha=-0.02 * max(1, w.shape[0] / w.shape[1]) ** 0.5)
    for p, w, b in zip(ours, ref, bufs):
        state = opt.state[p]["momentum_buffer"]
        assert state.dtype == torch.bfloat16 and torch.equal(state, b)
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=2e-4)  # the tall scale rounds in bf16 here
    fp32 = Muon([torch.nn.Parameter(torch.randn(8, 8))])
    fp32.param_groups[0]["params"][0].grad = torch.randn(8, 8)
    fp32.step()
    assert next(iter(fp32.state.values()))["momentum_buffer"].dtype == torch.float32


def test_pr1855_muon_settings():
    from pgolf.config import load_config
    o = load_config("pr1855").optim
    assert (o.muon_ns_safety, o.muon_momentum_dtype) == (0.0, "bf16")
    assert load_config("pr1413").optim.muon_ns_safety == -1.0
    with pytest.raises(ConfigError, match=r"optim\.muon_ns_safety"):
        load_config("tiny", ["optim.muon_ns_safety=-0.5"])

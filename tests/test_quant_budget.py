"""LQER, selective pruning, budget arithmetic and pack_model."""
import torch

from pgolf.config import QuantConfig, QuantGroup
import json

from pgolf.quant.budget import budget_totals, format_budget_table, pack_state, quantize_state_dict
from pgolf.quant.container import parse_artifact, serialize_artifact
from pgolf.quant.lqer import apply_lqer
from pgolf.quant.prune import prune_ones
from pgolf.quant.quantizers import QuantizedTensor


def _state(seed=0, d=64):
    g = torch.Generator().manual_seed(seed)
    return {
        "tok_emb.weight": torch.randn(256, d, generator=g) * 0.02,
        "blocks.0.attn.c_q.weight": torch.randn(d, d, generator=g) * 0.05,
        "blocks.0.mlp.fc.weight": torch.randn(4 * d, d, generator=g) * 0.05,
        "blocks.0.mlp.proj.weight": torch.randn(d, 4 * d, generator=g) * 0.05,
        "blocks.0.attn_scale": torch.ones(d),
        "blocks.0.resid_mix": torch.rand(2, d, generator=g),
        "final_bias": torch.randn(d, generator=g),
    }


def _cfg(**kw):
    base = dict(small_tensor_numel=1000, groups=[QuantGroup("*.mlp.*", 5, "sdclip", 4.0, min_scale=0),
                                                 QuantGroup("*.attn.*", 6, "percentile", 100.0, min_scale=0),
                                                 QuantGroup("*", 8, min_scale=0)])
    base.update(kw)
    return QuantConfig(**base)


def test_lqer_reduces_error_and_roundtrips(tmp_path):
    sd = _state()
    q, _ = quantize_state_dict(sd, _cfg())
    before = {n: float((sd[n] - q[n].dequantize()).norm()) for n in q if isinstance(q[n], QuantizedTensor)}
    ratios = apply_lqer(q, sd, rank=4, bits=4, top=2)
    assert len(ratios) == 2 and all(r < 1 for r in ratios.values())
    worst = sorted(before, key=before.get, reverse=True)[:2]
    assert set(ratios) == set(worst)  # largest errors first
    for n in worst:
        assert float((sd[n] - q[n].dequantize()).norm()) < before[n]
        assert q[n].lowrank[0].q.shape == (sd[n].shape[0], 4) and q[n].lowrank[1].q.shape == (4, sd[n].shape[1])
    p = tmp_path / "a.pgolf"
    p.write_bytes(serialize_artifact(q, {}, {}, "zstd"))
    sd2 = {k: v.dequantize() for k, v in parse_artifact(p.read_bytes()).tensors.items()}
    for n in worst:
        assert torch.equal(sd2[n], q[n].dequantize())
    # via the config
    q2, rep = quantize_state_dict(sd, _cfg(lqer_rank=2, lqer_bits=2, lqer_top=0))
    assert len(rep["lqer"]) >= 1 and all(r < 1 for r in rep["lqer"].values())


def test_prune_reaches_target():
    sd = _state()
    q, _ = quantize_state_dict(sd, _cfg(groups=[QuantGroup("*", 4, "sdclip", 6.0, min_scale=0)]))

    def measure(t):
        return len(serialize_artifact(t, {}, {}, "zlib"))

    size0 = measure(q)
    ones = sum(int((v.q.abs() == 1).sum()) for v in q.values() if isinstance(v, QuantizedTensor))
    target = size0 - 1500
    pruned, res = prune_ones(q, measure, target, originals=sd)
    assert res.fits and res.size <= target and measure(pruned) == res.size
    assert 0 < res.pruned <= ones and res.candidates == ones
    changed = 0
    for n, v in pruned.items():
        if isinstance(v, QuantizedTensor):
            d = v.q != q[n].q
            assert bool((q[n].q[d].abs() == 1).all()) and bool((v.q[d] == 0).all())  # only +-1 -> 0
            changed += int(d.sum())
    assert changed == res.pruned
    # pruned entries are the smallest |w| among the +-1s
    cut = max(float(sd[n][(v.q != q[n].q)].abs().max()) for n, v in pruned.items()
              if isinstance(v, QuantizedTensor) and bool((v.q != q[n].q).any()))
    kept = min(float(sd[n][(v.q.abs() == 1)].abs().min()) for n, v in pruned.items()
               if isinstance(v, QuantizedTensor) and bool((v.q.abs() == 1).any()))
    assert cut <= kept
    # unreachable target: everything pruned, fits False
    _, res2 = prune_ones(q, measure, 10)
    assert not res2.fits and res2.pruned == ones
    # already fits: no-op
    same, res3 = prune_ones(q, measure, size0)
    assert res3.pruned == 0 and res3.fits


def test_budget_arithmetic_boundary():
    r = budget_totals(15_000_000, 999_999)
    assert r["total_bytes"] == 15_999_999 and r["fits"]
    r = budget_totals(15_000_000, 1_000_000)
    assert r["total_bytes"] == 16_000_000 and not r["fits"]


def test_pack_state_byte_table():
    sd = _state()
    cfg = _cfg(codec="brotli", byte_shuffle=True)
    packed = pack_state(sd, {"model_dim": 64}, cfg, code_bytes=12_345, meta={"run": "t"})
    rep = packed.report
    assert rep["model_bytes"] == len(packed.blob) and rep["artifact_bytes"] == rep["total_bytes"]
    assert rep["total_bytes"] == rep["model_bytes"] + 12_345 and rep["fits"]
    assert rep["codec"] == "brotli" and len(rep["sha256"]) == 64
    groups = {g["group"]: g for g in rep["groups"]}
    assert groups["*.mlp.* int5"]["params"] == 2 * 4 * 64 * 64
    assert groups["fp32 control"]["params"] == 3 * 64 and groups["fp32 control"]["raw_bytes"] == 3 * 64 * 4
    assert groups["fp16 small"]["raw_bytes"] == 64 * 2
    assert sum(g["params"] for g in rep["groups"]) == sum(t.numel() for t in sd.values())
    # per-group estimates plus framing are close to the real file
    est = sum(g["compressed_bytes"] for g in rep["groups"]) + rep["header_bytes"]
    assert abs(est - rep["model_bytes"]) < 0.1 * rep["model_bytes"]
    art = parse_artifact(packed.blob)
    assert art.config == {"model_dim": 64} and art.meta == {"run": "t"}
    for n, v in packed.quantized.items():
        assert torch.equal(art.tensors[n].dequantize(), v.dequantize())
    assert "OVER" not in format_budget_table(rep) and "12,345" in format_budget_table(rep)
    json.dumps(rep)  # the report is JSON as it is
    # over the limit is reported, not raised
    rep2 = pack_state(sd, {}, cfg, code_bytes=16_000_000, meta={}).report
    assert not rep2["fits"] and "OVER" in format_budget_table(rep2)


def test_pack_state_auto_fit():
    sd = _state()
    cfg = _cfg(codec="zlib")
    base = pack_state(sd, {}, cfg, 0, {}).report
    target = base["model_bytes"] - 3000
    fit_cfg = _cfg(codec="zlib", auto_fit=True, target_bytes=target + 1)
    packed = pack_state(sd, {}, fit_cfg, 0, {})
    rep = packed.report
    assert rep["model_bytes"] <= target and rep["fits_target"]
    assert rep["auto_fit"]["actions"] and (rep["auto_fit"]["clip_mult"] > 1 or rep["auto_fit"]["pruned"] > 0)
    art = parse_artifact(packed.blob)
    for n, v in packed.quantized.items():
        assert torch.equal(art.tensors[n].dequantize(), v.dequantize())


def test_quantize_state_dict_gptq_uses_hessians():
    sd = _state()
    cfg = _cfg(groups=[QuantGroup("*.mlp.fc.weight", 4, "percentile", 100.0, gptq=True, min_scale=0),
                       QuantGroup("*", 8, min_scale=0)])
    g = torch.Generator().manual_seed(5)
    x = torch.randn(512, 4, generator=g) @ torch.randn(4, 64, generator=g) + 0.01 * torch.randn(512, 64, generator=g)
    H = x.T @ x / 512
    q_g, rep = quantize_state_dict(sd, cfg, {"blocks.0.mlp.fc.weight": H})
    q_r, rep_r = quantize_state_dict(sd, cfg)
    assert rep_r["gptq_missing"] == ["blocks.0.mlp.fc.weight"] and rep["gptq_missing"] == []
    w = sd["blocks.0.mlp.fc.weight"]
    err = lambda q: float((x @ w.T - x @ q["blocks.0.mlp.fc.weight"].dequantize().T).norm())
    assert err(q_g) < 0.7 * err(q_r)

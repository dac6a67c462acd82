"""int-k quantizers, clip rules, and the per-tensor plan."""
import pytest
import torch

from pgolf.config import QuantConfig, QuantGroup, load_config
from pgolf.quant.quantizers import (MSE_FRACTIONS, TINY_SCALE, Passthrough, QuantizedTensor, dequantize,
                                    plan_tensor, qmax_for, quantize, row_clip)


def _weights(rows=64, cols=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[3, 7] = 0.9  # an outlier that a percentile clip cuts
    return w


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("clip,value", [("percentile", 99.0), ("percentile", 100.0), ("mse", 0.0), ("sdclip", 3.0)])
def test_error_bound_and_range(bits, clip, value):
    w = _weights()
    q, s = quantize(w, bits, clip, value, min_scale=0.0)
    qm = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert s.dtype == torch.float16 and s.shape == (w.shape[0],)
    assert int(q.abs().max()) <= qm
    assert int(q.abs().max()) == qm  # the grid is actually used up to qmax
    clipv = row_clip(w, bits, clip, value, 0.0)
    deq = dequantize(q, s)
    inside = w.abs() <= clipv[:, None]
    err = (w - deq).abs()
    bound = s.float()[:, None].expand_as(w) / 2
    assert bool((err[inside] <= bound[inside] * (1 + 1e-6) + 1e-12).all())
    # clipped values land on the outermost level of their row
    outside = ~inside
    if outside.any():
        assert bool((q[outside].abs() >= torch.round(clipv[:, None] / s.float()[:, None]).expand_as(w)[outside]
                     .clamp(max=qm).to(torch.int8)).all())


def test_clip_rules_match_definitions():
    w = _weights()
    a = w.abs()
    torch.testing.assert_close(row_clip(w, 8, "percentile", 99.0), torch.quantile(a, 0.99, dim=1))
    torch.testing.assert_close(row_clip(w, 8, "percentile", 100.0), a.amax(dim=1))
    torch.testing.assert_close(row_clip(w, 6, "sdclip", 12.85), 12.85 * w.std(dim=1))
    # mse: per row, the chosen fraction of max has the lowest error among the candidates (brute force)
    c = row_clip(w, 4, "mse", 0.0, min_scale=0.0)
    for r in range(0, w.shape[0], 7):
        errs = []
        for f in MSE_FRACTIONS:
            cf = a[r].max() * f
            s = (cf / 7).to(torch.float16).float()
            q = torch.clamp(torch.round(w[r].clamp(-cf, cf) / s), -7, 7)
            errs.append(float((w[r] - q * s).square().sum()))
        best = MSE_FRACTIONS[min(range(len(errs)), key=errs.__getitem__)]
        assert abs(float(c[r]) - float(a[r].max()) * best) < 1e-6
    # the outlier row: mse and percentile clip below the max
    assert float(c[3]) < float(a[3].max())


def test_mse_clip_beats_max_clip_at_low_bits():
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(1))
    e_mse = (w - dequantize(*quantize(w, 3, "mse", 0.0, 0.0))).square().sum()
    e_max = (w - dequantize(*quantize(w, 3, "percentile", 100.0, 0.0))).square().sum()
    assert e_mse < 0.9 * e_max


def test_scale_floor_options_and_zero_rows():
    w = _weights()
    w[5] = 0.0
    q, s = quantize(w, 8, "percentile", 99.99984, min_scale=-1.0)  # baseline floor 1/127
    assert float(s.float().min()) >= (torch.tensor(1 / 127).half().float().item())
    assert bool((q[5] == 0).all())
    q, s = quantize(w, 6, "sdclip", 12.85, min_scale=0.0)
    assert float(s[5]) == pytest.approx(TINY_SCALE) and torch.isfinite(s.float()).all()
    assert bool((q[5] == 0).all())
    q, s = quantize(w, 6, "percentile", 100.0, min_scale=0.5)
    assert bool((s.float() >= 0.5 - 1e-3).all())
    with pytest.raises(ValueError):
        quantize(w, 9)
    with pytest.raises(ValueError):
        quantize(w[0], 8)  # 1-D never int-quantized


def test_baseline_int8_matches_upstream_formula_and_small_error():
    # independent re-statement of the upstream baseline: quantile clip, scale=max(clip/127, 1/127)
    w = torch.randn(300, 256, generator=torch.Generator().manual_seed(2)) * 0.3
    q, s = quantize(w, 8, "percentile", 99.99984, -1.0)
    clip = torch.quantile(w.abs(), 0.9999984, dim=1)
    ref_s = (clip / 127.0).clamp_min(1.0 / 127.0)
    ref_q = torch.clamp(torch.round(torch.maximum(torch.minimum(w, clip[:, None]), -clip[:, None]) / ref_s[:, None]),
                        -127, 127)
    assert torch.equal(s, ref_s.half())
    # we round on the stored fp16 grid; the upstream fp32 grid differs by at most one step, rarely
    diff = (q.float() - ref_q).abs()
    assert float(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01
    rel = (w - dequantize(q, s)).norm() / w.norm()
    assert float(rel) < 0.01


def test_quantized_tensor_dequantize_restores_dtype_and_nd():
    w = torch.randn(4, 3, 5)
    q, s = quantize(w, 8, "percentile", 100.0, 0.0)
    assert q.shape == (4, 3, 5) and s.shape == (4,)
    qt = QuantizedTensor(q, s, 8, torch.bfloat16)
    out = qt.dequantize()
    assert out.dtype == torch.bfloat16 and out.shape == w.shape
    assert float((out.float() - w).abs().max()) < 0.03


def test_plan_tensor():
    cfg = QuantConfig(groups=[QuantGroup("*.mlp.*", 5, "sdclip", 12.85), QuantGroup("*.attn.*", 6),
                              QuantGroup("tok_emb.weight", 16)], small_tensor_numel=1000)
    big = torch.zeros(64, 64)
    assert plan_tensor("blocks.0.mlp.fc.weight", big, cfg).bits == 5
    p = plan_tensor("blocks.0.attn.c_q.weight", big, cfg)
    assert (p.kind, p.bits, p.clip) == ("int", 6, "percentile")
    assert plan_tensor("tok_emb.weight", big, cfg).kind == "fp16"
    assert plan_tensor("lm_head.weight", big, cfg).kind == "fp16"  # no group matches
    assert plan_tensor("blocks.0.attn_scale", torch.zeros(64), cfg).kind == "fp32"  # control
    assert plan_tensor("blocks.0.attn.q_gain", torch.zeros(8), cfg).group == "fp32 control"
    assert plan_tensor("blocks.0.attn.c_q.bias", torch.zeros(64), cfg).kind == "fp16"  # small
    assert plan_tensor("blocks.0.attn.c_q.weight", torch.zeros(4, 4), cfg).kind == "fp16"
    assert plan_tensor("big_vector", torch.zeros(5000), cfg).kind == "fp16"  # 1-D never int
    assert plan_tensor("blocks.0.mlp.gate.weight", big, cfg).kind == "int"  # big matrix, not control
    assert plan_tensor("step", torch.zeros(3, dtype=torch.long), cfg).kind == "raw"
    cfg32 = QuantConfig(small_dtype="fp32", small_tensor_numel=1000)
    assert plan_tensor("x", torch.zeros(10), cfg32).kind == "fp32"


def test_baseline_recipe_plan():
    cfg = load_config("baseline").quant
    p = plan_tensor("blocks.0.mlp.fc.weight", torch.zeros(1024, 512), cfg)
    assert (p.kind, p.bits, p.clip, p.clip_value, p.min_scale) == ("int", 8, "percentile", 99.99984, -1.0)
    assert plan_tensor("tok_emb.weight", torch.zeros(1024, 512), cfg).kind == "int"
    assert plan_tensor("blocks.0.attn.c_k.weight", torch.zeros(256, 512), cfg).kind == "int"  # 131072 > 65536
    assert plan_tensor("blocks.0.resid_mix", torch.zeros(2, 512), cfg).kind == "fp32"
    assert plan_tensor("skip_weights", torch.zeros(4, 512), cfg).kind == "fp32"
    assert plan_tensor("blocks.0.foo", torch.zeros(512), cfg).kind == "fp16"


def test_passthrough_dequantize():
    p = Passthrough(torch.ones(3, dtype=torch.float16), torch.float32)
    assert p.dequantize().dtype == torch.float32
    assert qmax_for(2) == 1 and qmax_for(8) == 127


def test_small_groups_take_small_2d_tensors_like_the_records_int8_gates():
    from pgolf.config import load_config
    from pgolf.quant.quantizers import plan_tensor, quantize

    cfg = load_config("pr1855").quant
    gate = torch.randn(8, 12, generator=torch.Generator().manual_seed(0))
    plan = plan_tensor("blocks.3.attn.attn_gate", gate, cfg)
    assert (plan.kind, plan.bits, plan.clip, plan.clip_value) == ("int", 8, "percentile", 100.0)
    # other small tensors, and 1-D ones, keep the small-tensor rule
    assert plan_tensor("blocks.3.resid_mix", torch.randn(2, 512), cfg).kind == "fp16"
    assert plan_tensor("blocks.3.attn.q_gain", torch.randn(8), cfg).kind == "fp16"
    assert plan_tensor("blocks.3.resid_mix", torch.randn(2, 512), load_config("pr1413").quant).kind == "fp16"
    # PR #1855's int8 row quantization of the gate, written out independently
    s_ref = (gate.abs().amax(dim=1).clamp_min(1e-10) / 127.0).half()
    q_ref = torch.clamp(torch.round(gate / s_ref.float()[:, None]), -127, 127).to(torch.int8)
    q, s = quantize(gate, 8, "percentile", 100.0, min_scale=0.0)
    assert torch.equal(s, s_ref) and torch.equal(q, q_ref)

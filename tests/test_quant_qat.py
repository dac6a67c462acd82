"""Fake quantization (QAT) and the late-QAT switch under torch.compile."""
import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import QuantConfig, QuantGroup
from pgolf.quant.qat import FakeQuant, attach_qat, late_qat_should_enable, set_qat_enabled
from pgolf.quant.quantizers import dequantize, quantize


class Lin(nn.Linear):
    """CastedLinear-compatible: optional self.qat applied to the weight."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.qat = None

    def forward(self, x):
        w = self.weight
        if self.qat is not None:
            w = self.qat(w)
        return F.linear(x, w.to(x.dtype), self.bias)


def test_fake_quant_forward_and_straight_through_grad():
    w = torch.randn(8, 16, requires_grad=True)
    fq = FakeQuant(5, "sdclip", 3.0, 0.0)
    out = fq(w)
    torch.testing.assert_close(out, dequantize(*quantize(w, 5, "sdclip", 3.0, 0.0)), rtol=0, atol=0)
    g = torch.randn_like(w)
    out.backward(g)
    torch.testing.assert_close(w.grad, g)  # straight-through
    fq.enabled.fill_(0.0)
    assert torch.equal(fq(w), w)
    assert "enabled" not in fq.state_dict()  # run state, not a weight


def test_attach_and_switch():
    m = nn.Sequential(Lin(16, 64, bias=False), nn.ReLU(), Lin(64, 4, bias=False))
    cfg = QuantConfig(qat="late", small_tensor_numel=100, groups=[QuantGroup("0.*", 6, "sdclip", 12.85)])
    names = attach_qat(m, cfg)
    assert names == ["0.weight"]  # "2.weight" matches no group: fp16 passthrough, no fake quant
    assert isinstance(m[0].qat, FakeQuant) and m[2].qat is None
    assert (m[0].qat.bits, m[0].qat.clip, m[0].qat.clip_value) == (6, "sdclip", 12.85)
    assert float(m[0].qat.enabled) == 0.0
    assert set_qat_enabled(m, True) == 1 and float(m[0].qat.enabled) == 1.0
    assert attach_qat(m, QuantConfig(qat="off")) == []
    full = nn.Sequential(Lin(16, 64, bias=False))
    attach_qat(full, QuantConfig(qat="full", small_tensor_numel=100))
    assert float(full[0].qat.enabled) == 1.0
    assert late_qat_should_enable(0.1, cfg) and not late_qat_should_enable(0.2, cfg)
    assert not late_qat_should_enable(0.0, QuantConfig(qat="full"))


def _compiled(model):
    """Try inductor (exact fp16 cast emulation), fall back to aot_eager if no compiler works here."""
    import torch._inductor.config as icfg

    torch._dynamo.reset()
    x = torch.randn(3, 16)
    try:
        with icfg.patch(emulate_precision_casts=True):
            cm = torch.compile(model, backend="inductor", fullgraph=True)
            cm(x)
        return cm, "inductor"
    except Exception:
        torch._dynamo.reset()
        return torch.compile(model, backend="aot_eager", fullgraph=True), "aot_eager"


def test_late_qat_switches_on_under_compile():
    import torch._inductor.config as icfg

    torch.manual_seed(0)
    m = Lin(16, 8, bias=False)
    cfg = QuantConfig(qat="late", small_tensor_numel=0, groups=[QuantGroup("*", 4, "percentile", 99.9, min_scale=0)])
    attach_qat(m, cfg)
    x = torch.randn(3, 16)
    with icfg.patch(emulate_precision_casts=True):
        cm, backend = _compiled(m)
        with torch._dynamo.config.patch(error_on_recompile=True):
            off = cm(x)
            set_qat_enabled(m, True)  # in-place buffer write: no recompilation allowed
            on = cm(x)
    plain = x @ m.weight.T
    fq = x @ dequantize(*quantize(m.weight, 4, "percentile", 99.9, 0.0)).T
    torch.testing.assert_close(off, plain)
    torch.testing.assert_close(on, fq, rtol=0, atol=1e-6)
    assert float((on - off).detach().abs().max()) > 1e-3, backend
    set_qat_enabled(m, False)
    torch.testing.assert_close(cm(x), plain)

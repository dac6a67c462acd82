"""GPTQ against round-to-nearest, Hessian collection, self-generated calibration."""
import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import QuantConfig, QuantGroup
from pgolf.quant.gptq import (HessianCollector, collect_hessians, gptq_quantize, hessian_targets,
                              self_generated_batches)
from pgolf.quant.quantizers import dequantize, quantize


def _correlated_inputs(n=2048, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 8, generator=g)
    mix = torch.randn(8, d, generator=g)
    x = z @ mix + 0.05 * torch.randn(n, d, generator=g)  # rank-8 signal: strongly correlated columns
    x[:, 5] = 0.0  # a dead input column
    return x


def test_gptq_beats_rtn_on_correlated_inputs():
    x = _correlated_inputs()
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(1)) * 0.1
    H = x.T @ x / x.shape[0]
    for bits, clip, val in [(4, "percentile", 100.0), (3, "mse", 0.0), (6, "sdclip", 4.0)]:
        q_r, s_r = quantize(w, bits, clip, val, 0.0)
        q_g, s_g = gptq_quantize(w, H, bits, clip, val, 0.0, damp=0.01, block=16)
        assert torch.equal(s_g, s_r)  # same grid
        qm = 2 ** (bits - 1) - 1
        assert q_g.dtype == torch.int8 and int(q_g.abs().max()) <= qm
        err_r = (x @ w.T - x @ dequantize(q_r, s_r).T).norm()
        err_g = (x @ w.T - x @ dequantize(q_g, s_g).T).norm()
        assert err_g < 0.7 * err_r, (bits, float(err_g), float(err_r))
        assert bool((q_g[:, 5] == 0).all())  # dead column


def test_gptq_without_act_order_and_identity_hessian_equals_rtn():
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(3))
    q_r, _ = quantize(w, 5, "percentile", 100.0, 0.0)
    q_g, _ = gptq_quantize(w, torch.eye(32), 5, "percentile", 100.0, 0.0, act_order=False, block=8)
    assert torch.equal(q_g, q_r)  # diagonal H: no error feedback across columns


class _Toy(nn.Module):
    def __init__(self, vocab=32, d=16):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.fc = nn.Linear(d, d, bias=False)
        self.head_input_probe = nn.Identity()

    def forward(self, idx):
        h = torch.tanh(self.fc(self.tok_emb(idx)))
        h = F.rms_norm(h, (h.shape[-1],))
        return F.linear(self.head_input_probe(h), self.tok_emb.weight)


def test_hessian_collector_matches_direct_computation():
    torch.manual_seed(0)
    m = _Toy()
    batches = [torch.randint(0, 32, (2, 10)) for _ in range(3)]
    hs = collect_hessians(m, batches, {"fc": "fc.weight", "head_input_probe": "tok_emb.weight"})
    xs_fc = torch.cat([m.tok_emb(b).reshape(-1, 16) for b in batches]).double()
    torch.testing.assert_close(hs["fc.weight"], (xs_fc.T @ xs_fc / xs_fc.shape[0]).float())
    with torch.no_grad():
        hh = torch.cat([F.rms_norm(torch.tanh(m.fc(m.tok_emb(b))), (16,)).reshape(-1, 16) for b in batches]).double()
    torch.testing.assert_close(hs["tok_emb.weight"], (hh.T @ hh / hh.shape[0]).float())
    # hooks are removed afterwards
    assert all(len(mod._forward_hooks) == 0 for mod in m.modules())
    col = HessianCollector(m, ["fc"])
    m(batches[0])
    col.remove()
    assert col.rows["fc.weight"] == 20


def test_hessian_targets():
    m = _Toy()
    m.fc2 = nn.Linear(16, 1024, bias=False)  # big enough to be int-quantized
    cfg = QuantConfig(small_tensor_numel=100, groups=[QuantGroup("fc2.*", 6, gptq=True),
                                                      QuantGroup("tok_emb.weight", 8, gptq=True), QuantGroup("*", 8)])
    t = hessian_targets(m, cfg)
    assert t == {"fc2": "fc2.weight", "head_input_probe": "tok_emb.weight"}


def test_self_generated_batches_deterministic():
    torch.manual_seed(0)
    m = _Toy()
    a = self_generated_batches(m, n=5, seq_len=6, temperature=0.8, seed=7, vocab_size=32, bos_id=1, batch_size=2)
    b = self_generated_batches(m, n=5, seq_len=6, temperature=0.8, seed=7, vocab_size=32, bos_id=1, batch_size=2)
    assert [x.shape for x in a] == [(2, 6), (2, 6), (1, 6)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(bool((x[:, 0] == 1).all()) and int(x.max()) < 32 for x in a)
    g = self_generated_batches(m, n=1, seq_len=4, temperature=0.0, seed=0, vocab_size=32)[0]
    # greedy: each next token is the argmax given the prefix
    for t in range(1, 4):
        assert int(m(g[:, :t])[0, -1].argmax()) == int(g[0, t])

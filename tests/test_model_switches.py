"""One invariant per architecture switch, plus causality and document isolation for every switch.

Tiny dims (d=32, vocab 64, T=32). Zero-initialized projections and gates are re-initialized with
noise where a test would otherwise pass trivially.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pgolf.config import ModelConfig, load_config, ConfigError
from pgolf.model.attention import CausalSelfAttention, exclusive_self_attention
from pgolf.model.embed import BigramHash
from pgolf.model.gpt import GPT, layer_schedule
from pgolf.model.layers import Rotary, rms_norm
from pgolf.model.mlp import MLP

BOS = 1
V = 64


def tiny_cfg(**overrides) -> ModelConfig:
    """4 layers, d=32, 2 heads / 1 KV head (head_dim 16), vocab 64."""
    base = dict(vocab_size=V, num_layers=4, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2.0, bos_id=BOS)
    base.update(overrides)
    return ModelConfig(**base)


def randomize_(model: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def build(cfg: ModelConfig, seed: int = 0, randomize: bool = True) -> GPT:
    torch.manual_seed(seed)
    m = GPT(cfg).eval()
    if randomize:
        randomize_(m, seed=seed)
    m.set_recurrence(True)  # no-op unless the config has a recurrence range
    return m


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    """Random non-BOS tokens."""
    return torch.randint(2, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# causality and document isolation, per switch and all at once

SWITCHES: dict[str, dict] = {
    "baseline": {},
    "mlp3x": dict(mlp_mult=3.0),
    "leaky_relu2": dict(activation="leaky_relu2"),
    "swiglu": dict(activation="swiglu"),
    "xsa_last2": dict(xsa_last_n=2),
    "xsa_all": dict(xsa_last_n=-1),
    "partial_rope": dict(rope_dims=8),
    "ntk": dict(rope_train_len=16),
    "ln_scale": dict(ln_scale=True),
    "qk_gain5": dict(qk_gain_init=5.0),
    "smear_v1": dict(smear_gate="v1"),
    "smear_v2": dict(smear_gate="v2"),
    "bigram": dict(bigram_buckets=32, bigram_dim=8),
    "ortho_init": dict(ortho_init=True, model_dim=64, num_heads=4, num_kv_heads=2),
    "skip_gates": dict(skip_gates=True),
    "no_unet": dict(unet_skips=False),
    "value_embed": dict(value_embed_layers=2, value_embed_dim=8),
    "recurrence": dict(recur_start=1, recur_end=2, recur_repeats=2),
    "parallel": dict(parallel_from=2),
    "attn_gate": dict(attn_out_gate=True),
    "sparse_gate": dict(sparse_attn_gate=True, sparse_attn_gate_scale=0.5),
    "flex_docs": dict(doc_attention="flex"),
    "untied": dict(tie_embeddings=False),
    "no_softcap": dict(logit_softcap=0.0),
}
SWITCHES["all"] = {k: v for sw in SWITCHES.values() for k, v in sw.items()}
SWITCHES["all"].update(activation="leaky_relu2", xsa_last_n=-1, smear_gate="v2", model_dim=64, num_layers=6,
                       num_heads=4, num_kv_heads=2, parallel_from=4, rope_train_len=16)
SWITCHES["all"].update(attn_out_gate=False, prev_token_bos_mask=True)  # the two output gates are exclusive
SWITCHES["all_swiglu_v1"] = dict(SWITCHES["all"], activation="swiglu", smear_gate="v1", xsa_last_n=3,
                                 attn_out_gate=True, sparse_attn_gate=False, prev_token_bos_mask=False)
SWITCHES["bigram_normal_bos_mask"] = dict(bigram_buckets=32, bigram_dim=8, bigram_init="normal", smear_gate="v1",
                                          prev_token_bos_mask=True)


def _with_bos(idx: torch.Tensor) -> torch.Tensor:
    idx = idx.clone()
    idx[0, 0] = BOS
    idx[0, 11] = BOS
    idx[1, 20] = BOS
    return idx


@pytest.mark.parametrize("doc_isolated", [False, True])
@pytest.mark.parametrize("name", list(SWITCHES))
def test_causality_future_tokens_never_change_past_logits(name: str, doc_isolated: bool) -> None:
    model = build(tiny_cfg(**SWITCHES[name]))
    idx = _with_bos(tokens(2, 32))
    with torch.no_grad():
        ref = model(idx, doc_isolated=doc_isolated)
        for t in (3, 11, 24):
            other = idx.clone()
            other[:, t + 1:] = tokens(2, 31 - t, seed=t + 7)
            out = model(other, doc_isolated=doc_isolated)
            torch.testing.assert_close(out[:, : t + 1], ref[:, : t + 1], rtol=0, atol=1e-5)
            # non-vacuous: the changed future does change later logits
            assert (out[:, t + 1:] - ref[:, t + 1:]).abs().max() > 1e-4


# NTK scaling depends on the window length by design (the base stretches with T), so a doc scored in a
# longer window sees a different base; that is not a cross-document leak.
DOC_SWITCHES = [n for n in SWITCHES if not SWITCHES[n].get("rope_train_len")]


@pytest.mark.parametrize("name", DOC_SWITCHES)
def test_doc_isolated_logits_match_the_document_alone(name: str) -> None:
    model = build(tiny_cfg(**SWITCHES[name]))
    doc1 = tokens(1, 13, seed=1)
    doc1[0, 0] = BOS
    doc2 = tokens(1, 19, seed=2)
    doc2[0, 0] = BOS
    with torch.no_grad():
        both = model(torch.cat((doc1, doc2), dim=1), doc_isolated=True)
        alone = model(doc2, doc_isolated=True)
        torch.testing.assert_close(both[:, 13:], alone, rtol=0, atol=1e-5)
        # Without isolation doc2's logits do depend on doc1 (so the check above is not vacuous).
        leaky = model(torch.cat((doc1, doc2), dim=1), doc_isolated=False)
        assert (leaky[:, 13:] - alone).abs().max() > 1e-4


def test_reduction_none_is_per_token_nll_and_mean_matches() -> None:
    model = build(tiny_cfg())
    idx, tgt = tokens(2, 16), tokens(2, 16, seed=3)
    with torch.no_grad():
        nll = model(idx, tgt, reduction="none")
        logits = model(idx)
        ref = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), reduction="none").view(2, 16)
        torch.testing.assert_close(nll, ref)
        torch.testing.assert_close(model(idx, tgt), ref.mean())
    with pytest.raises(ValueError, match="reduction"):
        model(idx, tgt, reduction="sum")


# ---------------------------------------------------------------------------------------------
# MLP: width and activations


@pytest.mark.parametrize("mult,hidden", [(2.0, 64), (3.0, 96), (4.0, 128), (2.5, 80)])
def test_mlp_hidden_width(mult: float, hidden: int) -> None:
    mlp = MLP(tiny_cfg(mlp_mult=mult))
    assert mlp.fc.weight.shape == (hidden, 32) and mlp.proj.weight.shape == (32, hidden)


@pytest.mark.parametrize("activation", ["relu2", "leaky_relu2", "swiglu"])
def test_mlp_activation_values(activation: str) -> None:
    mlp = MLP(tiny_cfg(model_dim=4, num_heads=1, num_kv_heads=1, mlp_mult=1.0, activation=activation))
    with torch.no_grad():
        for lin in (mlp.fc, mlp.proj) + ((mlp.gate,) if mlp.gate is not None else ()):
            lin.weight.copy_(torch.eye(4))
    x = torch.tensor([[-2.0, -0.5, 0.5, 3.0]])
    expected = {
        "relu2": [0.0, 0.0, 0.25, 9.0],
        "leaky_relu2": [1.0, 0.0625, 0.25, 9.0],  # (0.5 * x)^2 for x < 0
        "swiglu": [v * v / (1 + math.exp(-v)) for v in (-2.0, -0.5, 0.5, 3.0)],  # silu(x) * x
    }[activation]
    torch.testing.assert_close(mlp(x), torch.tensor([expected]))
    assert (mlp.gate is not None) == (activation == "swiglu")


def test_mlp_output_projection_zero_at_init() -> None:
    mlp = MLP(tiny_cfg())
    assert torch.count_nonzero(mlp.proj.weight) == 0
    assert torch.count_nonzero(mlp(torch.randn(2, 5, 32))) == 0


# ---------------------------------------------------------------------------------------------
# XSA


def test_xsa_output_orthogonal_to_own_value_gqa() -> None:
    torch.manual_seed(0)
    y, v = torch.randn(2, 6, 7, 16), torch.randn(2, 3, 7, 16)  # 6 query heads share 3 KV heads
    out = exclusive_self_attention(y, v)
    for h in range(6):
        vh = v[:, h // 2]  # SDPA enable_gqa maps query head h to KV head h // (H / Hkv)
        assert (out[:, h] * vh).sum(-1).abs().max() < 1e-5
        removed = y[:, h] - out[:, h]  # what XSA removed is parallel to v
        cos = F.cosine_similarity(removed, vh, dim=-1).abs()
        assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)


def test_xsa_inside_attention_module() -> None:
    """Capture the proj input (attention output) and c_v output of a live layer: orthogonal per head."""
    cfg = tiny_cfg(model_dim=64, num_heads=4, num_kv_heads=2, xsa_last_n=1)
    attn = CausalSelfAttention(cfg, layer_idx=3)
    assert attn.use_xsa
    seen = {}
    attn.c_v.register_forward_hook(lambda m, i, o: seen.__setitem__("v", o))
    attn.proj.register_forward_pre_hook(lambda m, i: seen.__setitem__("y", i[0]))
    attn(torch.randn(2, 9, 64))
    y = seen["y"].view(2, 9, 4, 16)
    v = seen["v"].view(2, 9, 2, 16)
    for h in range(4):
        assert (y[:, :, h] * v[:, :, h // 2]).sum(-1).abs().max() < 1e-5


@pytest.mark.parametrize("n,expected", [(0, [0, 0, 0, 0]), (2, [0, 0, 1, 1]), (4, [1, 1, 1, 1]), (-1, [1, 1, 1, 1])])
def test_xsa_layers(n: int, expected: list[int]) -> None:
    model = GPT(tiny_cfg(xsa_last_n=n))
    assert [int(b.attn.use_xsa) for b in model.blocks] == expected


# ---------------------------------------------------------------------------------------------
# RoPE: partial and NTK


def test_partial_rope_rotates_only_the_first_dims_by_position() -> None:
    dims, base, T = 8, 10000.0, 12
    rot = Rotary(dims, base)
    vec = torch.randn(16)
    x = vec.expand(1, 1, T, 16).clone()
    out = rot(x)
    torch.testing.assert_close(out[..., dims:], x[..., dims:], rtol=0, atol=0)  # non-rotary dims untouched
    half = dims // 2
    for t in range(T):
        for i in range(half):
            theta = t * base ** (-2 * i / dims)
            a, b = vec[i].item(), vec[i + half].item()
            assert abs(out[0, 0, t, i].item() - (a * math.cos(theta) + b * math.sin(theta))) < 1e-5
            assert abs(out[0, 0, t, i + half].item() - (-a * math.sin(theta) + b * math.cos(theta))) < 1e-5
    torch.testing.assert_close(out[0, 0, 0], vec)  # position 0 is not rotated


def test_rope_scores_depend_only_on_relative_position() -> None:
    rot = Rotary(8)
    q, k = torch.randn(16), torch.randn(16)
    rq = rot(q.expand(1, 1, 20, 16).clone())[0, 0]
    rk = rot(k.expand(1, 1, 20, 16).clone())[0, 0]
    assert abs(rq[7] @ rk[3] - rq[15] @ rk[11]) < 1e-4
    assert abs(rq[7] @ rk[3] - rq[7] @ rk[5]) > 1e-4


def test_ntk_changes_the_base_only_beyond_training_length() -> None:
    plain, ntk = Rotary(8, 10000.0), Rotary(8, 10000.0, train_len=16)
    for T in (4, 16):
        for a, b in zip(ntk.tables(T, torch.device("cpu"), torch.float32), plain.tables(T, torch.device("cpu"), torch.float32)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    stretched = Rotary(8, 10000.0 * 2.0 ** (8 / 6))  # T / train_len = 2, exponent dims / (dims - 2)
    for a, b, c in zip(ntk.tables(32, torch.device("cpu"), torch.float32),
                       stretched.tables(32, torch.device("cpu"), torch.float32),
                       plain.tables(32, torch.device("cpu"), torch.float32)):
        torch.testing.assert_close(a, b)
        assert (a - c).abs().max() > 1e-3


def test_rope_tables_from_inference_mode_do_not_break_training() -> None:
    """Validation under inference_mode before the first training step (e.g. warmup_steps=0) must not
    leave inference tensors in the RoPE cache."""
    model = GPT(tiny_cfg(rope_dims=8))
    idx = tokens(2, 16)
    with torch.inference_mode():
        model(idx)
    model(idx, idx).backward()
    assert model.blocks[0].attn.c_q.weight.grad is not None


# ---------------------------------------------------------------------------------------------
# LN scale, QK gain


def test_ln_scale_multiplies_norm_output_by_inverse_sqrt_depth() -> None:
    model = build(tiny_cfg(ln_scale=True))
    rms = {}
    for i, b in enumerate(model.blocks):
        b.attn.register_forward_pre_hook(lambda m, a, i=i: rms.__setitem__(("attn", i), a[0].pow(2).mean(-1).sqrt()))
        b.mlp.register_forward_pre_hook(lambda m, a, i=i: rms.__setitem__(("mlp", i), a[0].pow(2).mean(-1).sqrt()))
    with torch.no_grad():
        model(tokens(2, 8))
    for (kind, i), r in rms.items():
        torch.testing.assert_close(r, torch.full_like(r, (i + 1) ** -0.5), atol=1e-4, rtol=0)
    assert len(rms) == 8
    plain = GPT(tiny_cfg())
    x = torch.randn(3, 32)
    torch.testing.assert_close(plain.blocks[3]._norm(x), rms_norm(x))


@pytest.mark.parametrize("gain", [1.5, 4.0, 5.0, 5.25])
def test_qk_gain_init(gain: float) -> None:
    model = GPT(tiny_cfg(qk_gain_init=gain))
    for b in model.blocks:
        assert b.attn.q_gain.shape == (2,)
        torch.testing.assert_close(b.attn.q_gain.detach(), torch.full((2,), gain))


def test_qk_gain_scales_attention_logits() -> None:
    """A larger gain sharpens attention: entropy of the attention pattern drops (q and k are RMS-normed)."""
    torch.manual_seed(0)
    cfg = tiny_cfg(num_heads=1, num_kv_heads=1)
    x = torch.randn(1, 16, 32)
    ents = []
    for gain in (0.5, 5.0):
        attn = CausalSelfAttention(replace_cfg(cfg, qk_gain_init=gain), 0)
        torch.manual_seed(1)
        for lin in (attn.c_q, attn.c_k):
            torch.nn.init.normal_(lin.weight)
        q = rms_norm(attn.c_q(x).view(1, 16, 1, 32).transpose(1, 2))
        k = rms_norm(attn.c_k(x).view(1, 16, 1, 32).transpose(1, 2))
        q, k = attn.rotary(q), attn.rotary(k)
        s = (q * attn.q_gain[0]) @ k.transpose(-1, -2) / math.sqrt(32)
        p = s.masked_fill(~torch.ones(16, 16, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        ents.append(-(p * p.clamp_min(1e-12).log()).sum(-1).mean().item())
    assert ents[1] < ents[0] - 0.5


def replace_cfg(cfg: ModelConfig, **kw) -> ModelConfig:
    import dataclasses
    return dataclasses.replace(cfg, **kw)


# ---------------------------------------------------------------------------------------------
# SmearGate and BigramHash: previous-token terms cut at BOS


@pytest.mark.parametrize("sw", [dict(smear_gate="v1"), dict(smear_gate="v2"), dict(bigram_buckets=32, bigram_dim=8),
                                dict(smear_gate="v2", bigram_buckets=32, bigram_dim=8)])
def test_previous_doc_never_reaches_embedding_at_bos_and_after(sw: dict) -> None:
    model = build(tiny_cfg(**sw, prev_token_bos_mask=True))
    idx = tokens(2, 20)
    idx[:, 8] = BOS
    other = idx.clone()
    other[:, :8] = tokens(2, 8, seed=5)  # a different previous document
    with torch.no_grad():
        a, b = model.embed(idx), model.embed(other)
    torch.testing.assert_close(a[:, 8:], b[:, 8:], rtol=0, atol=0)
    # ...but within a document the previous token does matter (the switch is live).
    assert (a[:, 1:8] - b[:, 1:8]).abs().max() > 1e-4
    # and position 1 mixes in token 0: changing only token 0 changes position 1
    only0 = idx.clone()
    only0[:, 0] = (idx[:, 0] + 1 - 2) % (V - 2) + 2
    with torch.no_grad():
        c = model.embed(only0)
    assert (c[:, 1] - a[:, 1]).abs().max() > 1e-5


@pytest.mark.parametrize("sw", [dict(smear_gate="v1"), dict(bigram_buckets=32, bigram_dim=8)])
def test_unmasked_records_mix_documents_except_in_doc_isolated_eval(sw: dict) -> None:
    model = build(tiny_cfg(**sw))  # the records' default: no BOS mask
    idx = tokens(2, 20)
    idx[:, 8] = BOS
    other = idx.clone()
    other[:, 7] = (idx[:, 7] + 1 - 2) % (V - 2) + 2  # the previous document's last token
    with torch.no_grad():
        assert (model.embed(idx)[:, 8] - model.embed(other)[:, 8]).abs().max() > 1e-5
        torch.testing.assert_close(model.embed(idx, doc_isolated=True)[:, 8:],
                                   model.embed(other, doc_isolated=True)[:, 8:], rtol=0, atol=0)


def test_smear_v1_unmasked_is_the_records_formula() -> None:
    model = build(tiny_cfg(smear_gate="v1"))
    idx = tokens(1, 10)
    idx[0, 4] = BOS
    with torch.no_grad():
        x = rms_norm(model.tok_emb(idx))
        out = model.embed(idx)
        g = torch.sigmoid(model.smear.gate)
    prev = torch.cat((torch.zeros_like(x[:, :1]), x[:, :-1]), dim=1)  # PR #493: (1 - g) x + g x_prev
    torch.testing.assert_close(out, (1 - g) * x + g * prev, rtol=0, atol=0)


def test_smear_v1_formula_and_bos_mask() -> None:
    model = build(tiny_cfg(smear_gate="v1", prev_token_bos_mask=True))
    idx = tokens(1, 10)
    idx[0, 4] = BOS
    with torch.no_grad():
        x = rms_norm(model.tok_emb(idx))
        out = model.embed(idx)
        g = torch.sigmoid(model.smear.gate)
    for t in range(10):
        exp = x[0, t] if t in (0, 4) else (1 - g) * x[0, t] + g * x[0, t - 1]
        torch.testing.assert_close(out[0, t], exp)


def test_smear_v2_identity_at_init_and_formula() -> None:
    model = build(tiny_cfg(smear_gate="v2"), randomize=False)
    idx = tokens(1, 10)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(idx), rms_norm(model.tok_emb(idx)))  # W, lambda zero-init
        model.smear.gate.normal_()
        model.smear.smear_lambda.fill_(0.7)
        x = rms_norm(model.tok_emb(idx))
        out = model.embed(idx)
    t = 5
    g = torch.sigmoid(x[0, t, :12] @ model.smear.gate)
    torch.testing.assert_close(out[0, t], x[0, t] + 0.7 * g * x[0, t - 1])
    torch.testing.assert_close(out[0, 0], x[0, 0])


def test_bigram_bucket_ids_unmasked_are_the_records_hash() -> None:
    bh = BigramHash(tiny_cfg(bigram_buckets=50, bigram_dim=8))
    idx = torch.tensor([[5, 9, BOS, 7, 63, 2]])
    t = idx.to(torch.int32)  # PR #493: position 0 -> mod, else (36313 cur ^ 27191 prev) % mod
    want = torch.cat((torch.full((1, 1), 49), torch.bitwise_xor(36313 * t[:, 1:], 27191 * t[:, :-1]) % 49), dim=1)
    assert bh.bucket_ids(idx).tolist() == want.long().tolist()


def test_bigram_record_init_zero_table_orthogonal_scaled_projection() -> None:
    cfg = tiny_cfg(bigram_buckets=32, bigram_dim=64, model_dim=64, num_heads=4, num_kv_heads=2, num_layers=6)
    model = GPT(cfg)
    assert torch.count_nonzero(model.bigram.table.weight) == 0
    w = model.bigram.proj.weight.double() * math.sqrt(2 * 6)  # orthogonal / sqrt(2 * layers)
    torch.testing.assert_close(w @ w.T, torch.eye(64, dtype=torch.float64), rtol=0, atol=1e-5)
    small = GPT(tiny_cfg(bigram_buckets=32, bigram_dim=8))  # a side < 64: the records leave it zero
    assert torch.count_nonzero(small.bigram.proj.weight) == 0
    normal = GPT(tiny_cfg(bigram_buckets=32, bigram_dim=8, bigram_init="normal"))
    assert torch.count_nonzero(normal.bigram.proj.weight) == 0
    assert 0.015 < float(normal.bigram.table.weight.std()) < 0.025


def test_bigram_bucket_ids() -> None:
    bh = BigramHash(tiny_cfg(bigram_buckets=50, bigram_dim=8, prev_token_bos_mask=True))
    idx = torch.tensor([[5, 9, BOS, 7, 63, 2]])
    ids = bh.bucket_ids(idx)[0].tolist()
    assert ids[0] == 49 and ids[2] == 49  # position 0 and BOS: the reserved last bucket
    for t in (1, 3, 4, 5):
        cur, prev = int(idx[0, t]), int(idx[0, t - 1])
        assert ids[t] == ((36313 * cur) ^ (27191 * prev)) % 49
    # BOS bucket does not depend on the previous token
    for prev in range(2, 64):
        assert bh.bucket_ids(torch.tensor([[prev, BOS]]))[0, 1] == 49


def test_bigram_init_zero_output_and_scale() -> None:
    cfg = tiny_cfg(bigram_buckets=32, bigram_dim=8, bigram_scale_init=0.05)
    model = GPT(cfg)
    assert model.bigram.table.weight.shape == (32, 8) and model.bigram.proj.weight.shape == (32, 8)
    assert model.bigram.scale.item() == pytest.approx(0.05)
    assert torch.count_nonzero(model.bigram(tokens(2, 9))) == 0


# ---------------------------------------------------------------------------------------------
# OrthoInit


def test_ortho_init_orthogonal_matrices_and_zero_output_projections() -> None:
    cfg = tiny_cfg(model_dim=64, num_heads=4, num_kv_heads=2, ortho_init=True, value_embed_layers=1,
                   bigram_buckets=16, bigram_dim=64)
    model = GPT(cfg)
    eye = lambda n: torch.eye(n)  # noqa: E731
    for b in model.blocks:
        w = b.attn.c_q.weight.detach()  # 64x64
        torch.testing.assert_close(w @ w.t(), eye(64), atol=1e-5, rtol=0)
        w = b.mlp.fc.weight.detach()  # 128x64: orthonormal columns
        torch.testing.assert_close(w.t() @ w, eye(64), atol=1e-5, rtol=0)
        assert torch.count_nonzero(b.attn.proj.weight) == 0
        assert torch.count_nonzero(b.mlp.proj.weight) == 0
        # c_k is 32x64: a dimension < 64, so it keeps the default init (not orthonormal rows)
        w = b.attn.c_k.weight.detach()
        assert (w @ w.t() - eye(32)).abs().max() > 0.1
    w = model.bigram.proj.weight.detach() * math.sqrt(2 * 4)  # the record init: orthogonal / sqrt(2 * layers)
    torch.testing.assert_close(w @ w.t(), eye(64), atol=1e-5, rtol=0)
    assert all(torch.count_nonzero(p.weight) == 0 for p in model.value_embed.projs)
    plain = GPT(tiny_cfg(model_dim=64, num_heads=4, num_kv_heads=2))
    w = plain.blocks[0].attn.c_q.weight.detach()
    assert (w @ w.t() - eye(64)).abs().max() > 0.1


# ---------------------------------------------------------------------------------------------
# U-Net skips and sigmoid gates


def test_gated_skip_equals_lerp_formula() -> None:
    model = build(tiny_cfg(skip_gates=True))
    h, skip = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    for j in range(model.skip_weights.shape[0]):
        w, g = model.skip_weights[j].detach(), torch.sigmoid(model.skip_gates[j].detach())
        torch.testing.assert_close(model._add_skip(h, skip, j), g * h + (1 - g) * w * skip)
    fresh = GPT(tiny_cfg(skip_gates=True))  # g = 0 -> an even blend of x and the weighted skip
    torch.testing.assert_close(fresh._add_skip(h, skip, 0), 0.5 * (h + skip))
    ungated = GPT(tiny_cfg())
    torch.testing.assert_close(ungated._add_skip(h, skip, 0), h + skip)


def test_unet_skip_tables_sized_for_the_longest_schedule() -> None:
    assert GPT(tiny_cfg()).skip_weights.shape == (2, 32)
    assert GPT(tiny_cfg(num_layers=11)).skip_weights.shape == (5, 32)
    m = GPT(tiny_cfg(num_layers=11, recur_start=4, recur_end=5, recur_repeats=2, skip_gates=True))
    assert m.skip_weights.shape == (7, 32) and m.skip_gates.shape == (7, 32)  # 15 virtual layers
    assert GPT(tiny_cfg(unet_skips=False)).skip_weights is None


# ---------------------------------------------------------------------------------------------
# value embeddings


def test_value_embeddings_only_in_last_layers() -> None:
    model = build(tiny_cfg(value_embed_layers=2, value_embed_dim=8, num_layers=5))
    got = {}
    for i, b in enumerate(model.blocks):
        b.attn.register_forward_pre_hook(lambda m, a, i=i: got.__setitem__(i, a[2]))
    with torch.no_grad():
        model(tokens(1, 6))
    assert [got[i] is not None for i in range(5)] == [False, False, False, True, True]
    assert got[3].shape == (1, 6, 16)  # kv_dim
    fresh = GPT(tiny_cfg(value_embed_layers=2, value_embed_dim=8))  # zero-init projections: no effect at init
    base = GPT(tiny_cfg())
    base.load_state_dict({k: v for k, v in fresh.state_dict().items() if not k.startswith("value_embed")})
    idx = tokens(2, 7)
    with torch.no_grad():
        randomize_(base)
        fresh.load_state_dict({**fresh.state_dict(), **base.state_dict()})
        torch.testing.assert_close(fresh(idx), base(idx))


# ---------------------------------------------------------------------------------------------
# depth recurrence


def test_recurrence_schedule_and_shared_weights() -> None:
    cfg = tiny_cfg(num_layers=5, recur_start=1, recur_end=2, recur_repeats=2)
    assert layer_schedule(cfg, False) == [0, 1, 2, 3, 4]
    assert layer_schedule(cfg, True) == [0, 1, 2, 1, 2, 1, 2, 3, 4]
    model = build(cfg)
    model.set_recurrence(False)
    calls: list[int] = []
    for i, b in enumerate(model.blocks):
        b.register_forward_pre_hook(lambda m, a, i=i: calls.append(i))
    idx = tokens(1, 6)
    n_params = model.num_params()
    with torch.no_grad():
        off = model(idx)
        assert calls == [0, 1, 2, 3, 4] and model.schedule() == calls
        calls.clear()
        model.set_recurrence(True)
        on = model(idx)
    assert calls == [0, 1, 2, 1, 2, 1, 2, 3, 4] and model.schedule() == calls
    assert model.num_params() == n_params and len(model.blocks) == 5  # same parameters, visited again
    assert (on - off).abs().max() > 1e-4
    plain = GPT(tiny_cfg())
    plain.set_recurrence(True)  # no range configured: stays off
    assert plain.schedule() == [0, 1, 2, 3] and not plain.recurrence_active


def test_recurrence_adds_only_skip_rows() -> None:
    a = GPT(tiny_cfg(num_layers=6))
    b = GPT(tiny_cfg(num_layers=6, recur_start=2, recur_end=3, recur_repeats=1))
    assert b.num_params() - a.num_params() == (4 - 3) * 32  # 8 virtual layers: 4 skips instead of 3


# ---------------------------------------------------------------------------------------------
# parallel residual lanes


def test_parallel_lanes_follow_the_records_form() -> None:
    model = build(tiny_cfg(parallel_from=2))
    assert [b.parallel for b in model.blocks] == [False, False, True, True]
    assert tuple(model.parallel_post_lambdas.shape) == (4, 2, 2) and tuple(model.parallel_resid_lambdas.shape) == (4, 2)
    fresh = GPT(tiny_cfg(parallel_from=2))
    assert fresh.parallel_post_lambdas.detach().eq(1).all() and fresh.parallel_resid_lambdas.detach().eq(1.1).all()
    blk = model.blocks[2]
    post, resid = torch.tensor([[0.3, 0.7], [1.2, -0.4]]), torch.tensor([1.1, 0.9])
    with torch.no_grad():
        la, lm, x0 = torch.randn(2, 6, 32), torch.randn(2, 6, 32), torch.randn(2, 6, 32)
        ya, ym = blk.forward_lanes(la, lm, x0, post, resid)
        # PR #1855: attention reads mix(lane0, x0), the MLP reads lane1 as is; post[j] writes sublayer j
        a = blk.attn_scale * blk.attn(blk._norm(blk.resid_mix[0] * la + blk.resid_mix[1] * x0))
        m = blk.mlp_scale * blk.mlp(blk._norm(lm))
        torch.testing.assert_close(ya, 1.1 * la + 0.3 * a + 1.2 * m)
        torch.testing.assert_close(ym, 0.9 * lm + 0.7 * a - 0.4 * m)


def test_parallel_final_hidden_is_mean_of_lanes_and_skips_feed_lane0() -> None:
    model = build(tiny_cfg(parallel_from=3))
    cap = {}
    orig = model.blocks[3].forward_lanes

    def spy(*a, **k):
        cap["in"] = (a[0].clone(), a[1].clone())
        out = orig(*a, **k)
        cap["lanes"] = out
        return out

    model.blocks[3].forward_lanes = spy
    idx = tokens(1, 5)
    with torch.no_grad():
        h = model.hidden(idx)
    xa, xm = cap["lanes"]
    torch.testing.assert_close(h, rms_norm(0.5 * (xa + xm)))
    assert (xa - xm).abs().max() > 1e-4
    # 4 layers: blocks 2 and 3 pop skips; block 3 starts the lanes, its skip goes to lane 0 only
    a_in, m_in = cap["in"]
    assert (a_in - m_in).abs().max() > 1e-4


def test_pr1855_shape_and_params() -> None:
    cfg = load_config("pr1855")
    with torch.device("meta"):
        model = GPT(cfg.model)
    assert model.num_params() == 35_945_671  # the record's model_params
    m = cfg.model
    assert layer_schedule(m, True) == [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10]  # the record's order
    assert [b.parallel for b in model.blocks].index(True) == 8
    assert (m.sparse_attn_gate, m.sparse_attn_gate_scale, m.smear_gate, m.prev_token_bos_mask) == (True, 0.5, "v2", True)
    assert cfg.data.caseops and cfg.quant.codec == "pergroup" and cfg.eval.method == "phased"


def test_sparse_attention_gate_formula_and_half_at_init() -> None:
    cfg = tiny_cfg(sparse_attn_gate=True, sparse_attn_gate_scale=0.5)
    model = build(cfg, randomize=False)
    attn = model.blocks[0].attn
    assert tuple(attn.attn_gate.shape) == (2, 12) and torch.count_nonzero(attn.attn_gate) == 0
    x = torch.randn(1, 7, 32)
    plain = build(tiny_cfg(), randomize=False).blocks[0].attn
    plain.load_state_dict({k: v for k, v in attn.state_dict().items() if k != "attn_gate"})
    with torch.no_grad():
        attn.proj.weight.normal_()
        plain.proj.weight.copy_(attn.proj.weight)
        torch.testing.assert_close(attn(x), 0.5 * plain(x))  # sigmoid(0) = 0.5 on every head
        attn.attn_gate.normal_()
        g = torch.sigmoid(0.5 * x[..., :12] @ attn.attn_gate.t())  # [B, T, H]
        w = plain.proj.weight.clone()
        captured = {}
        plain.proj.register_forward_hook(lambda mod, inp, out: captured.update(y=inp[0]))
        plain(x)
        y = captured["y"].view(1, 7, 2, 16) * g[..., None]
        torch.testing.assert_close(attn(x), y.reshape(1, 7, 32) @ w.t())
    with pytest.raises(ConfigError, match="sparse_attn_gate"):
        tiny_cfg(sparse_attn_gate=True, attn_out_gate=True).check("model")


# ---------------------------------------------------------------------------------------------
# attention output gate


def test_attention_gate_identity_at_init_and_per_head_scaling() -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(model_dim=64, num_heads=4, num_kv_heads=2)
    plain = CausalSelfAttention(cfg, 0)
    gated = CausalSelfAttention(replace_cfg(cfg, attn_out_gate=True), 0)
    sd = plain.state_dict()
    gated.load_state_dict({**gated.state_dict(), **sd})
    with torch.no_grad():
        for a in (plain, gated):
            a.proj.weight.copy_(torch.eye(64))  # identity proj: outputs are the per-head attention outputs
        x = torch.randn(2, 7, 64)
        torch.testing.assert_close(gated(x), plain(x))  # zero-init gate: 2 * sigmoid(0) = 1
        gated.out_gate.normal_()
        y_plain, y_gated = plain(x).view(2, 7, 4, 16), gated(x).view(2, 7, 4, 16)
        g = 2 * torch.sigmoid(x[..., :12] @ gated.out_gate.t())  # [B, T, H]
        torch.testing.assert_close(y_gated, y_plain * g[..., None])
    assert tuple(gated.out_gate.shape) == (4, 12)


# ---------------------------------------------------------------------------------------------
# config validation for the model switches


@pytest.mark.parametrize("override,field", [
    ("model.bigram_buckets=1", "model.bigram_buckets"),
    ("model.bigram_dim=0", "model.bigram_dim"),
    ("model.value_embed_dim=0", "model.value_embed_dim"),
    ("model.rope_train_len=-1", "model.rope_train_len"),
    ("model.rope_dims=3", "model.rope_dims"),
    ("model.xsa_last_n=12", "model.xsa_last_n"),
    ("model.recur_end=9", "model.recur_start"),
])
def test_bad_model_switch_values_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config("baseline", ["model.recur_start=2", override] if "recur" in override else [override])


def test_small_width_rejected_for_12_dim_gates() -> None:
    with pytest.raises(ConfigError, match=r"model\.model_dim"):
        load_config("baseline", ["model.model_dim=8", "model.num_heads=1", "model.num_kv_heads=1",
                                 "model.smear_gate=\"v2\""])


# ---------------------------------------------------------------------------------------------
# FlexAttention doc isolation


@pytest.mark.parametrize("sw", [{}, dict(num_kv_heads=2), dict(parallel_from=2, recur_start=1, recur_end=2)])
def test_flex_doc_attention_equals_the_dense_masked_reference(sw: dict) -> None:
    dense = build(tiny_cfg(**sw))
    flex = GPT(tiny_cfg(**sw, doc_attention="flex")).eval()
    flex.load_state_dict(dense.state_dict())
    flex.set_recurrence(True)
    idx = _with_bos(tokens(2, 48))
    tgt = tokens(2, 48, seed=9)
    mask = flex.doc_mask(idx)
    assert type(mask).__name__ == "BlockMask"
    # the block mask is the dense pattern: causal and within a document
    from torch.nn.attention.flex_attention import create_mask
    assert torch.equal(create_mask(mask.mask_mod, 2, 1, 48, 48, device="cpu"), dense.doc_mask(idx))
    with torch.no_grad():  # the FlexAttention kernel itself (CPU has no flex backward)
        torch.testing.assert_close(flex(idx, doc_isolated=True), dense(idx, doc_isolated=True), rtol=0, atol=1e-5)
    la = dense(idx, tgt, doc_isolated=True)
    lb = flex(idx, tgt, doc_isolated=True)  # with grad on CPU: the block mask's pattern through SDPA
    torch.testing.assert_close(lb, la, rtol=0, atol=1e-5)
    la.backward()
    lb.backward()
    for (n, a), (_, b) in zip(dense.named_parameters(), flex.named_parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=n)

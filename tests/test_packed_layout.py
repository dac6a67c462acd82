"""The records' packed training layout: capped document segments, their block mask, the packing loader.

The references here are written from the records' description (PR #1855's _build_cu_seqlens and
DocumentPackingLoader), independently of pgolf's tensor formulations.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention

from pgolf.config import ConfigError, ModelConfig, load_config
from pgolf.data.loader import PackedLoader, make_loader
from pgolf.data.shards import write_shard
from pgolf.errors import InputError
from pgolf.model.docmask import dense_doc_mask, doc_block_mask, segment_ids
from pgolf.model.gpt import GPT

BOS = 1


def cu_boundaries(bos_pos: list[int], total: int, max_doc_len: int) -> list[int]:
    """Segment starts as the record's cu_seqlens: 0 first, each document cut every max_doc_len."""
    starts = bos_pos if bos_pos and bos_pos[0] == 0 else [0] + bos_pos
    out = []
    for a, b in zip(starts, starts[1:] + [total]):
        out += list(range(a, b, max_doc_len)) if max_doc_len > 0 else [a]
    return out


def reference_segments(row: list[int], cap: int) -> list[int]:
    starts = set(cu_boundaries([i for i, t in enumerate(row) if t == BOS], len(row), cap))
    seg, out = 0, []
    for i in range(len(row)):
        seg += i in starts
        out.append(seg)
    return out


def rows(B: int, T: int, p_bos: float = 0.03, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(2, 60, (B, T), generator=g)
    idx[torch.rand(B, T, generator=g) < p_bos] = BOS
    return idx


def effective_mask(bm, T: int) -> torch.Tensor:
    """What FlexAttention computes from a BlockMask: full blocks all on, partial blocks by mask_mod."""
    blk = bm.BLOCK_SIZE[0]
    B = bm.kv_num_blocks.shape[0]
    mm = create_mask(bm.mask_mod, B, 1, T, T, device="cpu")
    out = torch.zeros(B, 1, T, T, dtype=torch.bool)
    for b in range(B):
        for qi in range(bm.kv_num_blocks.shape[2]):
            q = slice(qi * blk, (qi + 1) * blk)
            for t in range(int(bm.kv_num_blocks[b, 0, qi])):
                k = int(bm.kv_indices[b, 0, qi, t])
                out[b, 0, q, k * blk:(k + 1) * blk] |= mm[b, 0, q, k * blk:(k + 1) * blk]
            for t in range(int(bm.full_kv_num_blocks[b, 0, qi])):
                k = int(bm.full_kv_indices[b, 0, qi, t])
                out[b, 0, q, k * blk:(k + 1) * blk] = True
    return out


@pytest.mark.parametrize("cap", [0, 7, 40, 1000])
def test_segments_are_the_records_cu_seqlens(cap: int) -> None:
    idx = rows(3, 300, seed=cap)
    idx[1, 0] = BOS  # a row starting at a document start, and rows starting mid-document
    seg = segment_ids(idx, BOS, cap)
    for b in range(3):
        ref = reference_segments(idx[b].tolist(), cap)
        got = seg[b].tolist()
        # same partition: a new segment exactly where the reference starts one
        assert [got[i] != got[i - 1] for i in range(1, 300)] == [ref[i] != ref[i - 1] for i in range(1, 300)]
    if cap:
        lengths = torch.unique_consecutive(seg[0], return_counts=True)[1]
        assert int(lengths.max()) <= cap


@pytest.mark.parametrize("T,block,cap", [(256, 128, 0), (256, 128, 40), (200, 128, 0), (384, 128, 100),
                                         (256, 64, 300), (48, 48, 0)])
def test_block_mask_is_the_dense_pattern(T: int, block: int, cap: int) -> None:
    idx = rows(2, T, seed=T + cap)
    seg = segment_ids(idx, BOS, cap)
    dense = dense_doc_mask(seg)
    bm = doc_block_mask(seg, block)
    assert torch.equal(effective_mask(bm, T), dense)
    if cap == 0 and T % block == 0:  # the same block tables as torch's own builder
        ref = create_block_mask(lambda b, h, q, k: (q >= k) & (seg[b, q] == seg[b, k]), 2, None, T, T,
                                device="cpu", BLOCK_SIZE=block)
        assert torch.equal(ref.kv_num_blocks, bm.kv_num_blocks)
        assert torch.equal(ref.full_kv_num_blocks, bm.full_kv_num_blocks)
    q, k, v = (torch.randn(2, 2, T, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    with torch.no_grad():
        torch.testing.assert_close(flex_attention(q, k, v, block_mask=bm),
                                   F.scaled_dot_product_attention(q, k, v, attn_mask=dense), rtol=0, atol=1e-5)


def test_dense_mask_is_causal_within_segments() -> None:
    idx = rows(1, 64, p_bos=0.1)
    seg = segment_ids(idx, BOS, 10)
    m = dense_doc_mask(seg)[0, 0]
    for q in range(64):
        for k in range(64):
            assert bool(m[q, k]) == (k <= q and int(seg[0, q]) == int(seg[0, k]))


def tiny(**kw) -> ModelConfig:
    return ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2.0,
                       bos_id=BOS, **kw)


def test_capped_flex_model_equals_dense_and_is_isolated() -> None:
    torch.manual_seed(0)
    dense = GPT(tiny(doc_segment_len=48)).eval()
    flex = GPT(tiny(doc_segment_len=48, doc_attention="flex")).eval()
    flex.load_state_dict(dense.state_dict())
    idx = rows(1, 256, p_bos=0.01, seed=3)
    idx[0, 100] = BOS
    with torch.no_grad():
        a = dense(idx, doc_isolated=True)
        torch.testing.assert_close(flex(idx, doc_isolated=True), a, rtol=0, atol=1e-5)
        # a segment is a world of its own: changing tokens of the next segment leaves it alone
        seg = segment_ids(idx, BOS, 48)[0]
        later = (seg > seg[120]).nonzero().flatten()
        cut = int(later[0])  # the next segment's start
        other = idx.clone()
        other[0, cut:] = (other[0, cut:] + 5) % 60 + 2
        b = dense(other, doc_isolated=True)
    first = int((seg == seg[120]).nonzero()[0])
    torch.testing.assert_close(b[0, first:cut], a[0, first:cut], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# the packing loader


def _docs_shard(path, n_docs: int, seed: int, base: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    toks = [rng.integers(2, 60, size=rng.integers(3, 9)).tolist() for _ in range(n_docs)]
    stream = np.array([2, 3] + sum(([BOS] + d for d in toks), []), dtype=np.int64)  # a tail before the first BOS
    write_shard(path, stream)
    return stream


def reference_batches(shards: list[np.ndarray], n_tokens: int, world: int, steps: int) -> list[list[np.ndarray]]:
    """The record's loader, step by step: per rank (inputs, targets) of n_tokens each."""
    span, out = n_tokens + 1, []
    s, cursor = 0, int(np.flatnonzero(shards[0] == BOS)[0])
    for _ in range(steps):
        while cursor + span * world > len(shards[s]):
            s = (s + 1) % len(shards)
            cursor = int(np.flatnonzero(shards[s] == BOS)[0])
        out.append([shards[s][cursor + r * span: cursor + (r + 1) * span] for r in range(world)])
        cursor += span * world
    return out


@pytest.mark.parametrize("world", [1, 2])
def test_packed_loader_is_the_records_loader(tmp_path, world: int) -> None:
    paths = [tmp_path / f"fineweb_train_{i:06d}.bin" for i in range(3)]
    shards = [_docs_shard(p, 40 + 10 * i, i, 0) for i, p in enumerate(paths)]
    n = 64
    ref = reference_batches(shards, n, world, 12)  # wraps around the three shards
    for r in range(world):
        ld = make_loader("packed", paths, 16, n, rank=r, world_size=world, bos_id=BOS)
        assert isinstance(ld, PackedLoader)
        for step in range(12):
            x, y = ld.next_batch()
            assert x.shape == y.shape == (1, n) and x.dtype == torch.int64
            assert x[0].tolist() == ref[step][r][:-1].tolist() and y[0].tolist() == ref[step][r][1:].tolist()


def test_packed_loader_resumes_and_prefetches(tmp_path) -> None:
    paths = [tmp_path / f"fineweb_train_{i:06d}.bin" for i in range(2)]
    for i, p in enumerate(paths):
        _docs_shard(p, 50, i, 0)
    a = PackedLoader(paths, 16, 32, bos_id=BOS)
    full = [a.next_batch()[0] for _ in range(9)]
    b = PackedLoader(paths, 16, 32, bos_id=BOS)
    for _ in range(4):
        b.next_batch()
    c = PackedLoader(paths, 16, 32, bos_id=BOS, prefetch=2)
    c.load_state_dict(b.state_dict())
    rest = [c.next_batch()[0] for _ in range(5)]
    c.close()
    assert all(torch.equal(u, v) for u, v in zip(full[4:], rest))
    with pytest.raises(InputError, match="cursor"):
        c.load_state_dict({"kind": "packed", "shard": 0, "cursor": 10 ** 9})


def test_packed_loader_refuses_shards_without_room(tmp_path) -> None:
    p = tmp_path / "fineweb_train_000000.bin"
    write_shard(p, np.full(200, 5))  # no BOS at all
    with pytest.raises(InputError, match="first BOS"):
        PackedLoader([p], 16, 32, bos_id=BOS)


def test_packed_needs_doc_isolation_and_a_segment_cap() -> None:
    with pytest.raises(ConfigError, match=r"train\.doc_isolated"):
        load_config("tiny", ["data.loader=\"packed\"", "model.doc_segment_len=64"])
    with pytest.raises(ConfigError, match=r"model\.doc_segment_len"):
        load_config("tiny", ["data.loader=\"packed\"", "train.doc_isolated=true"])
    with pytest.raises(ConfigError, match=r"model\.doc_segment_len"):
        load_config("tiny", ["model.doc_segment_len=-1"])
    cfg = load_config("pr1855")
    assert (cfg.data.loader, cfg.model.doc_segment_len, cfg.train.doc_isolated) == ("packed", 2048, True)
    assert load_config("pr1855", smoke=True).model.doc_segment_len == 128


# ---------------------------------------------------------------------------------------------
# PR #1855's global SGD between phases (eval.phased_sgd = "record")


def test_record_global_sgd_follows_the_records_loop(monkeypatch):
    from pgolf.config import EvalConfig
    from pgolf.eval.phased import record_global_sgd
    torch.manual_seed(0)
    model = GPT(tiny(doc_segment_len=16))
    stream = rows(1, 400, p_bos=0.05, seed=4)[0]
    stream[0] = BOS
    starts = [i for i in range(400) if stream[i] == BOS] + [399]
    docs = [(a, b) for a, b in zip(starts, starts[1:]) if b > a][::-1][:5]  # queue order: not stream order
    e = EvalConfig(ttt_chunk_tokens=64, ttt_batch_seqs=3, ttt_lr=0.1, ttt_momentum=0.9, ttt_epochs=1)
    seen, lrs, made = [], [], []
    real_forward, real_sgd = GPT.forward, torch.optim.SGD

    def spy_forward(self, idx, targets=None, **kw):
        seen.append((idx.clone(), targets.clone(), kw))
        return real_forward(self, idx, targets, **kw)

    class SpySGD(real_sgd):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

        def step(self, closure=None):
            lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(GPT, "forward", spy_forward)
    monkeypatch.setattr(torch.optim, "SGD", SpySGD)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record_global_sgd(model, stream, docs, e, seq_len=16)
    # the reference: the documents' tokens (BOS .. next BOS) joined in the given order, 64-target chunks
    joined = torch.cat([stream[a:b + 1] for a, b in docs])
    n_chunks = -(-(len(joined) - 1) // 64)
    expect, expect_lr = [], []
    for ci in range(n_chunks - 1):  # the last chunk is left out
        n_seq = (min(64 * (ci + 1), len(joined) - 1) - 64 * ci) // 16
        for s in range(0, n_seq, 3):
            e_ = min(s + 3, n_seq)
            expect.append(joined[64 * ci + 16 * s: 64 * ci + 16 * e_ + 1])
            expect_lr.append(0.1 * 0.5 * (1 + np.cos(np.pi * ci / max(n_chunks - 1, 1))))
    assert len(made) == 1 and len(seen) == len(expect) == len(lrs) > 3
    for (x, y, kw), row in zip(seen, expect):
        assert x.shape[0] == 1 and kw == {"doc_isolated": True}
        assert torch.equal(x[0], row[:-1]) and torch.equal(y[0], row[1:])
    np.testing.assert_allclose(lrs, expect_lr, rtol=1e-12)
    assert not model.training
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pr1855_uses_the_records_global_sgd():
    assert load_config("pr1855").eval.phased_sgd == "record"
    assert load_config("tiny").eval.phased_sgd == "pgolf"

"""Shared helpers for the evaluation tests: a tiny random model and byte tables over a 64-token vocab."""
from __future__ import annotations

import math

import numpy as np
import torch

from pgolf.config import Config, load_config
from pgolf.data.tokenizer import ByteTables
from pgolf.eval.methods import evaluate
from pgolf.model.gpt import GPT

V = 64
BASE = [f"model.vocab_size={V}", "model.num_layers=2", "model.model_dim=32", "model.num_heads=2",
        "model.num_kv_heads=1", "model.smear_gate=v1", "model.bigram_buckets=32", "model.bigram_dim=8",
        "train.seq_len=32", "train.micro_batch_tokens=32", "train.batch_tokens=32", "eval.max_tokens=0",
        "eval.stride=8", "eval.batch_seqs=4", "eval.ttt_epochs=1", "eval.ttt_batch_seqs=2",
        "eval.lora_chunk=8", "eval.lora_batch_docs=3"]


def base_cfg(*extra: str) -> Config:
    """A 2-layer d=32 model over a 64-token vocab with SmearGate + BigramHash; `extra` sets more fields."""
    return load_config("tiny", [*BASE, *extra])


def tiny_model(cfg, seed: int = 0, scale: float = 0.05) -> GPT:
    """A random model; zero-init projections would hide bugs, so every weight gets `scale` noise
    (larger scales give peaked, context-dependent distributions, like a trained model's)."""
    torch.manual_seed(seed)
    m = GPT(cfg.model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))
    return m


def tables() -> ByteTables:
    rng = np.random.default_rng(1)
    boundary = np.isin(np.arange(V), [0, 1, 2, 3])
    base = np.where(boundary, 0, rng.integers(1, 4, V)).astype(np.int16)
    return ByteTables(base, (rng.random(V) < 0.3) & ~boundary, boundary)


def run_eval(model, toks, cfg, method=None, **kw) -> dict:
    """evaluate() with the test tables' byte counts; the per-target NLLs under "nll"."""
    out = evaluate(model, toks, tables().target_bytes(toks), cfg, kw.pop("device", "cpu"), method,
                   with_record=True, **kw)
    out["nll"] = out.pop("record").nll
    return out


@torch.no_grad()
def reference_plain(model, toks, seq_len: int, byte_tables: ByteTables | None = None) -> dict:
    """Plain evaluation written independently of the harness: the model's own per-token NLL over
    non-overlapping windows, bytes from the tables."""
    t = torch.as_tensor(np.asarray(toks, dtype=np.int64))
    model.eval()
    total, n = 0.0, 0
    for s in range(0, len(t) - 1, seq_len):
        e = min(s + seq_len, len(t) - 1)
        nll = model(t[None, s:e], t[None, s + 1:e + 1], reduction="none")
        total += float(nll.double().sum())
        n += e - s
    nbytes = int((byte_tables or tables()).stream_bytes(np.asarray(toks)))
    return {"val_loss": total / n, "tokens": n, "bytes": nbytes, "val_bpb": total / math.log(2) / nbytes}

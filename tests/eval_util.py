"""Shared helpers for the evaluation tests: a tiny random model and byte tables over a 64-token vocab."""
from __future__ import annotations

import numpy as np
import torch

from pgolf.config import Config, load_config
from pgolf.data.tokenizer import ByteTables
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


def tiny_model(cfg, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    m = GPT(cfg.model)
    with torch.no_grad():  # zero-init projections would hide bugs: give every weight some signal
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def tables() -> ByteTables:
    rng = np.random.default_rng(1)
    boundary = np.isin(np.arange(V), [0, 1, 2, 3])
    base = np.where(boundary, 0, rng.integers(1, 4, V)).astype(np.int16)
    return ByteTables(base, (rng.random(V) < 0.3) & ~boundary, boundary)

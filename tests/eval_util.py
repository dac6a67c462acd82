"""Shared helpers for the evaluation tests: a tiny random model and byte tables over a 64-token vocab."""
from __future__ import annotations

import numpy as np
import torch

from pgolf.data.tokenizer import ByteTables
from pgolf.model.gpt import GPT

V = 64


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

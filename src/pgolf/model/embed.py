"""Embedding-side techniques: BigramHash, SmearGate (v1/v2) and value embeddings.

Position 0 never sees a previous token. With `model.prev_token_bos_mask` (and always in doc-isolated
evaluation) a BOS token sees none either, so nothing from one document leaks into the next; the
records leave BOS unmasked, which is the default.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from pgolf.config import ModelConfig
from pgolf.model.layers import CastedLinear

SMEAR_INPUT_DIMS = 12


def previous_token_mask(idx: torch.Tensor, bos_id: int, at_bos: bool = True) -> torch.Tensor:
    """[B, T] bool: True where position t may use token t-1 (not position 0; with at_bos not a BOS)."""
    keep = (idx != bos_id) if at_bos else torch.ones_like(idx, dtype=torch.bool)
    keep = keep.clone()
    keep[:, 0] = False
    return keep


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """x[:, t] <- x[:, t-1], zeros at t = 0. Works for [B, T] and [B, T, C]."""
    return torch.cat((torch.zeros_like(x[:, :1]), x[:, :-1]), dim=1)


class BigramHash(nn.Module):
    """Hash (previous, current) token pairs into buckets; project to model dim; learned scale."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.buckets, self.bos_id, self.mask_bos = cfg.bigram_buckets, cfg.bos_id, cfg.prev_token_bos_mask
        self.table = nn.Embedding(cfg.bigram_buckets, cfg.bigram_dim)
        record = cfg.bigram_init == "record"
        # record: the GPT's init pass makes the projection orthogonal (both sides >= 64, else zero)
        ortho = record and min(cfg.bigram_dim, cfg.model_dim) >= 64
        if record:
            nn.init.zeros_(self.table.weight)
        else:
            nn.init.normal_(self.table.weight, std=0.02)
        self.proj = CastedLinear(cfg.bigram_dim, cfg.model_dim, zero_init=not ortho)
        self.proj.ortho_gain = 1 / math.sqrt(2 * cfg.num_layers) if ortho else 0.0
        self.scale = nn.Parameter(torch.tensor(float(cfg.bigram_scale_init)))

    def bucket_ids(self, idx: torch.Tensor, doc_isolated: bool = False) -> torch.Tensor:
        prev = shift_right(idx)
        h = torch.bitwise_xor(idx * 36313, prev * 27191) % (self.buckets - 1)
        # Pairs without a valid previous token share the last bucket.
        keep = previous_token_mask(idx, self.bos_id, self.mask_bos or doc_isolated)
        return torch.where(keep, h, torch.full_like(h, self.buckets - 1))

    def forward(self, idx: torch.Tensor, doc_isolated: bool = False) -> torch.Tensor:
        return self.scale * self.proj(self.table(self.bucket_ids(idx, doc_isolated)))


class SmearGate(nn.Module):
    """Blend each token's embedding with the previous token's.

    v1: x_t = (1 - g) * x_t + g * x_{t-1}, g = sigmoid(per-dim parameter), init 0 -> g = 0.5.
    v2: x_t = x_t + lam * sigmoid(w . x_t[:12]) * x_{t-1}, w and lam zero-init (identity at start).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.version, self.bos_id, self.mask_bos = cfg.smear_gate, cfg.bos_id, cfg.prev_token_bos_mask
        if self.version == "v1":
            self.gate = nn.Parameter(torch.zeros(cfg.model_dim))
        else:
            self.gate = nn.Parameter(torch.zeros(SMEAR_INPUT_DIMS))
            self.smear_lambda = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, idx: torch.Tensor, doc_isolated: bool = False) -> torch.Tensor:
        prev = shift_right(x)
        masked = self.mask_bos or doc_isolated
        if masked:
            keep = previous_token_mask(idx, self.bos_id).unsqueeze(-1).to(x.dtype)
            prev = prev * keep
        if self.version == "v1":
            g = torch.sigmoid(self.gate.to(x.dtype))
            if not masked:  # the records: (1 - g) x + g x_prev, position 0 blended with zeros
                return (1 - g) * x + g * prev
            # At a document start the blend must not shrink the token either: g only where kept.
            return x + g * keep * (prev - x)
        g = torch.sigmoid(x[..., :SMEAR_INPUT_DIMS] @ self.gate.to(x.dtype)).unsqueeze(-1)
        return x + self.smear_lambda.to(x.dtype) * g * prev


class ValueEmbedding(nn.Module):
    """A shared vocab x d table, projected per layer and added to V in the last N layers."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.first_layer = cfg.num_layers - cfg.value_embed_layers
        self.table = nn.Embedding(cfg.vocab_size, cfg.value_embed_dim)
        nn.init.normal_(self.table.weight, std=0.02)
        self.projs = nn.ModuleList(CastedLinear(cfg.value_embed_dim, kv_dim, zero_init=True)
                                   for _ in range(cfg.value_embed_layers))

    def for_layer(self, table_out: torch.Tensor, layer_idx: int) -> torch.Tensor | None:
        j = layer_idx - self.first_layer
        return self.projs[j](table_out) if j >= 0 else None

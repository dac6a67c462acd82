"""Causal self-attention: GQA, (partial) RoPE, q/k RMS norm + per-head gain, XSA, output gates."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_mask, flex_attention

from pgolf.config import ModelConfig
from pgolf.model.layers import CastedLinear, Rotary, rms_norm

GATE_INPUT_DIMS = 12


def exclusive_self_attention(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """XSA: remove from each head's output its component along the token's own value direction.

    y: [B, H, T, D]; v: [B, Hkv, T, D]. Heads sharing a KV head use that head's value (no repeat).
    """
    B, H, T, D = y.shape
    hkv = v.size(1)
    yg = y.view(B, hkv, H // hkv, T, D)
    vn = F.normalize(v, dim=-1).unsqueeze(2)
    yg = yg - (yg * vn).sum(-1, keepdim=True) * vn
    return yg.view(B, H, T, D)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.c_q = CastedLinear(cfg.model_dim, cfg.model_dim)
        self.c_k = CastedLinear(cfg.model_dim, kv_dim)
        self.c_v = CastedLinear(cfg.model_dim, kv_dim)
        self.proj = CastedLinear(cfg.model_dim, cfg.model_dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), float(cfg.qk_gain_init)))
        self.rotary = Rotary(cfg.rope_dims or cfg.head_dim, cfg.rope_base, cfg.rope_train_len)
        n_xsa = cfg.num_layers if cfg.xsa_last_n == -1 else cfg.xsa_last_n
        self.use_xsa = layer_idx >= cfg.num_layers - n_xsa
        # 2*sigmoid(0) = 1: the gate starts as the identity and learns to close heads.
        self.out_gate = nn.Parameter(torch.zeros(cfg.num_heads, GATE_INPUT_DIMS)) if cfg.attn_out_gate else None
        # The sparse gate starts at sigmoid(0) = 0.5 and is not rescaled (PR #1855).
        self.attn_gate = nn.Parameter(torch.zeros(cfg.num_heads, GATE_INPUT_DIMS)) if cfg.sparse_attn_gate else None
        self.attn_gate_scale = cfg.sparse_attn_gate_scale

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                v_extra: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x)
        if v_extra is not None:
            v = v + v_extra
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q), rms_norm(k)
        q, k = self.rotary(q), self.rotary(k)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        gqa = self.num_kv_heads != self.num_heads
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif isinstance(attn_mask, BlockMask) and (q.device.type == "cuda" or not torch.is_grad_enabled()):
            y = flex_attention(q, k, v, block_mask=attn_mask, enable_gqa=gqa)
        elif isinstance(attn_mask, BlockMask):  # FlexAttention has no backward on CPU: the same mask, dense
            dense = create_mask(attn_mask.mask_mod, B, 1, T, T, device=q.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)
        if self.use_xsa:
            y = exclusive_self_attention(y, v)
        if self.out_gate is not None:
            g = 2 * torch.sigmoid(x[..., :GATE_INPUT_DIMS] @ self.out_gate.to(x.dtype).t())  # [B, T, H]
            y = y * g.transpose(1, 2).unsqueeze(-1)
        if self.attn_gate is not None:
            g = torch.sigmoid(self.attn_gate_scale * (x[..., :GATE_INPUT_DIMS] @ self.attn_gate.to(x.dtype).t()))
            y = y * g.transpose(1, 2).unsqueeze(-1)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

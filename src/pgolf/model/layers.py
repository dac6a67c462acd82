"""Small building blocks: weightless RMSNorm, a linear layer with a fake-quant hook, rotary tables."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    """Bias-free linear whose fp32 master weight is cast to the activation dtype at use.

    `qat` is an optional module (pgolf.quant.qat.FakeQuant) applied to the weight first, so the
    forward pass sees the same grid as the exported artifact.
    """

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init
        self.qat: nn.Module | None = None
        if zero_init:
            nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.qat is not None:
            w = self.qat(w)
        return F.linear(x, w.to(x.dtype))


class Rotary(nn.Module):
    """RoPE on the first `dims` channels of each head (partial RoPE when dims < head_dim).

    NTK scaling: when `train_len` > 0 and a sequence is longer, the base is stretched by
    (T / train_len) ** (dims / (dims - 2)) so positions beyond training stay in the seen range.
    """

    def __init__(self, dims: int, base: float = 10000.0, train_len: int = 0):
        super().__init__()
        self.dims, self.base, self.train_len = dims, base, train_len
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _build(self, T: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.base
        if self.train_len and T > self.train_len and self.dims > 2:
            base = base * (T / self.train_len) ** (self.dims / (self.dims - 2))
        inv_freq = 1.0 / (base ** (torch.arange(0, self.dims, 2, dtype=torch.float32, device=device) / self.dims))
        freqs = torch.outer(torch.arange(T, dtype=torch.float32, device=device), inv_freq)
        return freqs.cos().to(dtype)[None, None], freqs.sin().to(dtype)[None, None]

    def tables(self, T: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():  # inside a compiled graph: computed there, once per shape
            return self._build(T, device, dtype)
        # Tables built under inference_mode cannot enter autograd later (e.g. validation at step 0,
        # then training), so they are cached apart from normal ones.
        key = (T, device, dtype, torch.is_inference_mode_enabled())
        if key not in self._cache:
            self._cache[key] = self._build(T, device, dtype)
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, T, head_dim]."""
        if self.dims == 0:
            return x
        cos, sin = self.tables(x.size(2), x.device, x.dtype)
        rot, rest = x[..., : self.dims], x[..., self.dims:]
        half = self.dims // 2
        x1, x2 = rot[..., :half], rot[..., half:]
        rot = torch.cat((x1 * cos + x2 * sin, -x1 * sin + x2 * cos), dim=-1)
        return torch.cat((rot, rest), dim=-1) if rest.size(-1) else rot


def orthogonal_init_(w: torch.Tensor) -> None:
    nn.init.orthogonal_(w, gain=1.0)


def default_linear_init_(w: torch.Tensor) -> None:
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))

"""Feed-forward: relu², LeakyReLU(slope)² or SwiGLU; zero-initialized output projection."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pgolf.config import ModelConfig
from pgolf.model.layers import CastedLinear


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.activation, self.slope = cfg.activation, cfg.leaky_slope
        self.fc = CastedLinear(cfg.model_dim, cfg.mlp_hidden)
        self.gate = CastedLinear(cfg.model_dim, cfg.mlp_hidden) if cfg.activation == "swiglu" else None
        self.proj = CastedLinear(cfg.mlp_hidden, cfg.model_dim, zero_init=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.activation == "relu2":
            h = F.relu(h).square()
        elif self.activation == "leaky_relu2":
            h = F.leaky_relu(h, self.slope).square()
        else:
            h = F.silu(self.gate(x)) * h
        return self.proj(h)

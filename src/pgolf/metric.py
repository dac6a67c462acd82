"""val_bpb: one float64 accumulator shared by every evaluation path.

val_bpb = (sum of token NLL in nats / ln 2) / (sum of bytes), over every scored target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class BpbAccumulator:
    nll_sum: float = 0.0  # nats
    token_count: int = 0
    byte_count: int = 0

    def add(self, nll: torch.Tensor, nbytes: torch.Tensor) -> None:
        """Add per-token NLLs (nats) and their byte counts (same shape)."""
        if nll.shape != nbytes.shape:
            raise ValueError(f"nll shape {tuple(nll.shape)} != bytes shape {tuple(nbytes.shape)}")
        self.nll_sum += float(nll.detach().double().sum().item())
        self.token_count += int(nll.numel())
        self.byte_count += int(nbytes.sum().item())

    def merge(self, other: "BpbAccumulator") -> None:
        self.nll_sum += other.nll_sum
        self.token_count += other.token_count
        self.byte_count += other.byte_count

    def all_reduce(self, device: torch.device | str = "cpu") -> "BpbAccumulator":
        """Sum over ranks (no-op without an initialized process group). Exact: float64 + int64."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        nll = torch.tensor([self.nll_sum], dtype=torch.float64, device=device)
        counts = torch.tensor([self.token_count, self.byte_count], dtype=torch.int64, device=device)
        dist.all_reduce(nll)
        dist.all_reduce(counts)
        return BpbAccumulator(float(nll.item()), int(counts[0].item()), int(counts[1].item()))

    @property
    def val_loss(self) -> float:
        return self.nll_sum / max(self.token_count, 1)

    @property
    def val_bpb(self) -> float:
        if self.byte_count <= 0:
            raise ValueError("no bytes scored: val_bpb undefined")
        return self.nll_sum / math.log(2) / self.byte_count

    def result(self) -> dict:
        return {"val_loss": self.val_loss, "val_bpb": self.val_bpb,
                "tokens": self.token_count, "bytes": self.byte_count}

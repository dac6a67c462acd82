"""val_bpb: one accumulator shared by every evaluation path.

val_bpb = (sum of token NLL in nats / ln 2) / (sum of bytes), over every scored target. The sums stay
on the device (float64 NLL, int64 counts) until `result()`, so scoring a batch never waits for the
GPU; `result()` reduces over ranks exactly and reads the numbers once.
"""
from __future__ import annotations

import math

import torch

from pgolf import runtime


class BpbAccumulator:
    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.nll = torch.zeros((), dtype=torch.float64, device=self.device)  # nats
        self.counts = torch.zeros(2, dtype=torch.int64, device=self.device)  # targets, bytes

    def add(self, nll: torch.Tensor, nbytes: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Add per-target NLLs (nats) and their byte counts (same shape), optionally only where
        `valid`; no host sync."""
        if nll.shape != nbytes.shape:
            raise ValueError(f"nll shape {tuple(nll.shape)} != bytes shape {tuple(nbytes.shape)}")
        nll = nll.detach().to(torch.float64)
        nbytes = nbytes.to(torch.int64)
        if valid is None:
            self.counts[0] += nll.numel()
        else:
            nll = torch.where(valid, nll, torch.zeros_like(nll))
            nbytes = torch.where(valid, nbytes, torch.zeros_like(nbytes))
            self.counts[0] += valid.sum()
        self.nll += nll.sum()
        self.counts[1] += nbytes.sum()

    def result(self) -> dict:
        """{val_loss, val_bpb, tokens (targets scored), bytes} summed over every rank."""
        nll = runtime.all_reduce_sum(self.nll.clone())
        counts = runtime.all_reduce_sum(self.counts.clone())
        targets, nbytes = (int(v) for v in counts.tolist())
        total = float(nll)
        if nbytes <= 0:
            raise ValueError("no bytes scored: val_bpb undefined")
        return {"val_loss": total / max(targets, 1), "val_bpb": total / math.log(2) / nbytes,
                "tokens": targets, "bytes": nbytes}

"""The scoring harness every evaluation method scores through.

Positions are *target indices*: target i is token i+1 of the stream, predicted from tokens[..i]. A
method hands the Scorer log-probabilities over the whole vocabulary for some targets; the Scorer
(not the method) takes -log p(target), credits that target's bytes (from the tokenizer's tables or
a byte sidecar, computed once by the harness), and keeps, on the device and without host syncs:
the float64 val_bpb sums, each target's NLL, how many times each target was scored, and the full
distributions at a few positions the harness chose. The same Scorer serves `pgolf eval` and the
audit, which reads those records afterwards; nothing a method receives tells one from the other.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pgolf import runtime
from pgolf.metric import BpbAccumulator


@dataclass
class ScoreRecord:
    """What the harness saw, on the CPU: per-target NLL (NaN where never scored), score counts, and
    the log-probability vectors at the kept positions (NaN rows where that target was never scored)."""

    nll: torch.Tensor  # float32 [n_targets]
    counts: torch.Tensor  # int32 [n_targets]
    kept_positions: torch.Tensor  # int64 [K]
    kept: torch.Tensor  # float32 [K, V]


class Scorer:
    def __init__(self, stream: torch.Tensor, nbytes: torch.Tensor, vocab_size: int,
                 keep: np.ndarray | list[int] | None = None):
        if nbytes.numel() != max(stream.numel() - 1, 0):
            raise ValueError(f"need one byte count per target: {nbytes.numel()} for {stream.numel() - 1} targets")
        self.stream = stream
        self.device = stream.device
        self.nbytes = nbytes.to(self.device)
        self.vocab_size = vocab_size
        n = max(stream.numel() - 1, 0)
        self.acc = BpbAccumulator(self.device)
        # One extra slot at index n takes the padding slots of a batch (never read back).
        self.nll = torch.zeros(n + 1, dtype=torch.float32, device=self.device)
        self.counts = torch.zeros(n + 1, dtype=torch.int32, device=self.device)
        self._bytes = torch.cat([self.nbytes.to(torch.int32), torch.zeros(1, dtype=torch.int32, device=self.device)])
        self._keep = None  # no kept distributions (the counted script's scorer)
        self._kept = None
        if keep is not None:
            at = np.unique(np.asarray(keep, dtype=np.int64))
            if at.size and (at.min() < 0 or at.max() >= n):
                raise ValueError(f"kept positions must be targets in [0, {n})")
            self._keep = torch.as_tensor(at, device=self.device)
            self._kept = torch.full((len(at), vocab_size), float("nan"), dtype=torch.float32, device=self.device)

    @property
    def n_targets(self) -> int:
        return self.nll.numel() - 1

    def targets(self, pos: torch.Tensor) -> torch.Tensor:
        return self.stream[(pos + 1).clamp(max=self.stream.numel() - 1)]

    @torch.no_grad()
    def score(self, logprobs: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Score targets `pos` with log-probabilities `logprobs` [*pos.shape, vocab]; slots where
        `valid` is False (padding) are ignored. Returns the NLLs (0 at padding). No host sync."""
        if logprobs.shape[-1] != self.vocab_size or logprobs.shape[:-1] != pos.shape:
            raise ValueError(f"scorer: need log-probabilities [{', '.join(map(str, pos.shape))}, {self.vocab_size}], "
                             f"got {tuple(logprobs.shape)}")
        lp = logprobs.detach().float().reshape(-1, self.vocab_size)
        pos = pos.reshape(-1).to(self.device)
        if valid is not None:
            pos = torch.where(valid.reshape(-1).to(self.device), pos, self.n_targets)
        nll = -lp.gather(1, self.targets(pos)[:, None]).squeeze(1)
        real = pos < self.n_targets
        nll = torch.where(real, nll, torch.zeros_like(nll))
        self.acc.add(nll, self._bytes[pos], real)
        self.nll[pos] = nll
        self.counts.index_add_(0, pos, torch.ones_like(pos, dtype=torch.int32))
        if self._keep is not None and self._keep.numel():  # copy rows of kept positions without a host sync: a gather + where
            eq = pos[None, :] == self._keep[:, None]
            rows = lp[eq.to(torch.int8).argmax(dim=1)]
            self._kept = torch.where(eq.any(dim=1)[:, None], rows, self._kept)
        return nll.view(logprobs.shape[:-1])

    def normalization_error(self) -> float:
        """Worst |sum p - 1| over this rank's kept distributions that were scored (inf if not finite)."""
        if self._kept is None:
            return 0.0
        seen = ~torch.isnan(self._kept[:, 0]) if self._kept.numel() else torch.zeros(0, dtype=torch.bool)
        if not bool(seen.any()):
            return 0.0
        rows = self._kept[seen].double()
        if not bool(torch.isfinite(rows).all()):
            return float("inf")
        return float((rows.exp().sum(dim=1) - 1).abs().max())

    def result(self) -> dict:
        """{val_loss, val_bpb, tokens, bytes}, reduced over ranks (reads the device once)."""
        return self.acc.result()

    def record(self) -> ScoreRecord:
        """Per-target NLLs, counts and kept distributions summed over ranks (each target is scored on
        one rank), on the CPU."""
        counts = runtime.all_reduce_sum(self.counts[:-1].clone())
        mine = self.nll[:-1]
        nll = runtime.all_reduce_sum(torch.where(self.counts[:-1] > 0, mine, torch.zeros_like(mine)))
        nll = torch.where(counts > 0, nll, torch.full_like(nll, float("nan")))
        keep = self._keep if self._keep is not None else torch.zeros(0, dtype=torch.int64)
        kept = self._kept if self._kept is not None else torch.zeros(0, self.vocab_size)
        if runtime.world() > 1 and kept.numel():  # each kept row was filled on the rank that scored it
            have = ~torch.isnan(kept[:, :1])
            kept = runtime.all_reduce_sum(torch.where(have, kept, torch.zeros_like(kept)))
            got = runtime.all_reduce_sum(have.to(torch.int32))
            kept = torch.where(got > 0, kept, torch.full_like(kept, float("nan")))
        return ScoreRecord(nll.cpu(), counts.cpu(), keep.cpu(), kept.cpu())

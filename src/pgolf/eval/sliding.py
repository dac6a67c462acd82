"""Scoring plans, the shared scorer, and sliding-window evaluation.

Positions are *target indices*: target i is token i+1 of the stream, predicted from tokens[..i].
A scoring plan is a list of windows (start, length, score_from): the window feeds
tokens[start:start+length] and scores targets [score_from, start+length). Every method is a plan
(or plans interleaved with model updates) run through one `Scorer`, which keeps the val_bpb sums,
the per-position NLLs and, for the audit, a `ScoreLog` of what was scored and what was trained on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from pgolf.data.tokenizer import ByteTables
from pgolf.eval.plain import rank_slice, window_starts
from pgolf.metric import BpbAccumulator


MODEL_STATE = "model"


class Window(NamedTuple):
    start: int  # first input token (== first target index the window could score)
    length: int  # inputs tokens[start:start+length], targets start..start+length-1
    score_from: int  # scores targets [score_from, start+length)

    @property
    def end(self) -> int:
        return self.start + self.length


def plain_plan(n_targets: int, seq_len: int) -> list[Window]:
    """Non-overlapping windows; each scores all its targets (the baseline evaluation)."""
    return [Window(s, n, s) for s, n in window_starts(n_targets + 1, seq_len)]


def sliding_plan(n_targets: int, window: int, stride: int) -> list[Window]:
    """Windows every `stride` targets while start + (window - stride) < n_targets.

    The first window scores all its targets, later ones only their last `stride`; short windows
    at the tail keep their context, so every target is scored exactly once.
    """
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"need 1 <= stride <= window, got stride={stride}, window={window}")
    if n_targets <= 0:
        return []
    plan = [Window(0, min(window, n_targets), 0)]
    for s in range(stride, n_targets, stride):
        if s + window - stride >= n_targets:
            break
        plan.append(Window(s, min(window, n_targets - s), s + window - stride))
    return plan


def plan_coverage(plan: Iterable[Window], n_targets: int) -> np.ndarray:
    """How many times each target is scored by the plan (must be all ones)."""
    diff = np.zeros(n_targets + 1, dtype=np.int64)
    for w in plan:
        lo, hi = max(w.score_from, 0), min(w.end, n_targets)
        if hi > lo:
            diff[lo] += 1
            diff[hi] -= 1
    return np.cumsum(diff)[:n_targets]


def split_plan(plan: Iterable[Window], chunk: int, n_targets: int) -> list[list[Window]]:
    """Cut each window's scored range at multiples of `chunk`: one sub-plan per chunk.

    A piece keeps its window's context (earlier chunks) but stops at the chunk end, so a chunk's
    targets are all scored before anything after them is seen.
    """
    out: list[list[Window]] = [[] for _ in range(max(1, math.ceil(n_targets / chunk)))]
    for w in plan:
        lo = w.score_from
        while lo < w.end:
            k = lo // chunk
            hi = min(w.end, (k + 1) * chunk)
            out[k].append(Window(w.start, hi - w.start, lo))
            lo = hi
    return out


@dataclass
class ScoreLog:
    """What a method scored and trained on, in order; optionally full distributions at probes.

    events: (kind, target indices, state) with kind "score" or "update" (the targets whose tokens
    the update used, inputs included). state names the model state scored with / updated:
    "model" is the shared model; "doc:<lo>" a per-document adapter on top of it.
    dists: target index -> log-probabilities over the vocabulary at the probed positions.
    """

    probe: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    events: list[tuple[str, np.ndarray, str]] = field(default_factory=list)
    dists: dict[int, torch.Tensor] = field(default_factory=dict)

    def score(self, positions: np.ndarray, state: str = MODEL_STATE) -> None:
        self.events.append(("score", np.asarray(positions, dtype=np.int64), state))

    def update(self, positions: np.ndarray, state: str = MODEL_STATE) -> None:
        self.events.append(("update", np.asarray(positions, dtype=np.int64), state))


def update_positions(lo: int, hi: int) -> np.ndarray:
    """Targets whose tokens a step trained on targets [lo, hi) saw: inputs start one earlier.

    The stream's first token is context only (never a target), so the range is clipped at 0.
    """
    return np.arange(max(lo - 1, 0), hi, dtype=np.int64)


class Scorer:
    """Scores targets: float64 val_bpb sums, per-target NLLs (NaN = not scored here), the log."""

    def __init__(self, stream: torch.Tensor, tables: ByteTables, log: ScoreLog | None = None):
        self.stream = stream
        self.device = stream.device
        self.base, self.lead, self.boundary = tables.torch(self.device)
        self.acc = BpbAccumulator()
        self.nll = torch.full((max(len(stream) - 1, 0),), float("nan"), dtype=torch.float32, device=self.device)
        self.log = log

    @property
    def n_targets(self) -> int:
        return len(self.nll)

    def add(self, logits: torch.Tensor, pos: torch.Tensor, states: list[tuple[str, torch.Tensor]] | None = None
            ) -> torch.Tensor:
        """Score targets `pos` [n] with `logits` [n, V] (full vocab); returns their NLLs (no grad).

        `states` optionally splits the positions by model state for the log: (state, bool mask [n]).
        """
        logits = logits.detach().float()
        y, prev = self.stream[pos + 1], self.stream[pos]
        nll = F.cross_entropy(logits, y, reduction="none")
        nbytes = self.base[y] + (self.lead[y] & ~self.boundary[prev]).to(torch.int64)
        self.acc.add(nll, nbytes)
        self.nll[pos] = nll
        if self.log is not None:
            pos_np = pos.cpu().numpy()
            if states is None:
                self.log.score(pos_np)
            else:
                for state, sel in states:
                    self.log.score(pos_np[sel.cpu().numpy()], state)
            if self.log.probe.size:
                sel = np.nonzero(np.isin(pos_np, self.log.probe))[0]
                if sel.size:
                    lp = F.log_softmax(logits[torch.as_tensor(sel, device=logits.device)], dim=-1).cpu()
                    for j, i in enumerate(sel):
                        self.log.dists[int(pos_np[i])] = lp[j]
        return nll

    def result(self) -> dict:
        acc = self.acc.all_reduce(self.device)
        out = acc.result()
        out["nll"] = self.nll.cpu()
        return out


def as_stream(tokens: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    if isinstance(tokens, torch.Tensor):
        return tokens.to(device=device, dtype=torch.int64)
    return torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=device)


def batches(plan: list[Window], batch_seqs: int) -> list[list[Window]]:
    return [plan[i: i + batch_seqs] for i in range(0, len(plan), batch_seqs)]


def window_inputs(stream: torch.Tensor, group: list[Window]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded inputs [B, L] (padding never reaches earlier positions of a causal model),
    the target index of each slot [B, L], and the mask of slots the windows score."""
    dev = stream.device
    L = max(w.length for w in group)
    starts = torch.tensor([w.start for w in group], device=dev)
    lens = torch.tensor([w.length for w in group], device=dev)
    first = torch.tensor([w.score_from - w.start for w in group], device=dev)
    off = torch.arange(L, device=dev)
    pos = starts[:, None] + off[None]
    x = stream[pos.clamp(max=len(stream) - 1)]
    mask = (off[None] >= first[:, None]) & (off[None] < lens[:, None])
    return x, pos, mask


@torch.no_grad()
def score_plan(model: torch.nn.Module, scorer: Scorer, plan: list[Window], batch_seqs: int,
               doc_isolated: bool = False, autocast_dtype: torch.dtype | None = None,
               progress: bool = False, desc: str = "eval") -> None:
    """Run a plan: one forward per batch of windows; the head only on the scored slots."""
    was_training = model.training
    model.eval()
    groups = batches(plan, batch_seqs)
    if progress:
        from tqdm import tqdm

        groups = tqdm(groups, desc=desc, unit="batch", leave=False, disable=None)
    dev = scorer.device
    for group in groups:
        x, pos, mask = window_inputs(scorer.stream, group)
        with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            h = model.hidden(x, doc_isolated)
            logits = model.logits_from_hidden(h[mask])
        scorer.add(logits, pos[mask])
    if was_training:
        model.train()


def evaluate_plan(model: torch.nn.Module, tokens: np.ndarray, tables: ByteTables, plan: list[Window],
                  batch_seqs: int = 32, device: torch.device | str = "cpu", rank: int = 0, world: int = 1,
                  doc_isolated: bool = False, autocast_dtype: torch.dtype | None = None,
                  log: ScoreLog | None = None, progress: bool = False, desc: str = "eval") -> dict:
    """Score a whole plan (this rank's contiguous share); exact reduction over ranks."""
    scorer = Scorer(as_stream(tokens, device), tables, log)
    score_plan(model, scorer, rank_slice(plan, rank, world), batch_seqs, doc_isolated, autocast_dtype,
               progress, desc)
    return scorer.result()


def evaluate_sliding(model: torch.nn.Module, tokens: np.ndarray, tables: ByteTables, window: int,
                     stride: int, batch_seqs: int = 32, device: torch.device | str = "cpu", rank: int = 0,
                     world: int = 1, doc_isolated: bool = False, autocast_dtype: torch.dtype | None = None,
                     log: ScoreLog | None = None, progress: bool = False) -> dict:
    """Sliding-window evaluation (challenge.md): val_loss, val_bpb, tokens, bytes, windows, nll."""
    plan = sliding_plan(len(tokens) - 1, window, stride)
    out = evaluate_plan(model, tokens, tables, plan, batch_seqs, device, rank, world, doc_isolated,
                        autocast_dtype, log, progress, desc="eval sliding")
    out["windows"] = len(plan)
    return out

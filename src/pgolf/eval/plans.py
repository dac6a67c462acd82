"""Scoring plans: which targets each forward pass scores, and the loop that runs a plan.

A plan is a list of windows (start, length, score_from): the window feeds tokens[start:start+length]
and scores targets [score_from, start+length). Plain, sliding and doc-isolated evaluation are plans;
TTT methods interleave sub-plans with model updates. Documents start at BOS: a document's targets
run from its BOS up to and including the next BOS (which is predicted from this document).
"""
from __future__ import annotations

import math
from typing import Iterable, NamedTuple

import numpy as np
import torch

from pgolf import runtime
from pgolf.config import BOS_ID
from pgolf.eval.scorer import Scorer
from pgolf.logs import bar


class Window(NamedTuple):
    start: int  # first input token (== first target index the window could score)
    length: int  # inputs tokens[start:start+length], targets start..start+length-1
    score_from: int  # scores targets [score_from, start+length)

    @property
    def end(self) -> int:
        return self.start + self.length


def plain_plan(n_targets: int, seq_len: int) -> list[Window]:
    """Non-overlapping windows; each scores all its targets (the baseline evaluation)."""
    return [Window(s, min(seq_len, n_targets - s), s) for s in range(0, n_targets, seq_len)]


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


def doc_spans(tokens: np.ndarray, bos_id: int = BOS_ID) -> list[tuple[int, int]]:
    """[lo, hi) target ranges, one per document, in stream order, covering all targets.

    Tokens before the first BOS (a stream cut mid-document) form a document of their own.
    """
    tokens = np.asarray(tokens)
    n_targets = len(tokens) - 1
    if n_targets <= 0:
        return []
    starts = np.flatnonzero(tokens[:n_targets] == bos_id).tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    ends = starts[1:] + [n_targets]
    return [(lo, hi) for lo, hi in zip(starts, ends) if hi > lo]


def docs_plan(spans: list[tuple[int, int]], window: int, stride: int) -> list[Window]:
    """Sliding windows inside each document (stream order); no window crosses a document start."""
    plan: list[Window] = []
    for lo, hi in spans:
        plan.extend(Window(w.start + lo, w.length, w.score_from + lo) for w in sliding_plan(hi - lo, window, stride))
    return plan


def rank_share(items: list, rank: int, world: int) -> list:
    """This rank's contiguous share of a list."""
    per = (len(items) + world - 1) // world
    return items[rank * per: (rank + 1) * per]


def window_inputs(stream: torch.Tensor, group: list[Window], length: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs [B, L] right-padded with the stream's next tokens (a causal model never lets them reach
    earlier positions), the target index of every slot, and the mask of the slots the windows score.
    L is `length` (a fixed shape for every batch) or the longest window of the group."""
    dev = stream.device
    L = length or max(w.length for w in group)
    starts = torch.tensor([w.start for w in group], device=dev)
    lens = torch.tensor([w.length for w in group], device=dev)
    first = torch.tensor([w.score_from - w.start for w in group], device=dev)
    off = torch.arange(L, device=dev)
    pos = starts[:, None] + off[None]
    x = stream[pos.clamp(max=len(stream) - 1)]
    mask = (off[None] >= first[:, None]) & (off[None] < lens[:, None])
    return x, pos, mask


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary log-probabilities in fp32 (what methods hand the Scorer)."""
    return torch.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def score_windows(model: torch.nn.Module, scorer: Scorer, plan: list[Window], batch_seqs: int,
                  doc_isolated: bool = False, autocast_dtype: torch.dtype | None = None,
                  desc: str | None = None) -> None:
    """Run a plan: one forward per batch of windows, padded to the plan's longest window so batches
    share one shape; the head runs only on the slot range the batch scores. No host sync."""
    was_training = model.training
    model.eval()
    length = max((w.length for w in plan), default=0)
    groups = [plan[i: i + batch_seqs] for i in range(0, len(plan), batch_seqs)]
    for group in (bar(groups, desc=desc, unit="batch") if desc is not None else groups):
        a = min(w.score_from - w.start for w in group)
        b = max(w.length for w in group)
        x, pos, mask = window_inputs(scorer.stream, group, length)
        with runtime.autocast(scorer.device, autocast_dtype):
            logits = model.logits_from_hidden(model.hidden(x, doc_isolated)[:, a:b])
        scorer.score(log_probs(logits), pos[:, a:b], mask[:, a:b])
    if was_training:
        model.train()

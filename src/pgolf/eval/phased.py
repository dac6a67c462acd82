"""Phased TTT: per-document LoRA scoring, with global SGD on the already scored prefix between phases.

The documents (in stream order) are cut at `phased_points`: a phase ends with the document in
which that fraction of the targets falls. Fractions of the *target count* rather than the document
count: the stream's length is fixed up front, while how many documents follow depends on tokens not
yet scored (the audit's causality check catches the difference). Each phase scores its documents
with per-document LoRA TTT; then, unless it is the last phase, the whole scored prefix (exactly the
documents so far) trains the shared model with SGD.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from pgolf.config import EvalConfig
from pgolf.data.tokenizer import BOS_ID, ByteTables
from pgolf.eval.docs import doc_spans
from pgolf.eval.sliding import ScoreLog, Scorer, as_stream
from pgolf.eval.ttt_lora import lora_score_docs
from pgolf.eval.ttt_sgd import cosine_lr, make_sgd, train_range


def phase_bounds(spans: list[tuple[int, int]], points: list[float]) -> list[tuple[int, int]]:
    """[a, b) document ranges: phase j ends with the document holding target points[j] * n_targets."""
    if not spans:
        return []
    n_targets = spans[-1][1]
    cuts = set()
    for p in points:
        t = min(max(int(p * n_targets), 0), n_targets - 1)
        cuts.add(next(i for i, (lo, hi) in enumerate(spans) if lo <= t < hi) + 1)
    edges = [0] + sorted(cuts - {0, len(spans)}) + [len(spans)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def evaluate_phased(model: torch.nn.Module, tokens: np.ndarray, tables: ByteTables, ecfg: EvalConfig, window: int,
                    device: torch.device | str = "cpu", rank: int = 0, world: int = 1,
                    autocast_dtype: torch.dtype | None = None, log: ScoreLog | None = None, seed: int = 0,
                    progress: bool = False, bos_id: int = BOS_ID) -> dict:
    """Phased TTT: val_loss, val_bpb, tokens, bytes, docs, phases, nll."""
    stream = as_stream(tokens, device)
    scorer = Scorer(stream, tables, log)
    spans = doc_spans(tokens, bos_id)
    phases = phase_bounds(spans, ecfg.phased_points)
    m = copy.deepcopy(model).to(device)
    opt = make_sgd(m, ecfg)
    for i, (a, b) in enumerate(phases):
        lora_score_docs(m, scorer, spans[a:b], ecfg, window, rank, world, autocast_dtype, seed, progress)
        if i == len(phases) - 1:
            break
        # Documents are contiguous in the stream: the scored prefix is targets [0, end of doc b-1).
        train_range(m, opt, stream, 0, spans[b - 1][1], window, ecfg, cosine_lr(ecfg.ttt_lr, i, len(phases)),
                    rank, world, autocast_dtype, log, doc_isolated=True)
    out = scorer.result()
    out["docs"] = len(spans)
    out["phases"] = len(phases)
    return out

"""Doc-isolated evaluation by per-document batching.

Documents start at BOS. A document's targets are the tokens after its BOS up to and including the
next BOS (that BOS is predicted from this document, as in doc-isolated attention). Each window
holds tokens of one document only, so plain causal attention is already doc-isolated: no mask is
needed and the fast causal kernels are used on CPU and GPU. A document longer than the window is
scored with sliding windows inside the document.
"""
from __future__ import annotations

import numpy as np
import torch

from pgolf.data.tokenizer import BOS_ID, ByteTables
from pgolf.eval.sliding import ScoreLog, Window, evaluate_plan, sliding_plan


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


def evaluate_docs(model: torch.nn.Module, tokens: np.ndarray, tables: ByteTables, window: int, stride: int,
                  batch_seqs: int = 32, device: torch.device | str = "cpu", rank: int = 0, world: int = 1,
                  autocast_dtype: torch.dtype | None = None, log: ScoreLog | None = None,
                  progress: bool = False, bos_id: int = BOS_ID) -> dict:
    """Doc-isolated evaluation: val_loss, val_bpb, tokens, bytes, docs, nll."""
    spans = doc_spans(tokens, bos_id)
    plan = docs_plan(spans, window, stride)
    # Similar lengths together: less padding. Order is free since nothing is updated.
    plan.sort(key=lambda w: w.length)
    out = evaluate_plan(model, tokens, tables, plan, batch_seqs, device, rank, world, False,
                        autocast_dtype, log, progress, desc="eval docs")
    out["docs"] = len(spans)
    return out

"""Phased TTT: per-document LoRA scoring, with global SGD on the documents already scored between phases.

The documents are queued in stream order, or longest first (`eval.phased_order`, PR #1855), and the
queue is cut at `phased_docs` document counts when given (PR #1855: 833, 1666, 2500), else at
`phased_points`: a phase ends with the document in which that fraction of the targets falls. Each
phase scores its documents with per-document LoRA TTT; then, unless it is the last phase, every
document scored so far trains the shared model with SGD, so a document depends only on itself and
the documents before it in the queue. `eval.phased_sgd = "record"` runs that SGD as PR #1855 does
(record_global_sgd).
"""
from __future__ import annotations

import bisect
import copy
import itertools

import torch

from pgolf import runtime
from pgolf.config import Config, EvalConfig
from pgolf.eval.context import EvalContext, Method
from pgolf.eval.plans import doc_spans
from pgolf.eval.ttt_lora import check_lora, lora_score_docs
from pgolf.eval.ttt_sgd import check_freeze, cosine_lr, make_sgd, train_range, trainable_params


def phase_bounds(spans: list[tuple[int, int]], points: tuple[float, ...],
                 docs: tuple[int, ...] = ()) -> list[tuple[int, int]]:
    """[a, b) ranges of queue positions: phase j ends after docs[j] documents when `docs` is given,
    else with the document holding target points[j] * n_targets (counted along the queue)."""
    if not spans:
        return []
    if docs:
        cuts = set(docs)
    else:
        ends = list(itertools.accumulate(hi - lo for lo, hi in spans))
        cuts = {bisect.bisect_right(ends, min(max(int(p * ends[-1]), 0), ends[-1] - 1)) + 1 for p in points}
    edges = [0] + sorted(c for c in cuts if 0 < c < len(spans)) + [len(spans)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def run_phased(ctx: EvalContext) -> dict:
    e = ctx.cfg.eval
    spans = doc_spans(ctx.stream.cpu().numpy(), ctx.cfg.model.bos_id)
    queued = [spans[i] for i in phase_queue(spans, ctx.cfg)]
    phases = phase_bounds(queued, e.phased_points, e.phased_docs)
    m = copy.deepcopy(ctx.model).to(ctx.device)
    opt = make_sgd(m, e) if e.phased_sgd == "pgolf" else None  # the record's form makes one per phase
    for i, (a, b) in enumerate(phases):
        lora_score_docs(m, ctx.scorer, queued[a:b], e, ctx.window, ctx.rank, ctx.world, ctx.autocast_dtype,
                        ctx.cfg.train.seed, ctx.desc(f"eval phase {i + 1}/{len(phases)}"))
        if i == len(phases) - 1:
            break
        if e.phased_sgd == "record":
            record_global_sgd(m, ctx.stream, queued[:b], e, ctx.window, ctx.rank, ctx.world, ctx.autocast_dtype)
            continue
        # every document scored so far; in stream order they are the stream's prefix [0, end of doc b-1)
        scored = [(0, queued[b - 1][1])] if e.phased_order == "stream" else sorted(queued[:b])
        train_range(m, opt, ctx.stream, scored, ctx.window, e, cosine_lr(e.ttt_lr, i, len(phases)),
                    ctx.rank, ctx.world, ctx.autocast_dtype, doc_isolated=True)
    return {"docs": len(spans), "phases": len(phases)}


def record_global_sgd(model: torch.nn.Module, stream: torch.Tensor, docs: list[tuple[int, int]], e: EvalConfig,
                      seq_len: int, rank: int = 0, world: int = 1, autocast_dtype: torch.dtype | None = None) -> None:
    """PR #1855's global SGD on the scored documents (target ranges, queue order). Each document's
    tokens run from its BOS through the next document's BOS (its last target), joined in queue order;
    the join is cut into chunks of ttt_chunk_tokens targets, trained in order with a cosine LR over
    the chunks except the last; a chunk's whole sequences of seq_len are split contiguously over the
    ranks, and each batch of ttt_batch_seqs of them is one row scored doc-isolated (segments as the
    model's doc_segment_len). The mean loss's gradients are averaged over the ranks."""
    tokens = torch.cat([stream[lo:hi + 1] for lo, hi in docs])
    total, chunk, bs = tokens.numel() - 1, e.ttt_chunk_tokens, e.ttt_batch_seqs
    n_chunks = -(-total // chunk)
    params = trainable_params(model, e.ttt_freeze_blocks)
    opt = torch.optim.SGD(params, lr=e.ttt_lr, momentum=e.ttt_momentum)  # fresh each phase, as the record
    model.train()
    for ci in range(n_chunks - 1):
        lo = ci * chunk
        seqs = (min(lo + chunk, total) - lo) // seq_len
        for g in opt.param_groups:
            g["lr"] = cosine_lr(e.ttt_lr, ci, n_chunks)
        a, b = seqs * rank // world, seqs * (rank + 1) // world
        steps = max(-(-(seqs * (r + 1) // world - seqs * r // world) // bs) for r in range(world))
        for _ in range(e.ttt_epochs):
            for k in range(steps):  # the same number of steps on every rank (a short rank adds zeros)
                s0, s1 = a + k * bs, min(a + (k + 1) * bs, b)
                opt.zero_grad(set_to_none=True)
                if s1 > s0:
                    row = tokens[lo + s0 * seq_len: lo + s1 * seq_len + 1][None]
                    with runtime.autocast(row.device, autocast_dtype):
                        loss = model(row[:, :-1], row[:, 1:], doc_isolated=True)
                    loss.backward()
                if world > 1:
                    for p in params:
                        if p.grad is None:
                            p.grad = torch.zeros_like(p)
                        runtime.all_reduce_mean(p.grad)
                if e.ttt_grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, e.ttt_grad_clip)
                opt.step()
    model.eval()


def check_phased(cfg: Config) -> None:
    check_lora(cfg)
    check_freeze(cfg)


def phase_queue(spans: list[tuple[int, int]], cfg: Config) -> list[int]:
    """Document indices in scoring order: the stream's, or longest first (ties in stream order)."""
    if cfg.eval.phased_order == "longest":
        return sorted(range(len(spans)), key=lambda i: spans[i][0] - spans[i][1])
    return list(range(len(spans)))


# Documents are the units: a document's scores may use its own length (the LoRA chunk windows end at
# the document's end) and every document scored before it (the global SGD between phases).
PHASED = Method("phased", run_phased, lambda cfg: "queue",
                "per-document LoRA TTT with global SGD on the scored prefix between phases", check=check_phased,
                queue=phase_queue)

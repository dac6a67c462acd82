"""Phased TTT: per-document LoRA scoring, with global SGD on the already scored prefix between phases.

The documents (in stream order) are cut at `phased_points`: a phase ends with the document in which
that fraction of the targets falls. Each phase scores its documents with per-document LoRA TTT; then,
unless it is the last phase, the whole scored prefix (exactly the documents so far) trains the shared
model with SGD, so a document depends only on itself and the documents before it.
"""
from __future__ import annotations

import copy

from pgolf.config import Config
from pgolf.eval.context import EvalContext, Method
from pgolf.eval.plans import doc_spans
from pgolf.eval.ttt_lora import check_lora, lora_score_docs
from pgolf.eval.ttt_sgd import check_freeze, cosine_lr, make_sgd, train_range


def phase_bounds(spans: list[tuple[int, int]], points: tuple[float, ...]) -> list[tuple[int, int]]:
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


def run_phased(ctx: EvalContext) -> dict:
    e = ctx.cfg.eval
    spans = doc_spans(ctx.stream.cpu().numpy(), ctx.cfg.model.bos_id)
    phases = phase_bounds(spans, e.phased_points)
    m = copy.deepcopy(ctx.model).to(ctx.device)
    opt = make_sgd(m, e)
    for i, (a, b) in enumerate(phases):
        lora_score_docs(m, ctx.scorer, spans[a:b], e, ctx.window, ctx.rank, ctx.world, ctx.autocast_dtype,
                        ctx.cfg.train.seed, ctx.desc(f"eval phase {i + 1}/{len(phases)}"))
        if i == len(phases) - 1:
            break
        # Documents are contiguous in the stream: the scored prefix is targets [0, end of doc b-1).
        train_range(m, opt, ctx.stream, 0, spans[b - 1][1], ctx.window, e, cosine_lr(e.ttt_lr, i, len(phases)),
                    ctx.rank, ctx.world, ctx.autocast_dtype, doc_isolated=True)
    return {"docs": len(spans), "phases": len(phases)}


def check_phased(cfg: Config) -> None:
    check_lora(cfg)
    check_freeze(cfg)


def stream_queue(spans: list[tuple[int, int]], cfg: Config) -> list[int]:
    """Documents are scored in stream order (phase by phase)."""
    return list(range(len(spans)))


# Documents are the units: a document's scores may use its own length (the LoRA chunk windows end at
# the document's end) and every document scored before it (the global SGD between phases).
PHASED = Method("phased", run_phased, lambda cfg: "queue",
                "per-document LoRA TTT with global SGD on the scored prefix between phases", check=check_phased,
                queue=stream_queue)

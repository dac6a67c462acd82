"""Window-plan methods: plain (the baseline), sliding window, and doc-isolated by per-document windows.

docs: each window holds tokens of one document only, so plain causal attention is already
doc-isolated (no mask, the fast kernels); a document longer than the window is scored with sliding
windows inside it. Windows are sorted by length (less padding): order is free when nothing adapts.
"""
from __future__ import annotations


from pgolf.config import Config, need
from pgolf.eval.context import EvalContext, Method
from pgolf.eval.plans import docs_plan, doc_spans, plain_plan, rank_share, score_windows, sliding_plan


def run_plain(ctx: EvalContext) -> dict:
    e = ctx.cfg.eval
    plan = plain_plan(ctx.scorer.n_targets, ctx.window)
    score_windows(ctx.model, ctx.scorer, rank_share(plan, ctx.rank, ctx.world), e.batch_seqs, e.doc_isolated,
                  ctx.autocast_dtype, ctx.desc("eval plain"))
    return {"windows": len(plan)}


def run_sliding(ctx: EvalContext) -> dict:
    e = ctx.cfg.eval
    plan = sliding_plan(ctx.scorer.n_targets, ctx.window, e.stride)
    score_windows(ctx.model, ctx.scorer, rank_share(plan, ctx.rank, ctx.world), e.batch_seqs, e.doc_isolated,
                  ctx.autocast_dtype, ctx.desc("eval sliding"))
    return {"windows": len(plan)}


def run_docs(ctx: EvalContext) -> dict:
    e = ctx.cfg.eval
    spans = doc_spans(ctx.stream.cpu().numpy(), ctx.cfg.model.bos_id)
    plan = sorted(docs_plan(spans, ctx.window, e.stride), key=lambda w: w.length)
    score_windows(ctx.model, ctx.scorer, rank_share(plan, ctx.rank, ctx.world), e.batch_seqs, False,
                  ctx.autocast_dtype, ctx.desc("eval docs"))
    return {"windows": len(plan), "docs": len(spans)}


def check_stride(cfg: Config) -> None:
    w = cfg.eval.window(cfg.train)
    need(cfg.eval.stride <= w, "eval.stride", f"must be <= the eval window ({w}), got {cfg.eval.stride}")


def _isolated(cfg: Config):
    return "documents" if cfg.eval.doc_isolated else "stream"


PLAIN = Method("plain", run_plain, _isolated, "non-overlapping windows of the eval length (the baseline)")
SLIDING = Method("sliding", run_sliding, _isolated, "sliding windows, each scoring its last `stride` targets",
                 check=check_stride)
DOCS = Method("docs", run_docs, lambda cfg: "documents", "per-document sliding windows (doc-isolated)",
              check=check_stride)

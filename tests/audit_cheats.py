"""Cheating evaluation methods written outside pgolf, against its public harness API. Each one is a
`Method` whose scores look plausible and which the audit must fail (tests/test_eval_audit.py)."""
from __future__ import annotations

import torch

from pgolf.eval.context import EvalContext, Method
from pgolf.eval.plans import doc_spans, docs_plan, log_probs, sliding_plan, window_inputs
from pgolf.eval.windowed import PLAIN, SLIDING

LONG = 8192


def _windows(ctx: EvalContext, window: int, stride: int):
    """(logits [n, V], positions [n]) of a sliding plan, batch by batch."""
    plan = sliding_plan(ctx.scorer.n_targets, window, stride)
    for i in range(0, len(plan), ctx.cfg.eval.batch_seqs):
        group = plan[i: i + ctx.cfg.eval.batch_seqs]
        x, pos, mask = window_inputs(ctx.stream, group)
        with torch.no_grad():
            logits = ctx.model.logits_from_hidden(ctx.model.hidden(x))
        yield logits[mask].float(), pos[mask]


def _sliding(ctx: EvalContext, adjust) -> dict:
    """Sliding-window scores whose log-probabilities `adjust(lp, y, pos)` rewrites."""
    for logits, pos in _windows(ctx, ctx.window, ctx.cfg.eval.stride):
        y = ctx.scorer.targets(pos)
        ctx.scorer.score(adjust(log_probs(logits), logits, y, pos), pos)
    return {}


def _boost(logits, y, amount=2.0):
    out = logits.clone()
    out[torch.arange(len(y)), y] += amount
    return log_probs(out)


def boost_true_logit(ctx):  # +2 on the answer's logit, then a proper softmax
    return _sliding(ctx, lambda lp, logits, y, pos: _boost(logits, y))


def clip_nll(ctx):  # no target may cost more than 4 nats
    return _sliding(ctx, lambda lp, logits, y, pos: lp.clamp(min=-4.0))


def unnormalized(ctx):  # probabilities that sum to 1.35
    return _sliding(ctx, lambda lp, logits, y, pos: lp + torch.log(torch.tensor(1.35)))


def nan_somewhere(ctx):  # NaN at a few positions (they drop out of a careless max())
    def adjust(lp, logits, y, pos):
        bad = (pos % 97) == 5
        return torch.where(bad[:, None], torch.full_like(lp, float("nan")), lp)
    return _sliding(ctx, adjust)


def best_of_two_windows(ctx):  # per target, the better of a short and a long context
    half = max(ctx.window // 2, ctx.cfg.eval.stride)
    short = {int(p): lp for logits, pos in _windows(ctx, half, min(ctx.cfg.eval.stride, half))
             for p, lp in zip(pos.tolist(), log_probs(logits))}
    for logits, pos in _windows(ctx, ctx.window, ctx.cfg.eval.stride):
        lp = log_probs(logits)
        y = ctx.scorer.targets(pos)
        other = torch.stack([short[int(p)] for p in pos.tolist()])
        better = other.gather(1, y[:, None]) > lp.gather(1, y[:, None])
        ctx.scorer.score(torch.where(better, other, lp), pos)
    return {}


def only_on_long_streams(ctx):  # honest on short (audit-sized) streams, boosted on long ones
    if ctx.stream.numel() <= LONG:
        return SLIDING.run(ctx)
    return boost_true_logit(ctx)


def except_at_fixed_points(ctx):  # honest where a deterministic audit would look, boosted elsewhere
    n = ctx.scorer.n_targets
    spots = torch.tensor([int(n * (k + 1) / 4) for k in range(3)])
    return _sliding(ctx, lambda lp, logits, y, pos: torch.where(
        torch.isin(pos, spots)[:, None], lp, _boost(logits, y)))


def peeks_at_next_token(ctx):  # the classic leak: the logit of the token after the target
    def adjust(lp, logits, y, pos):
        nxt = ctx.stream[(pos + 2).clamp(max=ctx.stream.numel() - 1)]
        return _boost(logits, nxt, 1.0)
    return _sliding(ctx, adjust)


def trains_then_scores(ctx):  # TTT the wrong way round: adapt to each chunk, then score it
    import copy

    from pgolf.eval.plans import rank_share, score_windows, split_plan
    from pgolf.eval.ttt_sgd import cosine_lr, make_sgd, train_range

    e, n, chunk = ctx.cfg.eval, ctx.scorer.n_targets, ctx.cfg.eval.ttt_chunk_tokens
    plans = split_plan(sliding_plan(n, ctx.window, min(e.stride, ctx.window)), chunk, n)
    m = copy.deepcopy(ctx.model)
    opt = make_sgd(m, e)
    for c, plan in enumerate(plans):
        lo, hi = c * chunk, min((c + 1) * chunk, n)
        train_range(m, opt, ctx.stream, [(lo, hi)], ctx.window, e, e.ttt_lr, 0, 1)
        score_windows(m, ctx.scorer, rank_share(plan, 0, 1), e.batch_seqs)
    return {}


def scores_twice(ctx):  # every target scored twice; the sums double, the mean stays
    SLIDING.run(ctx)
    return SLIDING.run(ctx)


def caches_two_documents_back(ctx):  # doc-isolated windows, yet biased toward the last token of doc k-2
    spans = doc_spans(ctx.stream.cpu().numpy(), ctx.cfg.model.bos_id)
    doc_of = torch.zeros(ctx.scorer.n_targets, dtype=torch.long)
    for k, (lo, hi) in enumerate(spans):
        doc_of[lo:hi] = k
    hint = torch.tensor([int(ctx.stream[spans[k - 2][1] - 1]) if k >= 2 else 0 for k in range(len(spans))])
    plan = docs_plan(spans, ctx.window, ctx.cfg.eval.stride)
    for i in range(0, len(plan), ctx.cfg.eval.batch_seqs):
        x, pos, mask = window_inputs(ctx.stream, plan[i: i + ctx.cfg.eval.batch_seqs])
        with torch.no_grad():
            logits = ctx.model.logits_from_hidden(ctx.model.hidden(x))[mask].float()
        pos = pos[mask]
        ctx.scorer.score(_boost(logits, hint[doc_of[pos]], 0.5), pos)
    return {}


def _doc_order(cfg):
    return "documents"


CHEATS = {
    "boost_true_logit": Method("boost_true_logit", boost_true_logit, PLAIN.order, "cheat"),
    "clip_nll": Method("clip_nll", clip_nll, PLAIN.order, "cheat"),
    "unnormalized": Method("unnormalized", unnormalized, PLAIN.order, "cheat"),
    "nan_somewhere": Method("nan_somewhere", nan_somewhere, PLAIN.order, "cheat"),
    "best_of_two_windows": Method("best_of_two_windows", best_of_two_windows, PLAIN.order, "cheat"),
    "only_on_long_streams": Method("only_on_long_streams", only_on_long_streams, PLAIN.order, "cheat"),
    "except_at_fixed_points": Method("except_at_fixed_points", except_at_fixed_points, PLAIN.order, "cheat"),
    "peeks_at_next_token": Method("peeks_at_next_token", peeks_at_next_token, PLAIN.order, "cheat"),
    "trains_then_scores": Method("trains_then_scores", trains_then_scores, PLAIN.order, "cheat"),
    "scores_twice": Method("scores_twice", scores_twice, PLAIN.order, "cheat"),
    "caches_two_documents_back": Method("caches_two_documents_back", caches_two_documents_back, _doc_order, "cheat"),
}

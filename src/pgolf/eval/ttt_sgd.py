"""Score-first chunked test-time training of the full model with SGD (seed PR #1413).

The targets are cut into chunks of `ttt_chunk_tokens`. For each chunk: score it (sliding windows
cut at the chunk boundaries; context may come from earlier chunks) under no_grad, then, unless it
is the last chunk, train on exactly that chunk's tokens. So a target is always scored by a model
that never saw it or anything after it. The caller's model is never changed (a deep copy trains).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from pgolf import runtime
from pgolf.config import Config, EvalConfig, need
from pgolf.eval.context import EvalContext, Method
from pgolf.eval.plans import rank_share, score_windows, sliding_plan, split_plan
from pgolf.eval.windowed import check_stride
from pgolf.logs import bar


def cosine_lr(base_lr: float, step: int, n_steps: int) -> float:
    """Cosine decay from base_lr (step 0) to 0 (step n_steps - 1)."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / max(n_steps - 1, 1)))


def trainable_params(model: torch.nn.Module, freeze_blocks: int) -> list[torch.nn.Parameter]:
    """All parameters except those of the first `freeze_blocks` blocks (which stop needing grads)."""
    frozen = set()
    for block in list(getattr(model, "blocks", []))[:freeze_blocks]:
        for p in block.parameters():
            frozen.add(id(p))
            p.requires_grad_(False)
    return [p for p in model.parameters() if id(p) not in frozen and p.requires_grad]


def make_sgd(model: torch.nn.Module, ecfg: EvalConfig) -> torch.optim.SGD:
    return torch.optim.SGD(trainable_params(model, ecfg.ttt_freeze_blocks), lr=ecfg.ttt_lr, momentum=ecfg.ttt_momentum)


def train_range(model: torch.nn.Module, opt: torch.optim.Optimizer, stream: torch.Tensor,
                ranges: list[tuple[int, int]], seq_len: int, ecfg: EvalConfig, lr: float, rank: int = 0,
                world: int = 1, autocast_dtype: torch.dtype | None = None, doc_isolated: bool = False) -> None:
    """`ecfg.ttt_epochs` epochs of SGD on the targets of `ranges` ([lo, hi) each) in sequences of at
    most `seq_len` that never leave their range.

    Each global batch holds `ttt_batch_seqs` sequences; rank r takes every world-th one and the
    summed gradients are divided by the batch's global target count, so all ranks step identically.
    """
    seqs = [(s, min(seq_len, hi - s)) for lo, hi in ranges for s in range(lo, hi, seq_len)]
    if not seqs:
        return
    for g in opt.param_groups:
        g["lr"] = lr
    params = [p for g in opt.param_groups for p in g["params"]]
    dev = stream.device
    was_training = model.training
    model.train()
    for _ in range(ecfg.ttt_epochs):
        for b in range(0, len(seqs), ecfg.ttt_batch_seqs):
            batch = seqs[b: b + ecfg.ttt_batch_seqs]
            n_global = sum(n for _, n in batch)
            mine = batch[rank::world]
            opt.zero_grad(set_to_none=False)
            if mine:
                L = max(n for _, n in mine)
                off = torch.arange(L, device=dev)
                pos = torch.tensor([s for s, _ in mine], device=dev)[:, None] + off[None]
                valid = off[None] < torch.tensor([n for _, n in mine], device=dev)[:, None]
                x = stream[pos.clamp(max=len(stream) - 1)]
                y = torch.where(valid, stream[(pos + 1).clamp(max=len(stream) - 1)], -100)
                with runtime.autocast(dev, autocast_dtype):
                    logits = model(x, doc_isolated=doc_isolated)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                       ignore_index=-100, reduction="sum") / n_global
                loss.backward()
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            if world > 1:
                for p in params:
                    runtime.all_reduce_sum(p.grad)
            if ecfg.ttt_grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, ecfg.ttt_grad_clip)
            opt.step()
    if not was_training:
        model.eval()


def run_ttt_sgd(ctx: EvalContext) -> dict:
    e, scorer = ctx.cfg.eval, ctx.scorer
    n_targets, chunk, w = scorer.n_targets, e.ttt_chunk_tokens, ctx.window
    plans = split_plan(sliding_plan(n_targets, w, min(e.stride, w)), chunk, n_targets)
    m = copy.deepcopy(ctx.model).to(ctx.device)
    opt = make_sgd(m, e)
    chunks = range(len(plans))
    for c in (bar(chunks, desc="eval ttt-sgd", unit="chunk") if ctx.progress else chunks):
        score_windows(m, scorer, rank_share(plans[c], ctx.rank, ctx.world), e.batch_seqs, e.doc_isolated,
                      ctx.autocast_dtype)
        if c == len(plans) - 1:
            break
        lo, hi = c * chunk, min((c + 1) * chunk, n_targets)
        train_range(m, opt, ctx.stream, [(lo, hi)], w, e, cosine_lr(e.ttt_lr, c, len(plans)), ctx.rank, ctx.world,
                    ctx.autocast_dtype, e.doc_isolated)
    return {"chunks": len(plans)}


def check_freeze(cfg: Config) -> None:
    need(cfg.eval.ttt_freeze_blocks <= cfg.model.num_layers, "eval.ttt_freeze_blocks",
         f"must be <= model.num_layers={cfg.model.num_layers}, got {cfg.eval.ttt_freeze_blocks}")


def check_ttt_sgd(cfg: Config) -> None:
    check_stride(cfg)
    check_freeze(cfg)


TTT_SGD = Method("ttt-sgd", run_ttt_sgd, lambda cfg: "stream",
                 "score-first chunked TTT of the whole model with SGD", check=check_ttt_sgd)

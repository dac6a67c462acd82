"""Score-first chunked test-time training of the full model with SGD (seed PR #1413).

The targets are cut into chunks of `ttt_chunk_tokens`. For each chunk: score it (sliding windows
cut at the chunk boundaries; context may come from earlier chunks) under no_grad, then, unless it
is the last chunk, train on exactly that chunk's tokens. So a target is always scored by a model
that never saw it or anything after it. The caller's model is never mutated (a deep copy trains).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pgolf.config import EvalConfig
from pgolf.data.tokenizer import ByteTables
from pgolf.eval.plain import rank_slice
from pgolf.eval.sliding import ScoreLog, Scorer, as_stream, score_plan, sliding_plan, split_plan, update_positions


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


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
    params = trainable_params(model, ecfg.ttt_freeze_blocks)
    return torch.optim.SGD(params, lr=ecfg.ttt_lr, momentum=ecfg.ttt_momentum)


def train_range(model: torch.nn.Module, opt: torch.optim.Optimizer, stream: torch.Tensor, lo: int, hi: int,
                seq_len: int, ecfg: EvalConfig, lr: float, rank: int = 0, world: int = 1,
                autocast_dtype: torch.dtype | None = None, log: ScoreLog | None = None,
                doc_isolated: bool = False) -> None:
    """`ecfg.ttt_epochs` epochs of SGD on targets [lo, hi) in sequences of `seq_len`.

    Each global batch holds `ttt_batch_seqs` sequences; rank r takes every world-th one and the
    summed gradients are divided by the batch's global target count, so all ranks step identically.
    """
    if hi <= lo:
        return
    if log is not None:
        log.update(update_positions(lo, hi))
    for g in opt.param_groups:
        g["lr"] = lr
    params = [p for g in opt.param_groups for p in g["params"]]
    dev = stream.device
    seqs = [(s, min(seq_len, hi - s)) for s in range(lo, hi, seq_len)]
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
                with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    logits = model(x, doc_isolated=doc_isolated)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                       ignore_index=-100, reduction="sum") / n_global
                loss.backward()
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            if _distributed() and world > 1:
                for p in params:
                    dist.all_reduce(p.grad)
            if ecfg.ttt_grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, ecfg.ttt_grad_clip)
            opt.step()
    if not was_training:
        model.eval()


def evaluate_ttt_sgd(model: torch.nn.Module, tokens: np.ndarray, tables: ByteTables, ecfg: EvalConfig,
                     window: int, device: torch.device | str = "cpu", rank: int = 0, world: int = 1,
                     doc_isolated: bool = False, autocast_dtype: torch.dtype | None = None,
                     log: ScoreLog | None = None, progress: bool = False) -> dict:
    """Score-first chunked TTT: val_loss, val_bpb, tokens, bytes, chunks, nll."""
    stream = as_stream(tokens, device)
    scorer = Scorer(stream, tables, log)
    n_targets = scorer.n_targets
    chunk = ecfg.ttt_chunk_tokens
    plans = split_plan(sliding_plan(n_targets, window, min(ecfg.stride, window)), chunk, n_targets)
    m = copy.deepcopy(model).to(device)
    opt = make_sgd(m, ecfg)
    it = range(len(plans))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="eval ttt-sgd", unit="chunk", leave=False, disable=None)
    for c in it:
        score_plan(m, scorer, rank_slice(plans[c], rank, world), ecfg.batch_seqs, doc_isolated, autocast_dtype)
        if c == len(plans) - 1:
            break
        lo, hi = c * chunk, min((c + 1) * chunk, n_targets)
        train_range(m, opt, stream, lo, hi, window, ecfg, cosine_lr(ecfg.ttt_lr, c, len(plans)),
                    rank, world, autocast_dtype, log, doc_isolated)
    out = scorer.result()
    out["chunks"] = len(plans)
    return out

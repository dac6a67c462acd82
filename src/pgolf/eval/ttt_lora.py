"""Per-document LoRA test-time training (seed: swapp1990's non-record run).

Each document is scored in chunks of `lora_chunk` targets. A chunk is scored with the document's
earlier tokens as context (the last `window` tokens at most), then one optimizer step on rank-r
adapters trains on that chunk; the adapters start afresh for every document. Many documents run
together: every adapter holds one (A, B) pair per batch row, applied with bmm, so rows never mix.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pgolf import runtime
from pgolf.config import Config, EvalConfig, need
from pgolf.eval.context import EvalContext, Method
from pgolf.eval.plans import doc_spans, log_probs
from pgolf.eval.scorer import Scorer, ScoreRecord
from pgolf.logs import bar

# target name -> (submodule of a block, attribute)
LORA_TARGETS = {"q": ("attn", "c_q"), "k": ("attn", "c_k"), "v": ("attn", "c_v"), "o": ("attn", "proj"),
                "mlp": ("mlp", "fc")}
HEAD_TARGET = "lm_head"


class BatchedLoRA(nn.Module):
    """base(x) + x A_r^T B_r^T for batch row r: per-row adapters [rows, r, in] / [rows, out, r].

    B starts at zero, so a fresh adapter is exactly the identity. `active` selects the rows that
    the current batch holds (documents that still have chunks).
    """

    def __init__(self, base: nn.Module | None, rows: int, in_features: int, out_features: int, a_init: torch.Tensor,
                 b_init: torch.Tensor | None = None, scale: float = 1.0):
        super().__init__()
        self.base, self.scale = base, scale
        if b_init is None:
            b_init = torch.zeros(out_features, a_init.size(0), device=a_init.device)
        self.register_buffer("a_init", a_init.clone(), persistent=False)
        self.register_buffer("b_init", b_init.clone(), persistent=False)
        self.A = nn.Parameter(a_init.expand(rows, *a_init.shape).clone())
        self.B = nn.Parameter(b_init.expand(rows, *b_init.shape).clone())
        self.active: torch.Tensor | None = None
        self.enabled = True

    @torch.no_grad()
    def reset(self) -> None:
        self.A.copy_(self.a_init.expand_as(self.A))
        self.B.copy_(self.b_init.expand_as(self.B))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return torch.zeros((*x.shape[:-1], self.B.size(1)), dtype=x.dtype, device=x.device)
        A, B = (self.A, self.B) if self.active is None else (self.A[self.active], self.B[self.active])
        d = torch.bmm(torch.bmm(x, A.transpose(1, 2).to(x.dtype)), B.transpose(1, 2).to(x.dtype))
        return d * self.scale if self.scale != 1.0 else d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.delta(x)


class LoRASet:
    """The adapters attached to one model (block linears, and optionally one on the logits)."""

    def __init__(self, modules: list[BatchedLoRA], head: BatchedLoRA | None):
        self.modules, self.head = modules, head

    def all(self) -> list[BatchedLoRA]:
        return self.modules + ([self.head] if self.head is not None else [])

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.all() for p in (m.A, m.B)]

    def reset(self) -> None:
        for m in self.all():
            m.reset()

    def set_active(self, rows: torch.Tensor) -> None:
        for m in self.all():
            m.active = rows

    def set_enabled(self, on: bool) -> None:
        for m in self.all():
            m.enabled = on


def _a_init(gen: torch.Generator, rank: int, in_features: int, device) -> torch.Tensor:
    bound = 1.0 / math.sqrt(in_features)
    return ((torch.rand(rank, in_features, generator=gen) * 2 - 1) * bound).to(device)


def _adapter(base: nn.Module | None, gen: torch.Generator, rows: int, rank: int, d_in: int, d_out: int,
             init: str, device) -> BatchedLoRA:
    if init == "record":  # swapp1990's script: both factors Gaussian, the product scaled 1/rank
        a = (torch.randn(rank, d_in, generator=gen) * 0.01).to(device)
        b = (torch.randn(d_out, rank, generator=gen) * 0.001).to(device)
        return BatchedLoRA(base, rows, d_in, d_out, a, b, 1.0 / rank)
    return BatchedLoRA(base, rows, d_in, d_out, _a_init(gen, rank, d_in, device))


@contextmanager
def attached_lora(model: nn.Module, targets: tuple[str, ...], rows: int, rank: int, seed: int = 0,
                  init: str = "pgolf") -> Iterator[LoRASet]:
    """Wrap the targeted linears of every block with batched adapters; restore them on exit.

    The initial factors are fixed by `seed` and identical for every row, so a document's trajectory
    never depends on which batch (or rank) it lands in.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    mods: list[BatchedLoRA] = []
    for block in model.blocks:
        for t in targets:
            if t == HEAD_TARGET:
                continue
            parent = getattr(block, LORA_TARGETS[t][0])
            attr = LORA_TARGETS[t][1]
            base = getattr(parent, attr)
            lora = _adapter(base, gen, rows, rank, base.in_features, base.out_features, init, device)
            setattr(parent, attr, lora)
            swapped.append((parent, attr, base))
            mods.append(lora)
    head = None
    if HEAD_TARGET in targets:
        vocab, d = model.tok_emb.weight.shape  # the head maps the final hidden (d) to the vocab
        head = _adapter(None, gen, rows, rank, d, vocab, init, device)
    try:
        yield LoRASet(mods, head)
    finally:
        for parent, attr, base in swapped:
            setattr(parent, attr, base)


def doc_batches(spans: list[tuple[int, int]], batch_docs: int) -> list[list[tuple[int, int]]]:
    """Documents sorted by length (less padding), cut into batches."""
    order = sorted(spans, key=lambda s: (s[1] - s[0], s[0]))
    return [order[i: i + batch_docs] for i in range(0, len(order), batch_docs)]


def lora_score_docs(model: nn.Module, scorer: Scorer, spans: list[tuple[int, int]], ecfg: EvalConfig,
                    window: int, rank: int = 0, world: int = 1, autocast_dtype: torch.dtype | None = None,
                    seed: int = 0, desc: str | None = None) -> None:
    """Score documents `spans` with per-document LoRA TTT on `model` (its weights stay frozen);
    batches go round-robin to ranks."""
    K = ecfg.lora_chunk
    # short documents (fewer than lora_min_doc targets) are batched apart and scored without TTT
    short = [s for s in spans if s[1] - s[0] < ecfg.lora_min_doc]
    long = [s for s in spans if s[1] - s[0] >= ecfg.lora_min_doc]
    groups = ([(g, False) for g in doc_batches(short, ecfg.lora_batch_docs)]
              + [(g, True) for g in doc_batches(long, ecfg.lora_batch_docs)])[rank::world]
    if desc is not None:
        groups = bar(groups, desc=desc, unit="batch")
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    try:
        with attached_lora(model, ecfg.lora_targets, ecfg.lora_batch_docs, ecfg.lora_rank, seed,
                           ecfg.lora_init) as lora:
            for group, adapt in groups:
                lora.reset()
                lora.set_enabled(adapt)  # short documents: the base model alone, no step
                params = lora.parameters()
                if ecfg.lora_optimizer == "adam":
                    opt = torch.optim.AdamW(params, lr=ecfg.lora_lr, betas=(ecfg.lora_beta1, ecfg.lora_beta2),
                                            eps=ecfg.lora_eps, weight_decay=ecfg.lora_wd)
                else:
                    opt = torch.optim.SGD(params, lr=ecfg.lora_lr)
                n_chunks = max(math.ceil((hi - lo) / K) for lo, hi in group)
                for k in range(n_chunks):
                    _lora_step(model, lora, opt, scorer, group, k, K, window, autocast_dtype,
                               ecfg.lora_context, adapt)
                lora.set_enabled(True)
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        if was_training:
            model.train()


def _lora_step(model: nn.Module, lora: LoRASet, opt: torch.optim.Optimizer, scorer: Scorer,
               group: list[tuple[int, int]], k: int, K: int, window: int,
               autocast_dtype: torch.dtype | None, context: bool = True, train: bool = True) -> None:
    """Score chunk k of every document in the batch that has one (with the document's earlier tokens
    as context, or alone), then one step on those chunks when `train`."""
    stream, dev = scorer.stream, scorer.device
    rows = [i for i, (lo, hi) in enumerate(group) if lo + k * K < hi]
    spec = []  # (window start, chunk start, chunk end) per active row
    for i in rows:
        lo, hi = group[i]
        c_lo, c_hi = lo + k * K, min(lo + (k + 1) * K, hi)
        spec.append((max(lo, c_hi - window) if context else c_lo, c_lo, c_hi))
    w_start = torch.tensor([s[0] for s in spec], device=dev)
    c_lo = torch.tensor([s[1] for s in spec], device=dev)
    c_len = torch.tensor([s[2] - s[1] for s in spec], device=dev)
    L = max(s[2] - s[0] for s in spec)
    off = torch.arange(L, device=dev)
    x = stream[(w_start[:, None] + off[None]).clamp(max=len(stream) - 1)]
    j = torch.arange(K, device=dev)
    pos = c_lo[:, None] + j[None]  # target index of each chunk slot [R, K]
    valid = j[None] < c_len[:, None]
    slot = (pos - w_start[:, None]).clamp(max=L - 1)
    y = stream[(pos + 1).clamp(max=len(stream) - 1)]
    lora.set_active(torch.tensor(rows, device=dev))
    with runtime.autocast(dev, autocast_dtype):
        h = model.hidden(x)
        hc = torch.gather(h, 1, slot[..., None].expand(-1, -1, h.size(-1)))
        logits = model.logits_from_hidden(hc)
        if lora.head is not None:
            logits = logits + lora.head.delta(hc).float()
    logits = logits.float()
    scorer.score(log_probs(logits), pos, valid)
    if not train:
        return
    # Per-row mean NLL, summed over rows: each document's gradient is its own.
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view(valid.shape)
    loss = (nll * valid / c_len[:, None]).sum()
    opt.zero_grad(set_to_none=False)
    loss.backward()
    opt.step()


def run_ttt_lora(ctx: EvalContext) -> dict:
    spans = doc_spans(ctx.stream.cpu().numpy(), ctx.cfg.model.bos_id)
    m = copy.deepcopy(ctx.model).to(ctx.device)
    lora_score_docs(m, ctx.scorer, spans, ctx.cfg.eval, ctx.window, ctx.rank, ctx.world, ctx.autocast_dtype,
                    ctx.cfg.train.seed, ctx.desc("eval ttt-lora"))
    return {"docs": len(spans)}


SCRIPT_MIN_DOC = 5  # swapp1990's script leaves out documents of fewer tokens (BOS included)
SCRIPT_NOTE = "swapp1990's stored-script scoring (5+ token documents, no closing BOS; not challenge.md's val_bpb)"


def script_targets(tokens: np.ndarray, chunk: int, min_doc: int, bos_id: int) -> np.ndarray:
    """Which targets swapp1990's stored script scores (a bool per target): each document that starts
    at a BOS and holds 5+ tokens, from its first token to its last (the next document's BOS is no
    target there); a document of min_doc+ tokens goes in chunks of `chunk` targets and a last chunk of
    one target is skipped. Tokens before the first BOS are no document there."""
    tokens = np.asarray(tokens)
    keep = np.zeros(max(len(tokens) - 1, 0), dtype=bool)
    starts = np.flatnonzero(tokens == bos_id).tolist()
    for lo, end in zip(starts, starts[1:] + [len(tokens)]):
        n = end - lo - 1  # the document's next-token predictions
        if n + 1 < SCRIPT_MIN_DOC:
            continue
        keep[lo: lo + n] = True
        if n + 1 >= min_doc and chunk == 1:  # chunked, and every chunk holds one target
            keep[lo: lo + n] = False
        elif n + 1 >= min_doc and n % chunk == 1:  # the last chunk holds one target
            keep[lo + n - 1] = False
    return keep


def script_scoring(record: ScoreRecord, tokens: np.ndarray, nbytes: np.ndarray, cfg: Config) -> dict:
    """The stored script's figure over an evaluation's per-target NLLs: a comparison with its log,
    not challenge.md's val_bpb (which scores every target)."""
    keep = torch.as_tensor(script_targets(tokens, cfg.eval.lora_chunk, cfg.eval.lora_min_doc, cfg.model.bos_id))
    nll = record.nll.double()[keep]
    total, nb = float(nll.sum()), int(np.asarray(nbytes, dtype=np.int64)[keep.numpy()].sum())
    n = int(keep.sum())
    return {"val_bpb": total / math.log(2) / max(nb, 1), "val_loss": total / max(n, 1), "tokens": n,
            "bytes": nb, "note": SCRIPT_NOTE}


def check_lora(cfg: Config) -> None:
    w = cfg.eval.window(cfg.train)
    need(cfg.eval.lora_chunk <= w, "eval.lora_chunk", f"must be <= the eval window ({w}), got {cfg.eval.lora_chunk}")


TTT_LORA = Method("ttt-lora", run_ttt_lora, lambda cfg: "documents",
                  "per-document LoRA TTT, score-first in chunks, adapters reset per document", check=check_lora)

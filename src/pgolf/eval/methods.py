"""The registry of evaluation methods, and `evaluate`: the one entry every evaluation goes through.

`evaluate(model, tokens, nbytes, cfg, device)` builds the Scorer, runs the method, and returns
{"method", "val_loss", "val_bpb", "tokens" (targets scored), "bytes", "seconds", ...the method's
facts}, plus the ScoreRecord under "record" when asked (the audit reads it). A new method is a
module defining a `Method`, one entry in METHODS, and its name in config.EvalMethod.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from pgolf import runtime
from pgolf.config import Config, EvalConfig, choices, need
from pgolf.errors import ConfigError, WorkError
from pgolf.eval.context import EvalContext, Method
from pgolf.eval.phased import PHASED
from pgolf.eval.scorer import Scorer
from pgolf.eval.ttt_lora import TTT_LORA
from pgolf.eval.ttt_sgd import TTT_SGD
from pgolf.eval.windowed import DOCS, PLAIN, SLIDING
from pgolf.logs import DETAIL, log

METHODS: dict[str, Method] = {m.name: m for m in (PLAIN, SLIDING, DOCS, TTT_SGD, TTT_LORA, PHASED)}
assert tuple(METHODS) == choices(EvalConfig, "method"), "config.EvalMethod and METHODS must list the same names"

# Evaluated on CPU when the config sets no cap: the first ~1M validation tokens (the 901-doc FineWeb
# prefix shipped in ../shared is 1,040,060 sp1024 tokens, so there it is all of it).
CPU_EVAL_TOKENS = 1_048_576
KEEP = 16  # distributions every evaluation keeps at random targets (the audit reads them)


def method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"eval.method: expected one of {' | '.join(METHODS)}, got '{name}'")
    return METHODS[name]


def check(cfg: Config, name: str | None = None) -> Method:
    """The method's entry after its config checks (run before any training starts)."""
    m = method(name or cfg.eval.method)
    need(cfg.eval.window(cfg.train) >= 1, "eval.seq_len", "the eval window must be >= 1")
    m.check(cfg)
    return m


def eval_token_cap(cfg: Config, device: torch.device) -> tuple[int, str]:
    """How many val tokens to evaluate (0 = all), and a note saying what that is."""
    if cfg.eval.max_tokens:
        return cfg.eval.max_tokens, f"the first {cfg.eval.max_tokens:,} validation tokens (eval.max_tokens)"
    if device.type == "cpu":
        hint = "set eval.max_tokens to change it, " if DETAIL else ""  # (the counted script cannot)
        return CPU_EVAL_TOKENS, (f"the first {CPU_EVAL_TOKENS:,} validation tokens (the CPU default; "
                                 f"{hint}the full split needs a GPU)")
    return 0, "the full validation split"


def evaluate(model: torch.nn.Module, tokens: np.ndarray, nbytes: np.ndarray, cfg: Config,
             device: torch.device | str = "cpu", method_name: str | Method | None = None, *, progress: bool = False,
             keep: np.ndarray | list[int] | None = None, with_record: bool = False) -> dict:
    """Score `tokens` (already cut to the eval subset) with the method; `nbytes[i]` are the bytes of
    target i. Over eval.time_limit the result carries a "warning" (or, with enforce_time_limit, a
    WorkError is raised). Only the method's own work is timed."""
    m = method_name if isinstance(method_name, Method) else check(cfg, method_name)
    if len(tokens) < 2:
        raise ConfigError(f"eval.max_tokens: need at least 2 tokens to score, have {len(tokens)}")
    device = torch.device(device)
    if keep is None and DETAIL:  # every evaluation keeps a few distributions, audited or not (same harness)
        keep = np.random.default_rng().choice(len(tokens) - 1, size=min(KEEP, len(tokens) - 1), replace=False)
    stream = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=device)
    scorer = Scorer(stream, torch.as_tensor(np.asarray(nbytes, dtype=np.int32), device=device),
                    cfg.model.vocab_size, keep)
    ctx = EvalContext(model.to(device), stream, scorer, cfg, device, runtime.autocast_dtype(cfg.train, device),
                      runtime.rank(), runtime.world(), progress)
    runtime.synchronize(device)
    t0 = time.perf_counter()
    facts = m.run(ctx)
    out = scorer.result()
    seconds = time.perf_counter() - t0
    out.update(facts)
    out.update(method=m.name, seconds=seconds, window=ctx.window)
    off = scorer.normalization_error() if DETAIL else 0.0  # a diagnostic: the audit checks it from outside
    if off > 1e-3:
        out["warning_normalization"] = f"kept distributions do not sum to 1 (off by up to {off:.3g}) or are not finite"
        log.warning(f"warning: {m.name}: {out['warning_normalization']}")
    e = cfg.eval
    if e.time_limit and seconds > e.time_limit:
        msg = f"evaluation took {seconds:.1f} s, over eval.time_limit={e.time_limit:g} s"
        if e.enforce_time_limit:
            raise WorkError(msg)
        log.warning(f"warning: {msg}")
        out["warning"] = msg
    if with_record:
        out["record"] = scorer.record()
    return out

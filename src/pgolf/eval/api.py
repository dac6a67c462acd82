"""One entry point for every evaluation method, with the wall-clock budget check.

`evaluate(model, tokens, tables, cfg)` returns {"method", "val_loss", "val_bpb", "tokens", "bytes",
"seconds", ..., "nll"}; "nll" is the per-target NLL tensor (target i = token i+1; NaN where another
rank scored it) that the audit reads. Methods never mutate the caller's model.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pgolf.config import Config, ConfigError, apply_overrides
from pgolf.data.tokenizer import ByteTables
from pgolf.errors import InputError
from pgolf.eval.docs import evaluate_docs
from pgolf.eval.sliding import ScoreLog, evaluate_plan, evaluate_sliding, plain_plan

METHODS = ("plain", "sliding", "docs", "ttt-sgd", "ttt-lora", "phased")
SUMMARY_FILE = "summary.json"


def eval_window(cfg: Config) -> int:
    """The evaluation window: eval.seq_len, or train.seq_len when that is 0."""
    return cfg.eval.seq_len or cfg.train.seq_len


def check_eval_config(cfg: Config, method: str) -> None:
    """Validate the eval fields a method uses (ConfigError names the field)."""
    e, w = cfg.eval, eval_window(cfg)

    def need(cond: bool, where: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{where}: {msg}")

    need(method in METHODS, "eval.method", f"expected one of {' | '.join(METHODS)}, got '{method}'")
    need(w >= 1, "eval.seq_len", f"must be >= 1, got {w}")
    if method in ("sliding", "docs", "ttt-sgd"):
        need(1 <= e.stride <= w, "eval.stride", f"must be in [1, window={w}], got {e.stride}")
    need(e.time_limit >= 0, "eval.time_limit", "must be >= 0 (0 = no limit)")
    if method in ("ttt-sgd", "phased"):
        need(e.ttt_chunk_tokens >= 1, "eval.ttt_chunk_tokens", "must be >= 1")
        need(e.ttt_lr >= 0, "eval.ttt_lr", "must be >= 0")
        need(0 <= e.ttt_momentum < 1, "eval.ttt_momentum", "must be in [0, 1)")
        need(e.ttt_epochs >= 0, "eval.ttt_epochs", "must be >= 0")
        need(e.ttt_grad_clip >= 0, "eval.ttt_grad_clip", "must be >= 0 (0 = off)")
        need(e.ttt_batch_seqs >= 1, "eval.ttt_batch_seqs", "must be >= 1")
        need(0 <= e.ttt_freeze_blocks <= cfg.model.num_layers, "eval.ttt_freeze_blocks",
             f"must be in [0, num_layers={cfg.model.num_layers}]")
    if method in ("ttt-lora", "phased"):
        from pgolf.eval.ttt_lora import HEAD_TARGET, LORA_TARGETS

        known = sorted(LORA_TARGETS) + [HEAD_TARGET]
        bad = [t for t in e.lora_targets if t not in known]
        need(not bad and bool(e.lora_targets), "eval.lora_targets", f"expected a non-empty subset of {known}, got {e.lora_targets}")
        need(e.lora_rank >= 1, "eval.lora_rank", "must be >= 1")
        need(1 <= e.lora_chunk <= w, "eval.lora_chunk", f"must be in [1, window={w}], got {e.lora_chunk}")
        need(e.lora_lr >= 0, "eval.lora_lr", "must be >= 0")
        need(e.lora_optimizer in ("adam", "sgd"), "eval.lora_optimizer", f"expected adam | sgd, got '{e.lora_optimizer}'")
        need(e.lora_batch_docs >= 1, "eval.lora_batch_docs", "must be >= 1")
    if method == "phased":
        need(all(0.0 < p < 1.0 for p in e.phased_points), "eval.phased_points",
             f"fractions must be in (0, 1), got {e.phased_points}")


def autocast_dtype_for(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA unless train.dtype says fp32; fp32 eager on CPU."""
    if device.type == "cuda" and cfg.train.dtype in ("auto", "bf16"):
        return torch.bfloat16
    return None


def evaluate(model: torch.nn.Module, tokens: np.ndarray, tables: ByteTables, cfg: Config,
             device: torch.device | str = "cpu", method: str | None = None, rank: int = 0, world: int = 1,
             log: ScoreLog | None = None, progress: bool = False) -> dict:
    """Evaluate `model` on `tokens` with `method` (default cfg.eval.method); see the module doc.

    Over cfg.eval.time_limit the result carries a "warning"; with enforce_time_limit it raises
    WorkError instead. Only the method's own work is timed (no warm-up here, so none touches val).
    """
    from pgolf.errors import WorkError

    method = method or cfg.eval.method
    check_eval_config(cfg, method)
    e, w = cfg.eval, eval_window(cfg)
    if e.max_tokens:
        tokens = tokens[: e.max_tokens]
    if len(tokens) < 2:
        raise ConfigError(f"eval.max_tokens: need at least 2 tokens to score, have {len(tokens)}")
    device = torch.device(device)
    ac = autocast_dtype_for(cfg, device)
    bos, seed = cfg.model.bos_id, cfg.train.seed
    model = model.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    common = dict(device=device, rank=rank, world=world, autocast_dtype=ac, log=log, progress=progress)
    if method == "plain":
        out = evaluate_plan(model, tokens, tables, plain_plan(len(tokens) - 1, w), e.batch_seqs,
                            doc_isolated=e.doc_isolated, desc="eval plain", **common)
    elif method == "sliding":
        out = evaluate_sliding(model, tokens, tables, w, e.stride, e.batch_seqs, doc_isolated=e.doc_isolated, **common)
    elif method == "docs":
        out = evaluate_docs(model, tokens, tables, w, e.stride, e.batch_seqs, bos_id=bos, **common)
    # TTT methods load on use, so a bundled train_gpt.py carries only its recipe's method.
    elif method == "ttt-sgd":
        from pgolf.eval.ttt_sgd import evaluate_ttt_sgd

        out = evaluate_ttt_sgd(model, tokens, tables, e, w, doc_isolated=e.doc_isolated, **common)
    elif method == "ttt-lora":
        from pgolf.eval.ttt_lora import evaluate_ttt_lora

        out = evaluate_ttt_lora(model, tokens, tables, e, w, seed=seed, bos_id=bos, **common)
    else:
        from pgolf.eval.phased import evaluate_phased

        out = evaluate_phased(model, tokens, tables, e, w, seed=seed, bos_id=bos, **common)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    out.update(method=method, seconds=seconds, window=w, max_tokens=e.max_tokens)
    if e.time_limit and seconds > e.time_limit:
        msg = f"evaluation took {seconds:.1f} s, over eval.time_limit={e.time_limit:g} s"
        if e.enforce_time_limit:
            raise WorkError(msg)
        out["warning"] = msg
    return out


# ---------------------------------------------------------------------------------------------
# loading a run or artifact for evaluation, and recording the result in its run dir

EVAL_OVERRIDABLE = ("eval.", "train.device", "train.dtype", "train.seed")


@dataclass
class EvalInputs:
    model: torch.nn.Module
    cfg: Config
    tokens: np.ndarray
    tables: ByteTables
    device: torch.device
    info: dict


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but CUDA is not available")
    return torch.device(name)


def resolve_tokenizer(cfg: Config, data_dir: str | os.PathLike, tokenizer: str | None) -> Path:
    """--tokenizer, else cfg.data.tokenizer, else the one DIR/manifest.json names."""
    from pgolf.data.build import manifest_tokenizer

    for cand in (tokenizer, cfg.data.tokenizer):
        if cand:
            return Path(cand)
    found = manifest_tokenizer(data_dir)
    if found is None:
        raise InputError(f"{data_dir}: no tokenizer given (--tokenizer MODEL), none in the config "
                         "(data.tokenizer) and no manifest.json naming one; val_bpb needs its byte tables")
    return found


def load_for_eval(path: str | os.PathLike, data_dir: str | os.PathLike, tokenizer: str | None = None,
                  overrides: list[str] | None = None, method: str | None = None,
                  max_tokens: int | None = None) -> EvalInputs:
    """Model + config from a run dir or artifact, val tokens from DIR, byte tables from the tokenizer."""
    from pgolf.data.shards import load_split
    from pgolf.data.tokenizer import byte_tables, load_tokenizer
    from pgolf.model.io import load_model

    model, cfg, info = load_model(path)
    for text in overrides or []:
        key = text.split("=", 1)[0].strip()
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in EVAL_OVERRIDABLE):
            raise ConfigError(f"override '{text}': evaluation may only change eval.*, train.device, "
                              "train.dtype or train.seed (the model is fixed by the run)")
    d = apply_overrides(cfg.to_dict(), list(overrides or []))
    if method:
        d["eval"]["method"] = method
    if max_tokens is not None:
        d["eval"]["max_tokens"] = max_tokens
    cfg = Config.from_dict(d)
    tables = byte_tables(load_tokenizer(resolve_tokenizer(cfg, data_dir, tokenizer)))
    if tables.vocab_size != cfg.model.vocab_size:
        raise InputError(f"tokenizer has {tables.vocab_size} pieces but the model's vocab_size is "
                         f"{cfg.model.vocab_size} (pass the tokenizer the run was trained with)")
    tokens = load_split(data_dir, "val", cfg.model.vocab_size, cfg.eval.max_tokens)
    # Recurrence is as the weights recorded it (pgolf.model.io.load_model sets it).
    return EvalInputs(model, cfg, tokens, tables, resolve_device(cfg.train.device), info)


def run_dir_of(path: str | os.PathLike) -> Path | None:
    """The run directory holding `path` (itself, or an artifact's folder with config/summary)."""
    p = Path(path)
    if p.is_dir():
        return p
    parent = p.parent
    if (parent / "config.json").is_file() or (parent / SUMMARY_FILE).is_file():
        return parent
    return None


AUDIT_FILE = "audit.json"


def record_audit(run_dir: str | os.PathLike, report: dict) -> Path:
    """Merge one method's audit into RUN/audit.json: {"passed": all methods passed, "methods": {...}}.
    `pgolf submit` reads it for the compliance section."""
    from pgolf.atomic import atomic_write_json, read_json_object

    path = Path(run_dir) / AUDIT_FILE
    data = read_json_object(path, missing={})
    data.setdefault("methods", {})[report["method"]] = report
    data["passed"] = all(r.get("passed") for r in data["methods"].values())
    atomic_write_json(path, data)
    return path


def record_summary(run_dir: str | os.PathLike, result: dict, source: str) -> Path:
    """Merge the evaluation into RUN/summary.json (atomic). An artifact's score is the headline
    val_bpb; a run dir's (pre-quantization) score goes to val_bpb_prequant, and to val_bpb only
    while no artifact score is recorded."""
    from pgolf.atomic import atomic_write_json, read_json_object

    path = Path(run_dir) / SUMMARY_FILE
    summary = read_json_object(path, missing={})
    if source == "run":
        summary["val_bpb_prequant"] = result["val_bpb"]
        summary["val_loss_prequant"] = result["val_loss"]
    if source == "artifact" or summary.get("eval_source") != "artifact":
        summary.update(val_loss=result["val_loss"], val_bpb=result["val_bpb"], eval_method=result["method"],
                       eval_seconds=result["seconds"], eval_tokens=result["tokens"], eval_source=source)
    atomic_write_json(path, summary)
    return path


def eval_and_record(path: str | os.PathLike, data_dir: str | os.PathLike, method: str | None = None,
                    tokenizer: str | None = None, overrides: list[str] | None = None,
                    max_tokens: int | None = None, progress: bool = False) -> dict:
    """Evaluate a run dir or artifact and, when it lives in a run dir, update RUN/summary.json."""
    inp = load_for_eval(path, data_dir, tokenizer, overrides, method, max_tokens)
    out = evaluate(inp.model, inp.tokens, inp.tables, inp.cfg, inp.device, progress=progress)
    out.pop("nll", None)
    out["source"] = inp.info.get("source", "run")
    run_dir = run_dir_of(path)
    if run_dir is not None:
        out["summary"] = str(record_summary(run_dir, out, out["source"]))
    return out


# Evaluated on CPU when the config sets no cap: the first ~1M validation tokens (the 901-doc FineWeb
# prefix shipped in ../shared is 1,040,060 sp1024 tokens, so there it is all of it).
CPU_EVAL_TOKENS = 1_048_576


def eval_token_cap(cfg: Config, device: torch.device) -> tuple[int, str]:
    """How many val tokens to evaluate, and a note saying what that is."""
    if cfg.eval.max_tokens:
        return cfg.eval.max_tokens, f"first {cfg.eval.max_tokens:,} validation tokens (eval.max_tokens)"
    if device.type == "cpu":
        return CPU_EVAL_TOKENS, (f"first {CPU_EVAL_TOKENS:,} validation tokens (CPU default subset; "
                                 "set eval.max_tokens to change, full val needs a GPU)")
    return 0, "full validation split"

"""`pgolf eval` and `pgolf audit` of a run directory (its pre-quantization weights) or an artifact.

The data directory defaults to the one the run resolved (RUN/resolved.json); the tokenizer must be
the one the shards (manifest) and the artifact (its meta) were made with, or the command stops with
exit 2 naming both files. On a CPU the same default subset as `pgolf run` is scored.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pgolf import runtime
from pgolf.config import Config, override_keys
from pgolf.data.manifest import check_tokenizer_match, resolve_tokenizer, validate_shard_dir
from pgolf.data.tokenizer import byte_tables, check_vocab, load_tokenizer
from pgolf.data.validation import load_val
from pgolf.errors import ConfigError, InputError
from pgolf.eval.artifact import TOKENIZER_SHA_KEY, is_artifact, load_artifact
from pgolf.eval.audit import audit
from pgolf.eval.methods import eval_token_cap, evaluate
from pgolf.eval.ttt_lora import script_scoring
from pgolf.logs import fmt_bpb, log
from pgolf.model.gpt import GPT
from pgolf.model.weights import build_from_state, load_metadata, load_tensors, recurrence_flag
from pgolf.pipeline.rundir import RunDir, is_run_dir, run_dir_of

EVAL_OVERRIDABLE = ("eval.", "train.device", "train.dtype", "train.seed", "train.threads")


@dataclass
class EvalTarget:
    model: GPT
    cfg: Config
    source: str  # "run" (pre-quant weights) | "artifact"
    path: Path
    rd: RunDir | None
    meta: dict
    tokens: np.ndarray | None = None
    nbytes: np.ndarray | None = None
    subset: str = ""
    full: bool = False
    device: torch.device = torch.device("cpu")


def load_target(path: str | Path, overrides: list[str] | None = None, method: str | None = None,
                max_tokens: int | None = None) -> EvalTarget:
    """The model and config of a run directory or an artifact, with eval-only overrides applied."""
    p = Path(path)
    if is_run_dir(p):
        rd = RunDir(p)
        base = rd.read_config()
        if not rd.weights.is_file():
            raise InputError(f"{p}: no {rd.weights.name} (did training finish?)")
        model = build_from_state(base.model, load_tensors(rd.weights), str(rd.weights),
                                 recurrence_flag(load_metadata(rd.weights)))
        source, meta = "run", {TOKENIZER_SHA_KEY: rd.read_resolved().get("tokenizer_sha256")}
    elif is_artifact(p):
        model, base, meta = load_artifact(p)
        rd, source = run_dir_of(p), "artifact"
    else:
        raise InputError(f"{p}: neither a run directory (config.json) nor a pgolf artifact")
    extra = list(overrides or [])
    for key in override_keys(extra):
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in EVAL_OVERRIDABLE):
            raise ConfigError(f"override '{key}': evaluation may only change eval.*, train.device, train.dtype, "
                              "train.seed or train.threads (the model is fixed by the run)")
    if method:
        extra.append(f'eval.method="{method}"')
    if max_tokens is not None:
        extra.append(f"eval.max_tokens={max_tokens}")
    cfg = base.replace(extra) if extra else base
    return EvalTarget(model, cfg, source, p, rd, meta)


def attach_data(t: EvalTarget, data: str | None, tokenizer: str | None) -> EvalTarget:
    """Val tokens and per-target bytes for the target: DIR defaults to the run's resolved data dir."""
    resolved = t.rd.read_resolved() if t.rd is not None else {}
    data = data or resolved.get("data_dir") or t.cfg.data.path
    if not data:
        raise InputError(f"{t.path}: --data: required (no data directory recorded in the run)")
    validate_shard_dir(data)
    tok = resolve_tokenizer(data, tokenizer or resolved.get("tokenizer") or t.cfg.data.tokenizer or None)
    check_tokenizer_match(tok, t.meta.get(TOKENIZER_SHA_KEY), f"{t.path} ({t.source})")
    tables = byte_tables(load_tokenizer(tok))
    check_vocab(tables.vocab_size, t.cfg.model.vocab_size, tok)
    t.device = runtime.resolve_device(t.cfg.train.device)
    cap, t.subset = eval_token_cap(t.cfg, t.device)
    t.tokens, t.nbytes = load_val(data, t.cfg.model.vocab_size, tables, cap)
    t.full = cap == 0 or len(t.tokens) < cap
    if cap and len(t.tokens) < cap:
        t.subset = f"all {len(t.tokens):,} validation tokens in {data}"
    runtime.set_threads(t.cfg.train)
    return t


def record_eval(rd: RunDir, result: dict, t: EvalTarget) -> dict:
    """Merge an evaluation into RUN/summary.json: an artifact's score is the headline val_bpb; the
    pre-quant weights' score goes to val_bpb_prequant."""
    if t.source == "run":
        return rd.update_summary({"val_bpb_prequant": result["val_bpb"], "val_loss_prequant": result["val_loss"]})
    return rd.update_summary({"val_loss": result["val_loss"], "val_bpb": result["val_bpb"],
                              "eval_method": result["method"], "eval_seconds": result["seconds"],
                              "eval_tokens": result["tokens"], "eval_bytes": result["bytes"],
                              "eval_subset": t.subset, "eval_full_split": t.full, "eval_source": "artifact",
                              "eval_artifact_sha256": t.meta.get("sha256"),
                              "script_scoring": result.get("script_scoring")})


def cmd_eval(args: argparse.Namespace) -> dict:
    t = attach_data(load_target(args.path, args.overrides, args.method, args.max_tokens), args.data, args.tokenizer)
    out = evaluate(t.model, t.tokens, t.nbytes, t.cfg, t.device, progress=not args.json,
                   with_record=t.cfg.eval.lora_script_score)
    if t.cfg.eval.lora_script_score:
        out["script_scoring"] = script_scoring(out.pop("record"), t.tokens, t.nbytes, t.cfg)
    out.update(source=t.source, subset=t.subset)
    if args.record:
        if t.rd is None:
            raise InputError(f"--record: {t.path} is not inside a run directory")
        if t.source == "artifact" and t.path.resolve() != t.rd.artifact.resolve():
            raise InputError(f"--record: {t.path} is not the run's own {t.rd.artifact.name}")
        record_eval(t.rd, out, t)
        out["summary"] = str(t.rd.summary_file)
    return out


def cmd_audit(args: argparse.Namespace) -> tuple[dict, int]:
    t = attach_data(load_target(args.path, args.overrides, args.method, args.max_tokens), args.data, args.tokenizer)
    report = audit(t.model, t.tokens, t.nbytes, t.cfg, t.device, seed=args.seed, budget=args.budget,
                   thorough=args.thorough, atol=args.atol)
    log.info(f"audit of {report['method']} on {report['targets']:,} targets (seed {report['seed']}): "
             + ("passed" if report["passed"] else "FAILED"))
    if t.rd is not None:  # a run's audit.json feeds the record's compliance section
        t.rd.record_audit(report)
        report["recorded"] = str(t.rd.audit_file)
    return report, 0 if report["passed"] else 1


def describe_eval(r: dict) -> str:
    lines = [f"{r['method']}: val_bpb {fmt_bpb(r['val_bpb'])} (val_loss {r['val_loss']:.4f}) on {r['tokens']:,} targets "
             f"/ {r['bytes']:,} bytes in {r['seconds']:.1f} s"]
    if r.get("subset"):
        lines.append(f"scored {r['subset']}")
    if r.get("script_scoring"):
        sc = r["script_scoring"]
        lines.append(f"for comparison, {sc['note']}: val_bpb {fmt_bpb(sc['val_bpb'])} on {sc['tokens']:,} targets")
    if r.get("warning"):
        lines.append(f"warning: {r['warning']}")
    if r.get("summary"):
        lines.append(f"recorded in {r['summary']}")
    return "\n".join(lines)

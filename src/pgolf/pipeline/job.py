"""The main job, `pgolf run`: data -> train -> pack -> score the artifact -> audit -> RUN/summary.json;
and `pgolf train` (the first half).

Under torchrun every rank runs the job; data preparation and packing happen on rank 0 between
barriers, evaluation and the audit on every rank. Every line the user sees also goes to
RUN/train.log, through the scored val_bpb, the artifact bytes and the eval time.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pgolf import runtime
from pgolf.compat import apply_env_compat
from pgolf.config import Config, apply_overrides, load_config
from pgolf.data.manifest import resolve_tokenizer, validate_shard_dir
from pgolf.data.shards import list_shards
from pgolf.data.tokenizer import byte_tables, check_vocab, file_sha256, load_tokenizer
from pgolf.data.validation import load_val
from pgolf.errors import ConfigError, InputError, WorkError
from pgolf.eval import methods
from pgolf.eval.artifact import load_artifact
from pgolf.eval.audit import audit
from pgolf.eval.ttt_lora import script_scoring
from pgolf.logs import fmt_bpb, fmt_seconds, log, log_file, plural, setup_console
from pgolf.model.weights import RECURRENCE_KEY, save_tensors
from pgolf.pipeline.data_prep import prepare_data
from pgolf.pipeline.packing import pack_run
from pgolf.pipeline.plots import plot_run
from pgolf.pipeline.rundir import RunDir
from pgolf.train.checkpoint import Checkpointer
from pgolf.train.trainer import TrainData, train

AUDIT_KEEP = 16  # kept distributions of the scored run (normalization probes)


def config_from_args(args: argparse.Namespace) -> Config:
    """--recipe (with --smoke) or --config-json, then --set overrides and the challenge's env names."""
    overrides = apply_env_compat(list(args.overrides))
    if getattr(args, "config_json", None):
        if args.recipe:
            raise ConfigError("--config-json and --recipe: give one of them, not both")
        text = args.config_json
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise InputError(f"--config-json {text}: not a file or inline JSON")
            text = path.read_text()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"--config-json: invalid JSON ({e})") from None
        if not isinstance(d, dict):
            raise InputError(f"--config-json: expected a JSON object, got {type(d).__name__}")
        return Config.from_dict(apply_overrides(d, overrides))
    if not args.recipe:
        raise ConfigError("--recipe: required (or --config-json)")
    return load_config(args.recipe, overrides, smoke=getattr(args, "smoke", False))


def train_data(cfg: Config, data_dir: Path, tables, device, train_paths: list[Path]) -> tuple[TrainData, str, bool]:
    """Shards and validation tokens for training; the final pre-quant score uses the eval subset.
    Returns (data, a note on the subset scored, whether that is the directory's whole val split)."""
    if not train_paths:
        raise InputError(f"{data_dir}: no fineweb_train_*.bin shards")
    cap, subset = methods.eval_token_cap(cfg, device)
    final = load_val(data_dir, cfg.model.vocab_size, tables, cap)
    full = cap == 0 or len(final[0]) < cap
    if cap and len(final[0]) < cap:
        subset = f"all {len(final[0]):,} validation tokens in {data_dir}"
    val = final if cfg.train.val_tokens == cap else load_val(data_dir, cfg.model.vocab_size, tables, cfg.train.val_tokens)
    overlap = {p.resolve() for p in train_paths} & {p.resolve() for p in list_shards(data_dir, "val")}
    if overlap:
        raise InputError(f"{data_dir}: train and val shards are the same files: {sorted(map(str, overlap))}")
    return TrainData(train_paths, val[0], val[1], final[0], final[1]), subset, full


def start(cfg: Config, rd: RunDir, proc: runtime.Process, data_dir: Path, tok: Path) -> tuple:
    """Config and resolved inputs written; returns (TrainData, eval subset note, whole split?)."""
    sp = load_tokenizer(tok)
    check_vocab(sp.vocab_size(), cfg.model.vocab_size, tok)
    if cfg.data.caseops and not list_shards(data_dir, "val_bytes"):
        raise InputError(f"{data_dir}: data.caseops needs the val byte sidecar fineweb_val_bytes_*.bin "
                         "(build the shards with `pgolf data build --caseops`)")
    data, subset, full = train_data(cfg, data_dir, byte_tables(sp), proc.device, validate_shard_dir(data_dir)["train"])
    if proc.is_main:
        rd.write_config(cfg)
        rd.write_resolved({"data_dir": str(Path(data_dir).resolve()), "tokenizer": str(Path(tok).resolve()),
                           "tokenizer_sha256": file_sha256(tok), "vocab_size": sp.vocab_size(),
                           "device": str(proc.device), "world_size": proc.world, "eval_subset": subset})
        rd.write_env(proc.device, proc.world)
    return data, subset, full


def run_training(cfg: Config, rd: RunDir, proc: runtime.Process, data: TrainData, resume: bool, progress: bool,
                 stop_after: int | None = None) -> dict:
    result = train(cfg, data, rd.metrics, proc, checkpointer=Checkpointer(rd.checkpoint, stop_after), resume=resume,
                   progress=progress, metrics_truncate=rd.truncate_metrics if proc.is_main else None)
    summary = result.summary | {"run_dir": str(rd.path)}
    if proc.is_main:
        save_tensors(rd.weights, result.state, metadata={RECURRENCE_KEY: int(result.recurrence)})
        if result.hessians is not None:
            save_tensors(rd.hessians, result.hessians)
        summary = rd.update_summary(summary)
    runtime.barrier()
    return summary


def prepare_run_dir(rd: RunDir, proc: runtime.Process, resume: bool, move_aside: bool) -> None:
    if proc.is_main:
        moved = rd.prepare(resume, move_aside, Checkpointer(rd.checkpoint).exists())
        if moved is not None:
            log.info(f"moved the old contents of {rd.path} to {moved}")
    runtime.barrier()


def final_lines(s: dict, audited: bool = True) -> list[str]:
    """The closing report of a run (also what `pgolf run` prints); audited False: a run without an
    audit line (the record script)."""
    lines = [f"run {s.get('run_dir')} (recipe {s['recipe']}, seed {s['seed']}): {plural(s['steps'], 'step')} in "
             f"{fmt_seconds(s.get('train_seconds'))} ({s.get('stop_reason')}), {s['params']:,} params"]
    pre = s.get("val_bpb_prequant")
    tail = f" | pre-quant {fmt_bpb(pre)} (plain) | quant gap {s['quant_gap']:+.4f}" if pre is not None and \
        s.get("quant_gap") is not None else ""
    lines.append(f"val_bpb {fmt_bpb(s['val_bpb'])} ({s['eval_method']}, post-quant){tail}")
    lines.append(f"artifact {s['artifact_bytes']:,} bytes = model {s['model_bytes']:,} + code {s['code_bytes']:,} "
                 f"(limit 16,000,000)")
    lines.append(f"scored in {fmt_seconds(s.get('eval_seconds'))} on {s.get('eval_subset')}")
    if audited and s.get("audit_passed") is not None:
        lines.append(f"legality audit: {'passed' if s['audit_passed'] else 'FAILED'} (RUN/audit.json)")
    return lines


def score_artifact(cfg: Config, rd: RunDir, proc: runtime.Process, data: TrainData, subset: str, full: bool,
                   progress: bool) -> dict:
    """Reload the artifact from disk alone, score it with the recipe's method, audit that evaluation."""
    model, acfg, meta = load_artifact(rd.artifact)
    seed = runtime.broadcast_object(int(np.random.SeedSequence().entropy % (2 ** 32)))
    rng = np.random.default_rng(seed)
    n_targets = len(data.final_tokens) - 1
    keep = rng.choice(n_targets, size=min(AUDIT_KEEP, n_targets), replace=False)
    log.info(f"scoring the artifact ({acfg.eval.method}) on {subset}")
    result = methods.evaluate(model, data.final_tokens, data.final_bytes, acfg, proc.device, keep=keep,
                              with_record=acfg.eval.audit or acfg.eval.lora_script_score, progress=progress)
    script = None
    if acfg.eval.lora_script_score:
        script = script_scoring(result["record"], data.final_tokens, data.final_bytes, acfg)
        log.info(f"for comparison, {script['note']}: val_bpb {fmt_bpb(script['val_bpb'])} on {script['tokens']:,} targets")
    plain = result if result["method"] == "plain" else methods.evaluate(
        model, data.final_tokens, data.final_bytes, acfg, proc.device, "plain", progress=progress)
    report = None
    if acfg.eval.audit:
        report = audit(model, data.final_tokens, data.final_bytes, acfg, proc.device, seed=seed,
                       budget=acfg.eval.audit_budget, real=result)
        failed = [k for k, c in report["checks"].items() if c["passed"] is False]
        log.info(f"legality audit of {report['method']} ({report['order']} order, seed {seed}, "
                 f"{report['audit_tokens']:,} extra tokens): " + ("passed" if not failed else f"FAILED ({', '.join(failed)})"))
        if proc.is_main:
            rd.record_audit(report)
    summary = rd.summary()
    values = {"val_loss": result["val_loss"], "val_bpb": result["val_bpb"], "eval_method": result["method"],
              "eval_seconds": result["seconds"], "eval_tokens": result["tokens"], "eval_bytes": result["bytes"],
              "eval_subset": subset, "eval_full_split": full, "eval_source": "artifact",
              "eval_artifact_sha256": meta["sha256"],
              "val_bpb_postquant_plain": plain["val_bpb"],
              "quant_gap": (plain["val_bpb"] - summary["val_bpb_prequant"]
                            if summary.get("val_bpb_prequant") is not None else None),
              "audit_passed": None if report is None else report["passed"], "script_scoring": script}
    if proc.is_main:
        summary = rd.update_summary(values)
    else:
        summary.update(values)
    if report is not None and not report["passed"]:
        raise WorkError(f"legality audit of eval method {report['method']} failed; see {rd.audit_file}")
    return summary


def run_pipeline(cfg: Config, data: list[str] | None, out: str | Path, *, val_data: list[str] | None = None,
                 tokenizer: str | None = None, val_docs: int = 50_000, resume: bool = False,
                 progress: bool = True, move_aside: bool = False) -> dict:
    """Train, pack, score and audit; returns the final summary (also RUN/summary.json)."""
    with runtime.process_group(cfg.train.device) as proc:
        setup_console(progress, proc.rank)
        rd = RunDir(out)
        methods.check(cfg)  # eval settings fail now, not after training
        prepare_run_dir(rd, proc, resume, move_aside)
        with log_file(rd.log):
            log.info(f"pgolf run: recipe {cfg.name} -> {rd.path}")
            data_dir, tok = prepare_data(cfg, data, val_data, tokenizer, rd.data, val_docs, progress)
            tdata, subset, full = start(cfg, rd, proc, data_dir, tok)
            run_training(cfg, rd, proc, tdata, resume, progress)
            error = None
            if proc.is_main:
                try:
                    pack_run(rd.path)
                except WorkError as e:
                    error = str(e)
            error = runtime.broadcast_object(error)
            if error is not None:
                raise WorkError(error)
            summary = score_artifact(cfg, rd, proc, tdata, subset, full, progress)
            if proc.is_main:
                plot_run(rd.plot, rd.metrics_rows(), summary, rd.path.name, cfg.train.max_seconds > 0)
            for line in final_lines(summary):
                log.info(line, extra={"console": False})
            return summary


RUN_KEYS = ("recipe", "seed", "params", "steps", "train_seconds", "stop_reason", "val_loss", "val_bpb",
            "val_bpb_prequant", "quant_gap", "artifact_bytes", "model_bytes", "code_bytes", "eval_method",
            "eval_seconds", "eval_subset", "audit_passed", "run_dir")


def cmd_run(args: argparse.Namespace) -> dict:
    cfg = config_from_args(args)
    s = run_pipeline(cfg, args.data, args.out, val_data=args.val_data, tokenizer=args.tokenizer,
                     val_docs=args.val_docs, resume=args.resume, progress=args.progress, move_aside=args.move_aside)
    return {k: s.get(k) for k in RUN_KEYS}


def human_run(r: dict) -> str:
    return "\n".join(final_lines(r))


def train_run(cfg: Config, data: str | Path | None, out: str | Path, *, tokenizer: str | None = None,
              resume: bool = False, progress: bool = True, stop_after: int | None = None,
              move_aside: bool = False) -> dict:
    """`pgolf train`: train `cfg` on a shard directory into run directory `out`; returns the summary."""
    with runtime.process_group(cfg.train.device) as proc:
        setup_console(progress, proc.rank)
        rd = RunDir(out)
        methods.check(cfg)
        prepare_run_dir(rd, proc, resume, move_aside)
        data = data or rd.read_resolved().get("data_dir") or cfg.data.path
        if not data:
            raise InputError("--data: required (a shard directory), or set data.path in the recipe")
        found = validate_shard_dir(data)
        if not found["train"]:
            raise InputError(f"{data}: no fineweb_train_*.bin shards (build them with `pgolf data build`)")
        with log_file(rd.log):
            tok = resolve_tokenizer(data, tokenizer or cfg.data.tokenizer or None)
            tdata, _, _ = start(cfg, rd, proc, Path(data), tok)
            s = run_training(cfg, rd, proc, tdata, resume, progress, stop_after)
            log.info(human_train(s), extra={"console": False})
            return s


def cmd_train(args: argparse.Namespace) -> dict:
    if args.stop_after is not None and args.stop_after < 1:
        raise InputError(f"--stop-after: expected a step count >= 1, got {args.stop_after}")
    if args.data and len(args.data) > 1:
        raise InputError("--data: `pgolf train` takes one shard directory (`pgolf run` builds corpora)")
    return train_run(config_from_args(args), args.data[0] if args.data else None, args.out,
                     tokenizer=args.tokenizer, resume=args.resume, progress=args.progress,
                     stop_after=args.stop_after, move_aside=args.move_aside)


def human_train(s: dict) -> str:
    return (f"trained {s['recipe']} for {plural(s['steps'], 'step')} ({s['stop_reason']}) in "
            f"{fmt_seconds(s['train_seconds'])}: pre-quant val_bpb {fmt_bpb(s['val_bpb_prequant'])}; "
            f"run dir {s['run_dir']}")

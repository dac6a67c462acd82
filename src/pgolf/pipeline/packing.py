"""Packing a run: its final weights -> RUN/artifact.pgolf, with an honest byte table.

Total bytes = the artifact file (quantized weights + header, compressed) + code bytes, the size of
the counted train_gpt.py pgolf generates for the recipe (pgolf.submit.bundle). Over 16,000,000 the
artifact is refused and nothing is written: a previous artifact and its scores stay as they were. A
successful repack of the run's own artifact records its bytes and marks the old scores stale
(they belonged to the previous artifact); `--out FILE` leaves RUN untouched.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import pgolf
from pgolf.atomic import atomic_write_bytes
from pgolf.config import Config, override_keys
from pgolf.data.tokenizer import byte_tables, load_tokenizer
from pgolf.data.validation import load_val
from pgolf.errors import ConfigError, InputError, WorkError
from pgolf.eval.artifact import TOKENIZER_SHA_KEY, dequantized_model
from pgolf.eval.methods import evaluate
from pgolf.logs import fmt_bpb, log
from pgolf.model.weights import RECURRENCE_KEY, build_from_state, load_metadata, load_tensors, recurrence_flag
from pgolf.pipeline.rundir import EVAL_KEYS, RunDir
from pgolf.quant.budget import Packed, format_budget_table, pack_state, quantize_state_dict
from pgolf.quant.gptq import collect_hessians, hessian_targets, self_generated_batches
from pgolf.submit.bundle import code_bytes

AUTO_FIT_EVAL_TOKENS = 65_536


def uses_gptq(cfg: Config) -> bool:
    return cfg.quant.uses_gptq


def run_hessians(rd: RunDir, cfg: Config, state: dict[str, torch.Tensor], rec: bool | None) -> dict | None:
    """Hessians for GPTQ: saved by the trainer (training batches inside the time budget), or generated
    here from the model's own samples (quant.gptq_calib = "self")."""
    if not uses_gptq(cfg):
        return None
    if rd.hessians.exists():
        return load_tensors(rd.hessians)
    if cfg.quant.gptq_calib != "self":
        raise InputError(f"{rd.hessians}: missing; GPTQ with gptq_calib=train needs the Hessians the trainer saves "
                         "(or set quant.gptq_calib=self to calibrate on self-generated samples)")
    model = build_from_state(cfg.model, state, str(rd.weights), rec)
    q = cfg.quant
    batches = self_generated_batches(model, q.gptq_batches, q.gptq_seq_len, q.gptq_temperature,
                                     seed=cfg.train.seed, vocab_size=cfg.model.vocab_size, bos_id=cfg.model.bos_id)
    return collect_hessians(model, batches, hessian_targets(model, cfg.quant))


def pack_config(rd: RunDir, overrides: list[str] | None) -> Config:
    """The run's config, with `--set quant.*` overrides only (the model is fixed by the weights)."""
    cfg = rd.read_config()
    if not overrides:
        return cfg
    bad = [k for k in override_keys(overrides) if not k.startswith("quant.")]
    if bad:
        raise ConfigError(f"override '{bad[0]}': pack may only change quant.* (the model is fixed by the weights)")
    return cfg.replace(overrides)


def pack_run(run: str | Path, out: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """Quantize + compress a run's final weights; returns the byte report (WorkError over budget)."""
    rd = RunDir(run)
    if not rd.weights.is_file():
        raise InputError(f"{rd.path}: not a finished run directory (needs {rd.config.name} and {rd.weights.name})")
    cfg = pack_config(rd, overrides)
    state = load_tensors(rd.weights)
    rec = recurrence_flag(load_metadata(rd.weights))
    build_from_state(cfg.model, state, str(rd.weights), rec)  # shapes and finiteness, before anything is written
    hessians = run_hessians(rd, cfg, state, rec)
    resolved = rd.read_resolved()
    meta = {"recipe": cfg.name, "seed": cfg.train.seed, "pgolf_version": pgolf.__version__,
            "torch_version": torch.__version__, TOKENIZER_SHA_KEY: resolved.get("tokenizer_sha256")}
    if rec is not None:
        meta[RECURRENCE_KEY] = int(rec)
    packed = pack_state(state, cfg.artifact_dict(), cfg.quant, code_bytes(cfg), meta, hessians)
    report = dict(packed.report)
    if report["auto_fit"]["actions"]:
        report["auto_fit"]["bpb_cost"] = auto_fit_bpb_cost(cfg, state, packed, hessians, rec, resolved)
    if not report["fits"]:
        raise WorkError(f"artifact over budget: {report['total_bytes']:,} >= {report['limit']:,} bytes; nothing "
                        f"written (set quant.auto_fit=true or lower the bits)\n{format_budget_table(report)}")
    path = Path(out) if out else rd.artifact
    atomic_write_bytes(path, packed.blob)
    report["artifact_path"] = str(path)
    if out is None or path.resolve() == rd.artifact.resolve():
        stale = {k: None for k in EVAL_KEYS}
        rd.update_summary(stale | {"model_bytes": report["model_bytes"], "code_bytes": report["code_bytes"],
                                   "artifact_bytes": report["total_bytes"], "artifact_sha256": report["sha256"]})
    log.info(f"artifact {path}: {report['total_bytes']:,} bytes (model {report['model_bytes']:,} + code "
             f"{report['code_bytes']:,}), {report['limit'] - report['total_bytes']:,} under the limit")
    return report


def auto_fit_bpb_cost(cfg: Config, state: dict, packed: Packed, hessians: dict | None, rec: bool | None,
                      resolved: dict) -> float | None:
    """val_bpb(auto-fitted artifact) - val_bpb(plain quantization) on the first val tokens, or None when
    the run records no data to measure on."""
    data_dir, tok = resolved.get("data_dir"), resolved.get("tokenizer")
    if not (data_dir and tok and Path(data_dir).is_dir() and Path(tok).is_file()):
        return None
    tokens, nbytes = load_val(data_dir, cfg.model.vocab_size, byte_tables(load_tokenizer(tok)), AUTO_FIT_EVAL_TOKENS)
    plain, _ = quantize_state_dict(state, cfg.quant, hessians)
    bpb = [evaluate(dequantized_model(cfg, q, "auto-fit", rec), tokens, nbytes, cfg, "cpu", "plain")["val_bpb"]
           for q in (plain, packed.quantized)]
    log.info(f"auto-fit cost: val_bpb {fmt_bpb(bpb[1])} vs {fmt_bpb(bpb[0])} unfitted ({bpb[1] - bpb[0]:+.4f})")
    return bpb[1] - bpb[0]


def cmd_pack(args: argparse.Namespace) -> dict:
    return pack_run(args.run, args.out, args.overrides)


def human_pack(r: dict) -> str:
    return f"{format_budget_table(r)}\nwrote {r['artifact_path']}"

"""`pgolf pack`: a run directory -> RUN/artifact.pgolf with an honest byte table.

Total bytes = the artifact file (quantized weights + header, compressed) + code bytes, where code
bytes are the size of the self-contained train_gpt.py that pgolf generates for the recipe
(pgolf.submit.bundle, wrapped per quant.code_compress). Over 16,000,000 bytes the artifact is
refused: nothing is left under the final name and the table says where the bytes went.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from pgolf.atomic import update_json
from pgolf.config import Config
from pgolf.errors import InputError, WorkError
from pgolf.model.io import (CONFIG_FILE, RECURRENCE_KEY, WEIGHTS_FILE, load_config_file, load_metadata,
                            load_tensors, recurrence_flag)

ARTIFACT_FILE = "artifact.pgolf"
HESSIAN_FILE = "hessians.safetensors"


def uses_gptq(cfg: Config) -> bool:
    return any(g.gptq for g in cfg.quant.groups)


def run_hessians(run_dir: Path, cfg: Config, state: dict[str, torch.Tensor]) -> dict | None:
    """Hessians for GPTQ: saved by the trainer (calibration on training data inside the time
    budget), or generated here from the model's own samples (gptq_calib = "self")."""
    if not uses_gptq(cfg):
        return None
    path = run_dir / HESSIAN_FILE
    if path.exists():
        return load_tensors(path)
    if cfg.quant.gptq_calib != "self":
        raise InputError(f"{path}: missing; GPTQ with gptq_calib=train needs the Hessians the trainer saves "
                         "(or set quant.gptq_calib=self to calibrate on self-generated samples)")
    from pgolf.model.io import build_from_state
    from pgolf.quant.gptq import collect_hessians, gptq_module_names, self_generated_batches

    model = build_from_state(cfg, state, str(run_dir), recurrence_flag(load_metadata(run_dir / WEIGHTS_FILE)))
    q = cfg.quant
    batches = self_generated_batches(model, q.gptq_batches, q.gptq_seq_len, q.gptq_temperature,
                                     seed=cfg.train.seed, vocab_size=cfg.model.vocab_size, bos_id=cfg.model.bos_id)
    return collect_hessians(model, batches, gptq_module_names(model, cfg.quant))


def code_bytes_for(cfg: Config) -> int:
    from pgolf.submit.bundle import code_bytes

    return code_bytes(cfg, cfg.quant.code_compress)


def pack_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
             overrides: Config | None = None, update_summary: bool = True) -> dict:
    """Quantize + compress a run's final weights. Returns the byte report (raises WorkError over budget)."""
    from pgolf.quant import pack_model

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists() or not (run_dir / WEIGHTS_FILE).exists():
        raise InputError(f"{run_dir}: not a finished run directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    cfg = overrides or load_config_file(run_dir / CONFIG_FILE)
    state = load_tensors(run_dir / WEIGHTS_FILE)
    out_path = Path(out) if out else run_dir / ARTIFACT_FILE
    hessians = run_hessians(run_dir, cfg, state)
    code = code_bytes_for(cfg)
    meta = {"recipe": cfg.name, "seed": cfg.train.seed, "pgolf_version": __import__("pgolf").__version__,
            "torch_version": torch.__version__}
    rec = recurrence_flag(load_metadata(run_dir / WEIGHTS_FILE))
    if rec is not None:
        meta[RECURRENCE_KEY] = int(rec)
    from pgolf.quant.budget import budget_json

    full = pack_model(state, cfg.to_dict(), cfg.quant, out_path, code, meta, hessians=hessians)
    report = budget_json(full)
    report["artifact_path"] = str(out_path)
    if report["auto_fit"]["actions"]:
        report["auto_fit"]["bpb_cost"] = auto_fit_bpb_cost(cfg, state, full["quantized"], hessians)
    if not report["fits"]:
        out_path.unlink(missing_ok=True)
        from pgolf.quant.budget import format_budget_table

        raise WorkError(f"artifact over budget: {report['total_bytes']:,} > {report['limit']:,} bytes "
                        f"(nothing written; set quant.auto_fit=true or lower bits)\n{format_budget_table(report)}")
    if update_summary:
        update_json(run_dir / "summary.json", {"model_bytes": report["model_bytes"], "code_bytes": report["code_bytes"],
                                  "artifact_bytes": report["total_bytes"], "artifact_sha256": report.get("sha256")})
    return report


def auto_fit_bpb_cost(cfg: Config, state: dict, fitted: dict, hessians: dict | None) -> float | None:
    """val_bpb(auto-fitted artifact) - val_bpb(plain quantization) on a small val subset, or None
    when the run's config names no data to measure on."""
    from pgolf.data.shards import load_split
    from pgolf.data.tokenizer import byte_tables, load_tokenizer
    from pgolf.eval.plain import evaluate_plain
    from pgolf.model.io import build_from_state
    from pgolf.quant import quantize_state_dict
    from pgolf.quant.container import dequantize_all

    if not (cfg.data.path and cfg.data.tokenizer and Path(cfg.data.path).is_dir()):
        return None
    tokens = load_split(cfg.data.path, "val", cfg.model.vocab_size, max_tokens=cfg.eval.max_tokens or 65_536)
    tables = byte_tables(load_tokenizer(cfg.data.tokenizer))
    plain, _ = quantize_state_dict(state, cfg.quant, hessians)
    bpb = [evaluate_plain(build_from_state(cfg, dequantize_all(q), "auto-fit"), tokens, tables,
                          cfg.train.seq_len)["val_bpb"] for q in (plain, fitted)]
    return bpb[1] - bpb[0]

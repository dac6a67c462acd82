"""Quantize a state dict by plan, serialize it into artifact bytes, and account for every byte.

Pure: a state dict, the model config and the code size in; the artifact bytes and a byte table out
(writing files is the caller's job). The challenge counts code bytes + artifact bytes, which must stay
below 16,000,000 (decimal). With cfg.auto_fit, an over-target artifact is first shrunk by widening the
clip (x 1.05 .. 1.3: a coarser grid with fewer distinct values; lowering a percentile would *grow* the
artifact, since the grid gets finer), then by pruning +-1 values (prune.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping, Optional

from torch import Tensor

from pgolf.config import ARTIFACT_LIMIT, QuantConfig
from pgolf.logs import DETAIL
from pgolf.quant.codecs import compress
from pgolf.quant.container import PLAIN_CODECS, framing_bytes, raw_arrays, serialize_artifact
from pgolf.quant.pergroup import pergroup_storage
from pgolf.quant.gptq import gptq_quantize
from pgolf.quant.lqer import apply_lqer
from pgolf.quant.prune import prune_ones
from pgolf.quant.quantizers import QuantizedTensor, plan_tensor, quantize, store_float

AUTO_FIT_CLIP_MULTS = (1.05, 1.1, 1.2, 1.3)


def budget_totals(model_bytes: int, code_bytes: int, limit: int = ARTIFACT_LIMIT) -> dict:
    """total = model file bytes + code bytes; fits iff total < limit."""
    total = int(model_bytes) + int(code_bytes)
    return {"model_bytes": int(model_bytes), "code_bytes": int(code_bytes), "total_bytes": total,
            "limit": limit, "fits": total < limit, "headroom": limit - 1 - total}


def quantize_state_dict(state_dict: Mapping[str, Tensor], cfg: QuantConfig,
                        hessians: Optional[Mapping[str, Tensor]] = None,
                        clip_mult: float = 1.0) -> tuple[dict, dict]:
    """Quantize every entry by plan_tensor. Returns (name -> QuantizedTensor | Passthrough, report).

    GPTQ is used for groups with gptq=true when a Hessian for that weight name is given (otherwise
    round-to-nearest, listed in report["gptq_missing"]). LQER runs when cfg.lqer_rank > 0.
    """
    out: dict = {}
    tensors, groups, missing = [], {}, []
    for name, t in sorted(state_dict.items()):  # one order, whichever way the weights arrived
        plan = plan_tensor(name, t, cfg)
        if plan.kind == "int":
            used_gptq = False
            if cfg.uses_gptq and plan.gptq and hessians is not None and name in hessians and t.ndim == 2:
                q, s = gptq_quantize(t, hessians[name].to(t.device), plan.bits, plan.clip, plan.clip_value,
                                     plan.min_scale, cfg.gptq_damp, cfg.gptq_block, clip_mult=clip_mult)
                used_gptq = True
            else:
                if plan.gptq:
                    missing.append(name)
                q, s = quantize(t, plan.bits, plan.clip, plan.clip_value, plan.min_scale, clip_mult)
            qt = QuantizedTensor(q.cpu(), s.cpu(), plan.bits, t.dtype)
            out[name] = qt
        else:
            out[name] = store_float(t, plan.kind)
        if DETAIL:  # the report's per-tensor and per-group tables (not in the counted script)
            bits = plan.bits if plan.kind == "int" else out[name].data.element_size() * 8
            row = {"name": name, "kind": plan.kind, "group": plan.group, "bits": bits, "shape": list(t.shape)}
            if plan.kind == "int":
                err = float((t.detach().float().cpu() - qt.dequantize().float()).norm())
                row.update(gptq=used_gptq, rel_err=err / max(float(t.detach().float().norm()), 1e-30))
            tensors.append(row)
            g = groups.setdefault(plan.group, {"group": plan.group, "bits": bits, "params": 0, "names": []})
            g["params"] += t.numel()
            g["names"].append(name)
    lqer = {}
    if cfg.lqer_rank > 0:
        originals = {n: state_dict[n].detach().float().cpu() for n, v in out.items() if isinstance(v, QuantizedTensor)}
        lqer = apply_lqer(out, originals, cfg.lqer_rank, cfg.lqer_bits, cfg.lqer_top, form=cfg.lqer_form,
                          group=cfg.lqer_group)
    report = {"tensors": tensors, "groups": list(groups.values()), "gptq_missing": missing, "lqer": lqer,
              "clip_mult": clip_mult}
    return out, report


def group_byte_table(quantized: Mapping[str, object], groups: list[dict], codec: str | None,
                     byte_shuffle: bool) -> list[dict]:
    """Per group: params, bits, raw bytes, and compressed bytes (that group's arrays alone; None when
    the sections are reported instead)."""
    rows = []
    for g in groups:
        raw = raw_arrays({n: quantized[n] for n in g["names"]}, byte_shuffle)
        rows.append({"group": g["group"], "params": g["params"], "bits": g["bits"], "raw_bytes": len(raw),
                     "compressed_bytes": None if codec is None else len(compress(raw, codec))})
    return rows


@dataclass
class Packed:
    """The artifact bytes, the byte table (JSON-able) and the exported tensors (for the bpb cost)."""

    blob: bytes
    report: dict
    quantized: dict


def serialize(tensors: Mapping[str, object], model_config: dict, meta: dict, cfg: QuantConfig,
              codec: str) -> tuple[bytes, list[dict]]:
    """The artifact bytes with `codec` ("auto": the smallest plain codec), and for pergroup its sections."""
    if codec == "pergroup":
        memo: dict = {}
        storage, sections = pergroup_storage(tensors, cfg.pergroup_codecs, cfg.pergroup_sort, memo)
        return serialize_artifact(tensors, model_config, meta, codec, True, storage, memo), sections
    if codec == "auto":
        return min((serialize_artifact(tensors, model_config, meta, c, cfg.byte_shuffle, lqer=cfg.lqer_rank > 0,
                                       lowbit=cfg.packs_low_bits)
                    for c in PLAIN_CODECS), key=len), []
    return serialize_artifact(tensors, model_config, meta, codec, cfg.byte_shuffle, lqer=cfg.lqer_rank > 0,
                              lowbit=cfg.packs_low_bits), []


def pack_state(state_dict: Mapping[str, Tensor], model_config: dict, cfg: QuantConfig, code_bytes: int,
               meta: dict, hessians: Optional[Mapping[str, Tensor]] = None, details: bool = True) -> Packed:
    """Quantize, auto-fit when asked, serialize; report the bytes. Over the limit is not an error
    here: the report says fits=False and the caller refuses. `details`: per-group compressed sizes
    in the report (one more compression of every group)."""
    meta = dict(meta)
    quantized, qrep = quantize_state_dict(state_dict, cfg, hessians)
    blob, sections = serialize(quantized, model_config, meta, cfg, cfg.codec)
    # "auto": the winner is kept, so auto-fit rounds compress once each
    codec = blob[7:13].rstrip(b"\0").decode() if cfg.codec == "auto" else cfg.codec
    model_target = min(cfg.target_bytes, ARTIFACT_LIMIT) - 1 - int(code_bytes)
    actions: list[str] = []
    pruned = 0

    def measure(tensors: Mapping[str, object]) -> int:
        return len(serialize(tensors, model_config, meta, cfg, codec)[0])

    if cfg.auto_fit and len(blob) > model_target:
        actions.append(f"start: {len(blob):,} bytes > model budget {model_target:,}")
        for mult in AUTO_FIT_CLIP_MULTS:
            quantized, qrep = quantize_state_dict(state_dict, cfg, hessians, clip_mult=mult)
            size = measure(quantized)
            actions.append(f"clip x{mult}: {size:,} bytes")
            if size <= model_target:
                break
        else:
            originals = {n: state_dict[n] for n, v in quantized.items() if isinstance(v, QuantizedTensor)}
            quantized, res = prune_ones(quantized, measure, model_target, originals)
            pruned = res.pruned
            actions.append(f"pruned {res.pruned:,} of {res.candidates:,} +-1 values in {res.rounds} rounds: "
                           f"{res.size:,} bytes" + ("" if res.fits else " (still over)"))
        blob, sections = serialize(quantized, model_config, meta, cfg, codec)

    report = budget_totals(len(blob), code_bytes)
    if not DETAIL:  # the counted script reads the totals only
        return Packed(blob, report, quantized)
    groups = qrep["groups"]
    if details:
        groups = group_byte_table(quantized, groups, None if codec == "pergroup" else codec, cfg.byte_shuffle)
    report.update({
        "artifact_bytes": report["total_bytes"],
        "groups": [{k: g.get(k) for k in ("group", "params", "bits", "raw_bytes", "compressed_bytes")} for g in groups],
        "sections": sections, "header_bytes": framing_bytes(blob), "codec": codec, "byte_shuffle": cfg.byte_shuffle,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "target_bytes": cfg.target_bytes, "fits_target": report["total_bytes"] < cfg.target_bytes,
        "auto_fit": {"enabled": cfg.auto_fit, "clip_mult": qrep["clip_mult"], "pruned": pruned, "actions": actions},
        "gptq_missing": qrep["gptq_missing"], "lqer": qrep["lqer"], "tensors": qrep["tensors"],
    })
    return Packed(blob, report, quantized)


def format_budget_table(report: dict) -> str:
    """Human-readable byte table."""
    lines = [f"{'group':<36} {'params':>12} {'bits':>5} {'raw bytes':>12} {'compressed':>12}"]
    for r in report["groups"]:
        raw, packed = ("" if r[k] is None else f"{r[k]:,}" for k in ("raw_bytes", "compressed_bytes"))
        lines.append(f"{r['group']:<36} {r['params']:>12,} {r['bits']:>5} {raw:>12} {packed:>12}")
    for r in report.get("sections") or []:
        lines.append(f"{'section ' + r['group'] + ' (' + r['codec'] + ')':<36} {'':>12} {'':>5} "
                     f"{r['raw_bytes']:>12,} {r['compressed_bytes']:>12,}")
    shuffle = "on" if report.get("byte_shuffle") else "off"
    lines += [
        f"{'header + framing':<36} {'':>12} {'':>5} {'':>12} {report.get('header_bytes', 0):>12,}",
        f"model {report['model_bytes']:,} bytes ({report.get('codec')}, byte shuffle {shuffle}) "
        f"+ code {report['code_bytes']:,} bytes",
    ]
    verdict = "fits" if report["fits"] else f"OVER by {report['total_bytes'] - report['limit'] + 1:,} bytes"
    lines.append(f"artifact {report['total_bytes']:,} of < {report['limit']:,} bytes: {verdict}")
    af = report.get("auto_fit") or {}
    for a in af.get("actions", []):
        lines.append(f"auto-fit: {a}")
    return "\n".join(lines)

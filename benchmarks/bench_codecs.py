"""Artifact codecs on a full-size recipe-shaped quantized state: bytes, encode and decode seconds.

    python benchmarks/bench_codecs.py [--recipe pr1413] [--weights init|columns] [--codecs brotli,pergroup]
                                      [--set quant.k=v ...] [--reference]

The state: the recipe's model at its initialisation (`init`: orthogonal matrices, normal embedding),
or with every matrix redrawn as Gaussian values times log-normal input-feature scales (`columns`,
--col-sigma; 0 = i.i.d. Gaussian: trained weights have such per-feature scales; note that the init
has zero output projections), quantized by the recipe's quant plan
(round-to-nearest: no Hessians here). --reference adds upstream PR #1413's own serialization of the
same values (torch.save of q/scale/fp16 passthrough, byte shuffle with stride 2, brotli-11).
Prints one JSON line per codec; `section_decode_s`: each section decoded alone (the slowest bounds
the reader's parallel decode on a machine with a core per section).
"""
from __future__ import annotations

import argparse
import io
import json
import time

import brotli
import numpy as np
import torch

from pgolf.config import load_config
from pgolf.model.gpt import GPT
from pgolf.quant.budget import pack_state, quantize_state_dict
from pgolf.quant.codecs import decompress
from pgolf.quant.container import _PREFIX, parse_artifact
from pgolf.quant.quantizers import QuantizedTensor


def full_state(recipe: str, weights: str, col_sigma: float, seed: int = 0) -> dict[str, torch.Tensor]:
    cfg = load_config(recipe)
    torch.manual_seed(seed)
    state = {k: v.detach().float() for k, v in GPT(cfg.model).state_dict().items()}
    if weights == "columns":
        g = torch.Generator().manual_seed(seed)
        for k, v in state.items():
            if v.ndim == 2 and v.numel() > cfg.quant.small_tensor_numel:
                cols = torch.exp(col_sigma * torch.randn(v.shape[1], generator=g))
                state[k] = torch.randn(v.shape, generator=g) * cols / v.shape[1] ** 0.5
    return state


def upstream_reference(quantized: dict) -> bytes:
    """PR #1413's artifact bytes for the same values: torch.save({'w', 'm'}), stride-2 byte shuffle
    of the whole buffer, brotli-11."""
    w, m = {}, {}
    for name, t in quantized.items():
        if isinstance(t, QuantizedTensor):
            w[name + ".q"], w[name + ".scale"] = t.q, t.scale.to(torch.float16)
            m[name] = f"gptq (int{t.bits})"
        else:
            w[name] = t.data.to(torch.float16) if t.data.is_floating_point() else t.data
            m[name] = "passthrough (float16)"
    buf = io.BytesIO()
    torch.save({"w": w, "m": m}, buf)
    raw = np.frombuffer(buf.getvalue(), dtype=np.uint8)
    n = len(raw) // 2 * 2
    shuffled = np.concatenate([raw[:n].reshape(-1, 2).T.reshape(-1), raw[n:]]).tobytes()
    return brotli.compress(shuffled, quality=11)


def section_decode_seconds(blob: bytes) -> list[tuple[str, int, float]]:
    """(codec, raw bytes, seconds) of decoding each section alone, one thread: with a core per
    section the reader's parallel decode takes about the slowest one."""
    _, hcodec, hsize, hraw = _PREFIX.unpack_from(blob)
    start = _PREFIX.size + hsize
    header = json.loads(decompress(blob[_PREFIX.size:start], hcodec.rstrip(b"\0").decode(), hraw))
    out, pos = [], start
    for sec in header["sections"]:
        part = blob[pos:pos + sec["size"]]
        pos += sec["size"]
        t0 = time.perf_counter()
        decompress(part, sec["codec"], sec["raw"])
        out.append((sec["codec"], sec["raw"], time.perf_counter() - t0))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="pr1413")
    p.add_argument("--weights", choices=["init", "columns"], default="init")
    p.add_argument("--col-sigma", type=float, default=0.5)
    p.add_argument("--codecs", default="brotli,pergroup")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--reference", action="store_true")
    a = p.parse_args()
    state = full_state(a.recipe, a.weights, a.col_sigma)
    base = load_config(a.recipe, a.overrides)
    quantized, _ = quantize_state_dict(state, base.quant)
    common = {"recipe": a.recipe, "weights": a.weights, "params": sum(v.numel() for v in state.values())}
    if a.weights == "columns":
        common["col_sigma"] = a.col_sigma
    if a.reference:
        t0 = time.perf_counter()
        ref = upstream_reference(quantized)
        print(json.dumps({**common, "codec": "upstream torch.save+shuffle+brotli-11", "bytes": len(ref),
                          "encode_s": round(time.perf_counter() - t0, 1)}), flush=True)
    for codec in a.codecs.split(","):
        cfg = base.replace([f"quant.codec={codec}"])
        t0 = time.perf_counter()
        packed = pack_state(state, {}, cfg.quant, 0, {})
        enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        art = parse_artifact(packed.blob)
        dec = time.perf_counter() - t0
        row = {**common, "codec": codec, "bytes": len(packed.blob), "framing": packed.report["header_bytes"],
               "encode_s": round(enc, 1), "decode_s": round(dec, 1),
               "sections": [(s["codec"], s["size"]) for s in art.sections]}
        per = section_decode_seconds(packed.blob)
        row["section_decode_s"] = {"slowest": round(max(t for *_, t in per), 1), "sum": round(sum(t for *_, t in per), 1),
                                   "sections": len(per)}
        if packed.report.get("sections"):
            row["groups"] = [{k: r[k] for k in ("group", "codec", "compressed_bytes", "candidates", "sorted")}
                             for r in packed.report["sections"]]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""Peak GPU memory of a recipe's training step, from first principles, against the records' figures.

    python benchmarks/memory_model.py [--recipe pr1413] [--tokens-per-gpu 98304] [--json]

Per GPU, for one forward/backward of `train.micro_batch_tokens` tokens under bf16 autocast (the
records' 48 x 2048 for pr1413 and pr1855, 64 x 1024 for the baseline):
  weights      fp32 masters, 4 B/param            grads      4 B/param
  optimizer    Adam 8 B/param (two moments), Muon 4 B/param (momentum; 2 with optim.muon_momentum_dtype bf16)
  averaging    EMA or SWA: one fp32 copy, 4 B/param
  activations  what backward keeps per token and visited layer (bf16 = 2 B, fp32 = 4 B):
               attention: normed input 2d, q/k/v 2(d + 2 kv), attention output 2d, fp32 residual 4d,
               XSA's projected output 2d; MLP: normed input 2d, fp32 residual 4d, hidden 2h before
               and 2h after the activation (SwiGLU: gate, up and product, 6h); a parallel layer
               keeps a second fp32 lane 4d. Layers are the recurrent schedule's (its longest).
  logits       bf16 logits 2V, their fp32 copy 4V and its gradient 4V per token
  runtime      1 GiB: CUDA context, cuBLAS/attention workspaces and allocator slack
Nothing here is fitted to the records: `RECORDS` are only compared against.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from pgolf.config import Config, load_config
from pgolf.model.gpt import GPT, layer_schedule
from pgolf.optim.groups import classify_params

MIB = 2 ** 20
RUNTIME_BYTES = 2 ** 30
# Peak memory allocated per GPU in the records' logs (8x H100, their per-GPU batch).
RECORDS = {"baseline": 10_184, "pr1413": 35_373, "pr1855": 41_717}


def estimate(cfg: Config, tokens: int | None = None) -> dict:
    m = cfg.model
    tokens = tokens or cfg.train.micro_batch_tokens
    with torch.device("meta"):
        model = GPT(m)
    kinds = classify_params(model)
    n = {k: sum(p.numel() for _, p in v) for k, v in kinds.items()}
    params = sum(n.values())
    d, kv, h, V = m.model_dim, m.num_kv_heads * m.head_dim, m.mlp_hidden, m.vocab_size
    schedule = layer_schedule(m, recurrence=True)
    per_layer = []
    for i in schedule:
        attn = 2 * d + 2 * (d + 2 * kv) + 2 * d + 4 * d + (2 * d if model.blocks[i].attn.use_xsa else 0)
        mlp = 2 * d + 4 * d + (6 * h if m.activation == "swiglu" else 4 * h)
        per_layer.append(attn + mlp + (4 * d if model.blocks[i].parallel else 0))
    averaging = 4 * params if (cfg.optim.ema_decay > 0 or cfg.optim.swa_every > 0) else 0
    parts = {
        "weights": 4 * params,
        "grads": 4 * params,
        "optimizer": 8 * (n["embed"] + n["head"] + n["scalar"])
        + (2 if cfg.optim.muon_momentum_dtype == "bf16" else 4) * n["matrix"],
        "averaging": averaging,
        "activations": tokens * sum(per_layer),
        "logits": tokens * 10 * V,
        "runtime": RUNTIME_BYTES,
    }
    total = sum(parts.values())
    out = {"recipe": cfg.name, "params": params, "tokens_per_gpu": tokens, "layers_visited": len(schedule),
           "bytes": parts, "total_mib": round(total / MIB)}
    if cfg.name in RECORDS:
        out["record_mib"] = RECORDS[cfg.name]
        out["ratio"] = round(total / MIB / RECORDS[cfg.name], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="peak training memory per GPU, estimated")
    p.add_argument("--recipe", action="append", help="repeatable (default: every recipe with a record figure)")
    p.add_argument("--tokens-per-gpu", type=int, default=None, help="default: train.micro_batch_tokens")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    for r in args.recipe or list(RECORDS):
        e = estimate(load_config(r), args.tokens_per_gpu)
        if args.json:
            print(json.dumps(e))
            continue
        parts = ", ".join(f"{k} {v / MIB:,.0f}" for k, v in e["bytes"].items())
        vs = f" (record {e['record_mib']:,} MiB, ratio {e['ratio']})" if "record_mib" in e else ""
        print(f"{r}: {e['total_mib']:,} MiB at {e['tokens_per_gpu']:,} tokens/GPU{vs}\n  {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

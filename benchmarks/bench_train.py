"""Training throughput benchmark: tokens/s, ms/step, MFU and peak memory for a recipe.

    python benchmarks/bench_train.py --recipe tiny --data DIR --steps 20 [--set k=v ...] [--peak-flops F]

Runs the real training step (pgolf.train.trainer.Trainer: same loader, optimizers, compile and
autocast settings), `--warmup` untimed steps first, then times `--steps` steps with the device
synchronized. Prints one JSON line and appends a row to docs/benchmarks.md.

Model FLOPs per token (forward + backward, the usual 6N rule plus attention scores):
    6 * (N_nonembed + V * d)  +  12 * L * T * d
N_nonembed = parameters outside nn.Embedding tables; V * d is the (tied) output head's matmul;
L = layers visited per forward (recurrence counts repeats), T = seq_len, d = model_dim.
MFU = flops/token * tokens/s / peak; peak defaults to 989e12 (H100/H200 bf16 dense) on those GPUs,
else --peak-flops (on CPU MFU is reported as null without it).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

import numpy as np

from pgolf import runtime
from pgolf.atomic import atomic_write_text
from pgolf.config import load_config
from pgolf.data.shards import list_shards
from pgolf.train.trainer import Trainer, TrainData, peak_memory_bytes

H100_BF16_DENSE = 989e12
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = """# pgolf benchmarks

Rows are appended by `python benchmarks/bench_train.py` (one row per invocation).
MFU uses flops/token = 6 * (N_nonembed + V*d) + 12 * L * T * d over the device's peak
(989e12 for H100/H200 bf16 dense; n/a on CPU unless --peak-flops is given).

| date | device | command | tokens/s | ms/step | MFU | peak memory | notes |
|---|---|---|---|---|---|---|---|
"""


def flops_per_token(model: torch.nn.Module, seq_len: int) -> tuple[float, dict]:
    cfg = model.cfg
    emb = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    n_nonembed = model.num_params() - emb
    head = cfg.vocab_size * cfg.model_dim
    layers = len(model.schedule())
    attn = 12 * layers * seq_len * cfg.model_dim
    return 6 * (n_nonembed + head) + attn, {"n_nonembed": n_nonembed, "head_params": head, "layers": layers}


def default_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return H100_BF16_DENSE if ("H100" in name or "H200" in name) else None


def append_row(row: dict, command: str, doc: Path = DOC) -> None:
    text = doc.read_text() if doc.is_file() else HEADER
    mfu = f"{row['mfu'] * 100:.1f}%" if row["mfu"] is not None else "n/a"
    mem = f"{row['peak_memory_bytes'] / 2**20:,.0f} MiB"
    notes = f"{row['params']:,} params, {row['steps']} steps, grad_accum {row['grad_accum']}, {row['dtype']}"
    if row.get("note"):
        notes += f", {row['note']}"
    line = (f"| {row['date']} | {row['device_name']} | `{command}` | {row['tokens_per_second']:,.0f} | "
            f"{row['ms_per_step']:.1f} | {mfu} | {mem} | {notes} |\n")
    if "| date | device | command |" not in text:
        text = text.rstrip("\n") + "\n\n" + HEADER.split("\n\n", 1)[1]
    # the row goes at the end of this script's own table (other tables may follow it)
    lines = text.splitlines(keepends=True)
    i = next(k for k, ln in enumerate(lines) if ln.startswith("| date | device | command |")) + 2
    while i < len(lines) and lines[i].startswith("|"):
        i += 1
    atomic_write_text(doc, "".join(lines[:i]) + line + "".join(lines[i:]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="pgolf training throughput benchmark")
    p.add_argument("--recipe", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data", required=True, help="shard dir with fineweb_train_*.bin and fineweb_val_*.bin")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=-1, help="untimed steps first (default: train.warmup_steps, >= 2)")
    p.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s for MFU")
    p.add_argument("--note", default="", help="free text for the notes column")
    p.add_argument("--no-append", action="store_true", help="do not append to docs/benchmarks.md")
    args = p.parse_args(argv)

    cfg = load_config(args.recipe, args.overrides)
    info = runtime.setup(cfg.train.device)
    train_paths = list_shards(Path(args.data), "train")
    if not train_paths:
        p.error(f"{args.data}: no fineweb_train_*.bin shards")
    empty = np.zeros(0, dtype=np.int64)
    data = TrainData(train_paths, empty, empty, empty, empty)  # timing only: no validation
    tr = Trainer(cfg, data, None, info, progress=False)
    try:
        warm = args.warmup if args.warmup >= 0 else max(cfg.train.warmup_steps, 2)
        for _ in range(warm):
            tr.train_step()
        runtime.synchronize(tr.device)
        if tr.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(tr.device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = tr.train_step()
        runtime.synchronize(tr.device)
        dt = time.perf_counter() - t0
        final_loss = float(loss.item())
    finally:
        tr.loader.close()
        runtime.cleanup(info)
    tokens = args.steps * cfg.train.batch_tokens
    fpt, parts = flops_per_token(tr.model, cfg.train.seq_len)
    tps = tokens / dt
    peak = args.peak_flops or default_peak(tr.device)
    row = {
        "date": time.strftime("%Y-%m-%d"), "recipe": cfg.name, "device": str(tr.device),
        "device_name": torch.cuda.get_device_name(tr.device) if tr.device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)",
        "world_size": info.world, "params": tr.model.num_params(), "steps": args.steps, "warmup_steps": warm,
        "grad_accum": tr.accum, "dtype": str(tr.amp).replace("torch.", "") if tr.amp else "fp32",
        "compile": tr.fwd is not tr.model, "tokens_per_second": tps, "ms_per_step": dt / args.steps * 1000,
        "flops_per_token": fpt, **parts, "peak_flops": peak,
        "mfu": fpt * tps / (peak * info.world) if peak else None,
        "peak_memory_bytes": peak_memory_bytes(tr.device), "final_loss": final_loss, "note": args.note,
    }
    print(json.dumps(row, sort_keys=True))
    if info.is_main and not args.no_append:
        command = "python benchmarks/bench_train.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        append_row(row, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

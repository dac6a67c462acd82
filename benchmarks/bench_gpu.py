"""The GPU benchmark plan: each seed recipe trained for a short fixed wall-clock, packed, scored with its
own eval method; one row per recipe appended to docs/benchmarks.md, with the projection to 8 GPUs.

    bash benchmarks/bench_gpu.sh [--seconds 60] [--eval-tokens 1048576] [--recipes baseline,pr493,pr1413,pr1855]
                                 [--shared ../shared/data] [--out runs/bench-gpu] [--doc docs/benchmarks.md]
    bash benchmarks/bench_gpu.sh --dry-run      # the same plan at CPU size (--smoke), for tests and CI

Data: FineWeb cannot be fetched here, so each recipe trains on the stand-in corpus and is scored on the
901-document FineWeb validation prefix in --shared, tokenized with the recipe's tokenizer (CaseOps for
pr1855). Per row: tokens/s, ms/step, MFU against 989 TFLOP/s bf16 dense (benchmarks/bench_train.py's
flops per token), peak memory, val_bpb pre- and post-quant, eval seconds per million tokens, and the
projection to 8 GPUs: ms/step divided by 8 (ideal data parallelism at the recipe's global batch) gives
the steps of a 600 s run, and the eval rate over the full validation split (VAL_TOKENS of the recipe's
vocabulary) divided by 8 gives the eval time against the 600 s eval budget.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import H100_BF16_DENSE, flops_per_token  # noqa: E402

from pgolf.atomic import atomic_write_text  # noqa: E402
from pgolf.config import load_config  # noqa: E402
from pgolf.model.gpt import GPT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
RECIPES = ("baseline", "pr493", "pr1413", "pr1855")
# Tokens in the challenge's full FineWeb validation split, per tokenizer (the eval projection).
VAL_TOKENS = {1024: 62_021_632, 8192: 40_540_160}  # challenge.md
TOKENIZERS = {1024: "fineweb_1024_bpe.model", 8192: "fineweb_8192_bpe.model"}
CASEOPS_TOKENIZER = "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
HEADER = ("| date | device | recipe | train s | steps | tokens/s | ms/step | MFU | peak memory | pre-quant | "
          "post-quant (method) | eval s/Mtok | 8-GPU steps in 600 s | 8-GPU full eval s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def plan(recipe: str, args) -> list[str]:
    """The `pgolf run` command line of one recipe."""
    cfg = load_config(recipe)
    shared = Path(args.shared)
    tok = CASEOPS_TOKENIZER if cfg.data.caseops else TOKENIZERS[cfg.model.vocab_size]
    cmd = [sys.executable, "-m", "pgolf.cli", "run", "--recipe", recipe, "--json", "--no-progress",
           "--data", str(shared / "standin" / "standin_000.jsonl.zst"),
           "--val-data", str(shared / "fineweb" / "val_docs_901.jsonl"),
           "--tokenizer", str(shared / "tokenizers" / tok), "--out", str(Path(args.out) / recipe),
           "--set", "eval.audit=false"]  # the audit is not what is timed here
    if args.dry_run:
        return cmd + ["--smoke"]
    return cmd + ["--set", f"train.max_seconds={args.seconds}", "--set", "train.val_every=0",
                  "--set", f"eval.max_tokens={args.eval_tokens}", "--set", "quant.target_bytes=15999999"]


def row(recipe: str, summary: dict, smoke: bool) -> dict:
    cfg = load_config(recipe, smoke=smoke)
    with torch.device("meta"):
        model = GPT(cfg.model)
    model.set_recurrence(bool(summary.get("recurrence_on")))
    fpt, _ = flops_per_token(model, cfg.train.seq_len)
    tps = summary["tokens_per_second"]
    ms = summary["train_seconds"] * 1000 / max(summary["steps"], 1)
    gpu = summary.get("device", "").startswith("cuda")
    eval_rate = summary["eval_seconds"] / max(summary["eval_tokens"], 1) * 1e6
    ms8 = ms / 8 * summary.get("world_size", 1)
    return {"recipe": recipe, "device": summary.get("device"), "train_seconds": summary["train_seconds"],
            "steps": summary["steps"], "tokens_per_second": tps, "ms_per_step": ms,
            "mfu": fpt * tps / H100_BF16_DENSE if gpu else None, "peak_memory_bytes": summary["peak_memory_bytes"],
            "val_bpb_prequant": summary["val_bpb_prequant"], "val_bpb": summary["val_bpb"],
            "eval_method": summary["eval_method"], "eval_s_per_mtok": eval_rate,
            "steps_in_600s_8gpu": int(600_000 / ms8),
            "full_eval_s_8gpu": eval_rate * VAL_TOKENS[cfg.model.vocab_size] / 1e6 / 8}


def append(rows: list[dict], device_name: str, doc: Path) -> None:
    text = doc.read_text() if doc.is_file() else "# pgolf benchmarks\n"
    if HEADER not in text:
        text = text.rstrip("\n") + "\n\n## GPU plan (`benchmarks/bench_gpu.sh`)\n\n" + HEADER
    date = time.strftime("%Y-%m-%d")
    lines = []
    for r in rows:
        mfu = f"{r['mfu'] * 100:.1f}%" if r["mfu"] is not None else "n/a"
        lines.append(f"| {date} | {device_name} | {r['recipe']} | {r['train_seconds']:.0f} | {r['steps']:,} | "
                     f"{r['tokens_per_second']:,.0f} | {r['ms_per_step']:.1f} | {mfu} | "
                     f"{r['peak_memory_bytes'] / 2**20:,.0f} MiB | {r['val_bpb_prequant']:.4f} | "
                     f"{r['val_bpb']:.4f} ({r['eval_method']}) | {r['eval_s_per_mtok']:.1f} | "
                     f"{r['steps_in_600s_8gpu']:,} | {r['full_eval_s_8gpu']:.0f} |\n")
    # rows go right under the table's header, newest first
    head, tail = text.split(HEADER, 1)
    atomic_write_text(doc, head + HEADER + "".join(lines) + tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the GPU benchmark plan (see the module doc)")
    p.add_argument("--dry-run", action="store_true", help="the same plan at CPU size (--smoke)")
    p.add_argument("--seconds", type=float, default=60.0, help="training wall-clock per recipe")
    p.add_argument("--eval-tokens", type=int, default=1 << 20, help="validation tokens scored per recipe")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default="runs/bench-gpu")
    p.add_argument("--doc", default=str(DOC))
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device: run on the GPU machine, or pass --dry-run for the CPU-sized plan")
    rows = []
    for recipe in args.recipes.split(","):
        cmd = plan(recipe, args)
        print("$ " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
        res = subprocess.run(cmd, stdout=subprocess.DEVNULL)
        if res.returncode != 0:
            print(f"bench_gpu: {recipe} failed (exit {res.returncode})", file=sys.stderr)
            return res.returncode
        summary = json.loads((Path(args.out) / recipe / "summary.json").read_text())
        rows.append(row(recipe, summary, args.dry_run))
        print(json.dumps(rows[-1]), flush=True)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "CPU (--dry-run)"
    append(rows, name, Path(args.doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

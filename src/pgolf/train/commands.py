"""`pgolf train`: train a recipe on a shard directory into a run directory.

Under torchrun every rank runs the same command. The challenge's environment variables
(ITERATIONS, MAX_WALLCLOCK_SECONDS, ...) are honoured through pgolf.compat.
"""
from __future__ import annotations

import argparse

from pgolf.cli import add_config_flags, add_json_flag
from pgolf.compat import apply_env_compat
from pgolf.config import load_config
from pgolf.errors import InputError

def cmd_train(args: argparse.Namespace) -> dict:
    from pgolf.train.trainer import train

    if args.stop_after is not None and args.stop_after < 1:
        raise InputError(f"--stop-after: expected a step count >= 1, got {args.stop_after}")
    overrides = apply_env_compat(args.overrides)
    cfg = load_config(args.recipe, overrides)
    data = args.data or cfg.data.path
    if not data:
        raise InputError("--data: required (a shard directory), or set data.path in the recipe")
    summary = train(cfg, data, args.out, resume=args.resume, progress=not args.no_progress,
                    stop_after_steps=args.stop_after)
    return summary


def _human(s: dict) -> str:
    return (f"trained {s['recipe']} for {s['steps']} steps ({s['stop_reason']}) in {s['train_seconds']:.1f}s: "
            f"{s['params']:,} params, {s['tokens_per_second'] or 0:,.0f} tok/s, "
            f"val_bpb (pre-quant) {s['val_bpb_prequant']:.4f}; run dir {s['run_dir']}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a recipe on a shard directory (checkpoints, logs, metrics in RUN)")
    add_config_flags(p, recipe_required=True)
    p.add_argument("--data", help="shard dir with fineweb_train_*.bin and fineweb_val_*.bin (default: data.path)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="checkpoint and exit after N steps (resume later with --resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or log echo on stderr")
    add_json_flag(p)
    p.set_defaults(func=cmd_train, human=_human)

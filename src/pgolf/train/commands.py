"""`pgolf train`: train a recipe on a shard directory into a run directory.

Under torchrun every rank runs the same command. As a compatibility layer with the challenge's
train_gpt.py, its environment variables (ITERATIONS, MAX_WALLCLOCK_SECONDS, ...) are mapped onto
config fields here, and only here; an explicit --set for the same field wins.
"""
from __future__ import annotations

import argparse
import os
import sys

from pgolf.cli import add_config_flags, add_json_flag
from pgolf.config import load_config, parse_override
from pgolf.errors import InputError

# challenge env name -> config field
ENV_FIELDS = {
    "ITERATIONS": "train.max_steps",
    "MAX_WALLCLOCK_SECONDS": "train.max_seconds",
    "SEED": "train.seed",
    "TRAIN_SEQ_LEN": "train.seq_len",
    "TRAIN_BATCH_TOKENS": "train.batch_tokens",
    "WARMDOWN_ITERS": "train.warmdown_iters",
    "WARMUP_STEPS": "train.warmup_steps",
    "VAL_LOSS_EVERY": "train.val_every",
    "NUM_LAYERS": "model.num_layers",
    "MODEL_DIM": "model.model_dim",
    "VOCAB_SIZE": "model.vocab_size",
    "MATRIX_LR": "optim.matrix_lr",
    "SCALAR_LR": "optim.scalar_lr",
    "TIED_EMBED_LR": "optim.embed_lr",
}


def apply_env_compat(overrides: list[str], environ: dict[str, str] | None = None,
                     announce: bool = True) -> list[str]:
    """Prepend overrides for the challenge env names that are set; explicit --set entries (later) win."""
    env = os.environ if environ is None else environ
    explicit = {".".join(parse_override(o)[0]) for o in overrides}
    added, applied = [], []
    for name, field in ENV_FIELDS.items():
        raw = env.get(name)
        if raw is None or raw.strip() == "" or field in explicit:
            continue
        added.append(f"{field}={raw.strip()}")
        applied.append(f"{name}={raw.strip()} -> {field}")
    if applied and announce:
        print("pgolf train: applied challenge env settings: " + ", ".join(applied), file=sys.stderr)
    return added + list(overrides)


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

"""Compatibility layer with the challenge's train_gpt.py environment variables.

ITERATIONS, MAX_WALLCLOCK_SECONDS, SEED, ... are mapped onto config fields here, and only here; an
explicit --set for the same field wins. `pgolf train`, `pgolf run` and the bundled script use it.
"""
from __future__ import annotations

import os
import sys

from pgolf.config import parse_override

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
        print("pgolf: applied challenge env settings: " + ", ".join(applied), file=sys.stderr)
    return added + list(overrides)

"""`pgolf train` (arguments only; the work is pgolf.pipeline.job.cmd_train). Under torchrun every
rank runs the same command; the challenge's env names (ITERATIONS, SEED, ...) are honoured."""
from __future__ import annotations

from pgolf.cli import command
from pgolf.pipeline.commands import add_run_flags


def register(sub) -> None:
    p = sub.add_parser("train", help="train a recipe on a shard directory (checkpoints, logs, metrics in RUN)")
    add_run_flags(p)
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="checkpoint and exit after N steps (resume later with --resume)")
    command(p, "pgolf.pipeline.job:cmd_train", "pgolf.pipeline.job:human_train")

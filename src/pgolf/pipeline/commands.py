"""`pgolf run`: the main job (arguments only; the work is pgolf.pipeline.job.cmd_run)."""
from __future__ import annotations

from pgolf.cli import add_config_flags, add_json_flag, add_progress_flag, command


def add_run_flags(p) -> None:
    add_config_flags(p)
    p.add_argument("--config-json", help="a resolved config (JSON file or inline JSON) instead of --recipe")
    p.add_argument("--smoke", action="store_true",
                   help="the recipe at CPU size: width 64, 8 steps, an 8,192-token eval (see docs/cli.md)")
    p.add_argument("--data", nargs="+", help="shard dir or corpus files; default: download the published export")
    p.add_argument("--tokenizer", help="SentencePiece model (needed for corpora; default: the shard dir's manifest)")
    p.add_argument("--out", required=True, help="run directory (must be new or empty, unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint")
    p.add_argument("--move-aside", action="store_true", help="move an old non-empty RUN to RUN.old-<time> first")
    add_progress_flag(p)
    add_json_flag(p)


def register(sub) -> None:
    p = sub.add_parser("run", help="the main job: data -> train -> pack -> score -> audit (RUN/summary.json)")
    add_run_flags(p)
    p.add_argument("--val-data", nargs="+", help="separate validation source: shard dir or corpus files")
    p.add_argument("--val-docs", type=int, default=50_000, help="docs held out as val when --data is a corpus")
    command(p, "pgolf.pipeline.job:cmd_run", "pgolf.pipeline.job:human_run")

"""`pgolf pack RUN [--out FILE]`: quantize + compress a run into its artifact; byte table; budget check."""
from __future__ import annotations

import argparse
from pathlib import Path

from pgolf.cli import add_json_flag
from pgolf.config import Config, apply_overrides
from pgolf.model.io import CONFIG_FILE, load_config_file


def cmd_pack(args: argparse.Namespace) -> dict:
    from pgolf.quant.pack import pack_run

    run = Path(args.run)
    cfg = None
    if args.overrides:  # e.g. --set quant.codec=auto: re-pack a finished run with other settings
        base = load_config_file(run / CONFIG_FILE).to_dict()
        cfg = Config.from_dict(apply_overrides(base, args.overrides))
    return pack_run(run, args.out, overrides=cfg)


def _human(r: dict) -> str:
    from pgolf.quant.budget import format_budget_table

    return f"{format_budget_table(r)}\nwrote {r['artifact_path']}"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pack", help="quantize + compress a run into its artifact; refuses over 16,000,000 bytes")
    p.add_argument("run", help="run directory (config.json + model.safetensors)")
    p.add_argument("--out", help="artifact path (default RUN/artifact.pgolf)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override quant settings for this pack, e.g. quant.codec=auto")
    add_json_flag(p)
    p.set_defaults(func=cmd_pack, human=_human)

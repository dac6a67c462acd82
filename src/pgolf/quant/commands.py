"""`pgolf pack` and `pgolf bundle` (arguments and human output; the work is in pgolf.pipeline)."""
from __future__ import annotations

from typing import get_args

from pgolf.cli import add_config_flags, add_json_flag, command
from pgolf.config import CodeCompress


def human_bundle(r: dict) -> str:
    return (f"{r['out']}: {r['code_bytes']:,} bytes ({r['compress']}), {len(r['functions'])} definitions from "
            f"{len(r['modules'])} modules; needs {', '.join(r['third_party'])}")


def register(sub) -> None:
    p = sub.add_parser("pack", help="quantize + compress a run into its artifact; refuses >= 16,000,000 bytes")
    p.add_argument("run", help="run directory (config.json + model.safetensors)")
    p.add_argument("--out", help="artifact path (default RUN/artifact.pgolf; another path leaves RUN untouched)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override quant.* settings for this pack, e.g. quant.codec=auto")
    add_json_flag(p)
    command(p, "pgolf.pipeline.packing:cmd_pack", "pgolf.pipeline.packing:human_pack")

    p = sub.add_parser("bundle", help="write the counted single-file train_gpt.py for a recipe")
    add_config_flags(p, recipe_required=True)
    p.add_argument("--out", required=True, help="where to write train_gpt.py")
    p.add_argument("--compress", choices=get_args(CodeCompress),
                   help="wrapper (default: quant.code_compress; auto = the smallest of lzma, brotli and zpaq)")
    add_json_flag(p)
    command(p, "pgolf.pipeline.tools:cmd_bundle", "pgolf.quant.commands:human_bundle")

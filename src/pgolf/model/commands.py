"""`pgolf model` and `pgolf config` (arguments and human output; the work is in pgolf.pipeline.tools)."""
from __future__ import annotations

from pgolf.cli import add_config_flags, add_json_flag, command


def human_model(r: dict) -> str:
    shape = (f"{r['layers']} layers" + (f" ({r['virtual_layers_recurrent']} virtual once recurrence is on)"
                                        if r["virtual_layers_recurrent"] != r["layers"] else ""))
    lines = [f"recipe {r['recipe']}: {r['params']:,} params, {shape}, d={r['model_dim']}, "
             f"{r['heads']}H/{r['kv_heads']}KV, MLP hidden {r['mlp_hidden']:,}, vocab {r['vocab_size']:,}"]
    for k, v in sorted(r["param_groups"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {k:40s} {v:>12,}")
    return "\n".join(lines)


def human_config(r: dict) -> str:
    out = []
    for section, fields in r["fields"].items():
        out.append(f"[{section}]")
        for name, f in fields.items():
            out.append(f"  {name} = {f['value']!r}" + (f"    # {f['doc']}" if f["doc"] else ""))
    return "\n".join(out)


def register(sub) -> None:
    p = sub.add_parser("model", help="build a model from a recipe and report params and shape")
    add_config_flags(p, recipe_required=True)
    add_json_flag(p)
    command(p, "pgolf.pipeline.tools:cmd_model", "pgolf.model.commands:human_model")

    p = sub.add_parser("config", help="the resolved config of a recipe, every field with its doc")
    add_config_flags(p, recipe_required=True)
    p.add_argument("--smoke", action="store_true", help="the CPU-sized --smoke version")
    add_json_flag(p)
    command(p, "pgolf.pipeline.tools:cmd_config", "pgolf.model.commands:human_config")

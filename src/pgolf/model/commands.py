"""`pgolf model`: build a model from a recipe and report its parameters and shape."""
from __future__ import annotations

import argparse

from pgolf.cli import add_config_flags, add_json_flag
from pgolf.config import load_config
from pgolf.model.gpt import GPT, layer_schedule


def model_summary(model: GPT) -> dict:
    groups: dict[str, int] = {}
    for name, p in model.named_parameters():
        key = name.split(".")[0] if not name.startswith("blocks.") else "blocks." + name.split(".", 2)[2]
        groups[key] = groups.get(key, 0) + p.numel()
    cfg = model.cfg
    return {
        "params": model.num_params(),
        "layers": cfg.num_layers,
        "virtual_layers": len(model.schedule()),
        "virtual_layers_recurrent": len(layer_schedule(cfg, True)),
        "model_dim": cfg.model_dim,
        "heads": cfg.num_heads,
        "kv_heads": cfg.num_kv_heads,
        "mlp_hidden": cfg.mlp_hidden,
        "vocab_size": cfg.vocab_size,
        "param_groups": groups,
    }


def cmd_model(args: argparse.Namespace) -> dict:
    cfg = load_config(args.recipe, args.overrides)
    out = model_summary(GPT(cfg.model))
    out["recipe"] = cfg.name
    return out


def _human(r: dict) -> str:
    lines = [f"recipe {r['recipe']}: {r['params']:,} params, {r['layers']} layers "
             f"({r['virtual_layers_recurrent']} virtual with recurrence), d={r['model_dim']}, "
             f"{r['heads']}H/{r['kv_heads']}KV, mlp {r['mlp_hidden']}, vocab {r['vocab_size']}"]
    for k, v in sorted(r["param_groups"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {k:40s} {v:>12,}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="build a model from a recipe and report params and shape")
    add_config_flags(p, recipe_required=True)
    add_json_flag(p)
    p.set_defaults(func=cmd_model, human=_human)

"""`pgolf sweep`, `pgolf compare`, `pgolf submit` (arguments and human output; the work is in
pgolf.pipeline.reports)."""
from __future__ import annotations

from typing import get_args

from pgolf.cli import add_config_flags, add_json_flag, add_progress_flag, command
from pgolf.config import CodeCompress

R = "pgolf.pipeline.reports"


def human_sweep(r: dict) -> str:
    if "commands" in r:
        return "\n".join(r["commands"])
    lines = []
    for arm in ("base", "toggle"):
        a = r.get(arm)
        if not a:
            continue
        lines.append(f"{arm}: {a['n']} runs")
        for row in a["rows"]:
            lines.append(f"  seed {row['seed']}: val_bpb {row['val_bpb']:.5f}  steps {row['steps']}")
        if "val_bpb_mean" in a:
            lines.append(f"  mean {a['val_bpb_mean']:.5f} ± {a['val_bpb_std']:.5f}")
    t = r.get("toggle_vs_base")
    if t:
        lines.append(f"toggle vs base: delta {t['delta_bpb']:+.5f} bpb, t = {t['t_statistic']:.3f}, "
                     f"p = {t['p_value']:.3g} (one-sided, toggle lower)")
    for f in r.get("failed", []):
        lines.append(f"FAILED: {f}")
    lines.append(f"wrote {r['dir']}/sweep.json")
    return "\n".join(lines)


def human_compare(r: dict) -> str:
    return r["table"] + (f"\nwrote {r['png']}" if r.get("png") else "")


def human_submit(r: dict) -> str:
    spread = f" ± {r['val_bpb_std']:.5f}" if len(r["seeds"]) > 1 else ""
    lines = [f"record '{r['name']}' -> {r['out']}",
             f"val_bpb {r['val_bpb']:.5f}{spread} over seed{'s' if len(r['seeds']) > 1 else ''} {r['seeds']}",
             f"bytes: total {r['bytes_total']:,} (code {r['bytes_code']:,})" if r.get("bytes_total") is not None
             else f"bytes: code {r['bytes_code']:,}"]
    if r.get("t_statistic") is not None:
        lines.append(f"t = {r['t_statistic']:.3f}, p = {r['p_value']:.3g}")
    lines.append("files: " + ", ".join(r["files"]))
    lines += [f"warning: {w}" for w in r.get("warnings", [])]
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run a recipe over seeds (and an ablation toggle); writes DIR/sweep.json")
    add_config_flags(p, recipe_required=True)
    p.add_argument("--toggle", action="append", default=[], metavar="KEY=VALUE",
                   help="ablation override: also run every seed with it into DIR/toggle/ (repeatable)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    p.add_argument("--data", nargs="+", help="shard dir or corpus files (passed to pgolf run)")
    p.add_argument("--tokenizer", help="SentencePiece model (passed to pgolf run)")
    p.add_argument("--out", required=True, help="sweep directory")
    p.add_argument("--emit-torchrun", type=int, metavar="N", help="print torchrun launches (N procs) instead")
    p.add_argument("--in-process", action="store_true", help="run seeds in this process, not as subprocesses")
    p.add_argument("--rerun", action="store_true", help="rerun seeds that already have a summary.json")
    add_progress_flag(p, default=False)
    add_json_flag(p)
    command(p, f"{R}:cmd_sweep", "pgolf.submit.commands:human_sweep")

    p = sub.add_parser("compare", help="final metrics side by side, the config fields that differ, loss curves")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", help="PNG with train loss and val bpb curves of all runs")
    add_json_flag(p)
    command(p, f"{R}:cmd_compare", "pgolf.submit.commands:human_compare")

    p = sub.add_parser("submit", help="challenge-style record folder from runs of one recipe")
    p.add_argument("runs", nargs="+", help="run directories (one per seed, same recipe)")
    p.add_argument("--out", required=True, help="record folder to create")
    p.add_argument("--name", help="record name (default: the recipe name)")
    p.add_argument("--author")
    p.add_argument("--github-id")
    p.add_argument("--blurb", default="")
    p.add_argument("--compress", choices=[c for c in get_args(CodeCompress) if c != "auto"],
                   help="train_gpt.py wrapper (default: the recipe's quant.code_compress)")
    p.add_argument("--reference-bpb", type=float, help="previous record's val_bpb (one-sample t-test)")
    p.add_argument("--reference-runs", nargs="+", help="previous record's run dirs (Welch t-test)")
    p.add_argument("--hardware", help="hardware string (default: from RUN/env.json)")
    p.add_argument("--base-pr", type=int, help="PR number this record builds on")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    add_json_flag(p)
    command(p, f"{R}:cmd_submit", "pgolf.submit.commands:human_submit")

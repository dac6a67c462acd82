"""`pgolf sweep`, `pgolf compare`, `pgolf submit`: seeds, side-by-side reports, record folders."""
from __future__ import annotations

import argparse

from pgolf.cli import add_config_flags, add_json_flag
from pgolf.errors import InputError


def cmd_sweep(args: argparse.Namespace):
    from pgolf.config import load_config
    from pgolf.submit import sweep

    seeds = sweep.parse_seeds(args.seeds)
    if args.emit_torchrun is not None:
        load_config(args.recipe, args.overrides + args.toggle)  # validate before printing launches
        specs = sweep.plan_sweep(seeds, args.out, args.overrides, args.toggle)
        return {"commands": sweep.torchrun_commands(specs, args.recipe, args.data, args.emit_torchrun, args.tokenizer)}
    result = sweep.run_sweep(args.recipe, seeds, args.out, args.data, args.overrides, args.toggle,
                             in_process=args.in_process, rerun=args.rerun, progress=args.progress,
                             tokenizer=args.tokenizer)
    return result, (1 if result.get("failed") else 0)


def _human_sweep(r: dict) -> str:
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


def cmd_compare(args: argparse.Namespace) -> dict:
    from pgolf.submit.report import compare_runs

    return compare_runs(args.runs, args.out)


def _human_compare(r: dict) -> str:
    return r["table"] + (f"\nwrote {r['png']}" if r.get("png") else "")


def cmd_submit(args: argparse.Namespace) -> dict:
    from pgolf.submit.record import write_record

    if args.reference_runs and len(args.reference_runs) < 2:
        raise InputError("--reference-runs: a Welch test needs at least 2 reference runs")
    return write_record(args.runs, args.out, name=args.name, author=args.author, github_id=args.github_id,
                        blurb=args.blurb, compress=args.compress, reference_bpb=args.reference_bpb,
                        reference_runs=args.reference_runs, hardware=args.hardware, base_pr=args.base_pr,
                        force=args.force)


def _human_submit(r: dict) -> str:
    lines = [f"record '{r['name']}' -> {r['out']}",
             f"val_bpb {r['val_bpb']:.5f} ± {r['val_bpb_std']:.5f} over seeds {r['seeds']}",
             f"bytes: total {r['bytes_total']:,} (code {r['bytes_code']:,})" if r.get("bytes_total") is not None
             else f"bytes: code {r['bytes_code']:,}"]
    if r.get("t_statistic") is not None:
        lines.append(f"t = {r['t_statistic']:.3f}, p = {r['p_value']:.3g}")
    lines.append("files: " + ", ".join(r["files"]))
    lines += [f"warning: {w}" for w in r.get("warnings", [])]
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a recipe over seeds (and an ablation toggle); writes DIR/sweep.json")
    add_config_flags(p, recipe_required=True)
    p.add_argument("--toggle", action="append", default=[], metavar="KEY=VALUE",
                   help="ablation override: also run every seed with it into DIR/toggle/ (repeatable)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--data", nargs="+", help="shard dir or corpus files (passed to pgolf run)")
    p.add_argument("--tokenizer", help="SentencePiece model (passed to pgolf run)")
    p.add_argument("--out", required=True, help="sweep directory")
    p.add_argument("--emit-torchrun", type=int, metavar="N", help="print torchrun launches (N procs) instead")
    p.add_argument("--in-process", action="store_true", help="run seeds in this process, not as subprocesses")
    p.add_argument("--rerun", action="store_true", help="rerun seeds that already have a summary.json")
    p.add_argument("--progress", action="store_true", help="show the runs' progress bars")
    add_json_flag(p)
    p.set_defaults(func=cmd_sweep, human=_human_sweep)

    p = sub.add_parser("compare", help="final metrics side by side and loss curves of several runs")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", help="PNG with train loss and val bpb curves of all runs")
    add_json_flag(p)
    p.set_defaults(func=cmd_compare, human=_human_compare)

    p = sub.add_parser("submit", help="challenge-style record folder from runs of one recipe")
    p.add_argument("runs", nargs="+", help="run directories (one per seed, same recipe)")
    p.add_argument("--out", required=True, help="record folder to create")
    p.add_argument("--name", help="record name (default: the recipe name)")
    p.add_argument("--author")
    p.add_argument("--github-id")
    p.add_argument("--blurb", default="")
    p.add_argument("--compress", choices=("none", "lzma", "brotli"),
                   help="train_gpt.py wrapper (default: the recipe's quant.code_compress)")
    p.add_argument("--reference-bpb", type=float, help="previous record's val_bpb (one-sample t-test)")
    p.add_argument("--reference-runs", nargs="+", help="previous record's run dirs (Welch t-test)")
    p.add_argument("--hardware", help="hardware string (default: from RUN/env.json)")
    p.add_argument("--base-pr", type=int, help="PR number this record builds on")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    add_json_flag(p)
    p.set_defaults(func=cmd_submit, human=_human_submit)

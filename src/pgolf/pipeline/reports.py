"""Sweeps (run every planned seed), `pgolf compare` and `pgolf submit` over run directories.

Seeds run one after another as `python -m pgolf.cli run` subprocesses (fresh memory and RNG state
per seed) or in-process; DIR/sweep.json collects the tables and tests (pgolf.submit.sweep).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from pgolf.atomic import atomic_write_json
from pgolf.config import load_config
from pgolf.errors import InputError
from pgolf.logs import log
from pgolf.pipeline.job import run_pipeline
from pgolf.pipeline.rundir import SUMMARY, load_run
from pgolf.submit import sweep
from pgolf.submit.record import write_record
from pgolf.submit.report import compare_runs

SWEEP_FILE = "sweep.json"


def run_one(spec: sweep.RunSpec, recipe: str, data: list[str] | None, in_process: bool = False,
            progress: bool = False, tokenizer: str | None = None) -> bool:
    """Run one seed; True when it left a summary.json."""
    if in_process:
        run_pipeline(load_config(recipe, spec.overrides), data, spec.out, tokenizer=tokenizer, progress=progress)
    else:
        cmd = [sys.executable, "-m", "pgolf.cli", "run", *spec.run_args(recipe, data, tokenizer)]
        cmd.append("--progress" if progress else "--no-progress")
        if subprocess.run(cmd).returncode != 0:
            return False
    return (spec.out / SUMMARY).is_file()


def collect_dir(out: Path, specs: list[sweep.RunSpec]) -> dict:
    arms: dict[str, list] = {"base": [], "toggle": []}
    missing = []
    for s in specs:
        if (s.out / SUMMARY).is_file():
            arms[s.arm].append(load_run(s.out))
        else:
            missing.append(str(s.out))
    return sweep.collect(out, arms, missing)


def run_sweep(recipe: str, seeds: list[int], out: str | Path, data: list[str] | None = None,
              overrides: list[str] | None = None, toggle: list[str] | None = None, in_process: bool = False,
              rerun: bool = False, progress: bool = False, tokenizer: str | None = None) -> dict:
    """Run (or reuse) every seed, then write DIR/sweep.json. Returns the sweep result."""
    out = Path(out)
    load_config(recipe, list(overrides or []) + list(toggle or []))  # fail fast on a bad recipe/override
    specs = sweep.plan_sweep(seeds, out, overrides, toggle)
    failed, reused = [], []
    for spec in specs:
        if not rerun and (spec.out / SUMMARY).is_file():
            reused.append(str(spec.out))
            continue
        log.info(f"[pgolf sweep] {spec.arm} seed {spec.seed} -> {spec.out}")
        if not run_one(spec, recipe, data, in_process, progress, tokenizer):
            failed.append(str(spec.out))
    if len(failed) == len(specs):
        result = {"dir": str(out), "failed": failed}
    else:
        result = collect_dir(out, specs) | {"recipe": recipe, "seeds": seeds, "overrides": list(overrides or []),
                                            "toggle_overrides": list(toggle or []), "failed": failed,
                                            "reused": reused}
    atomic_write_json(out / SWEEP_FILE, result)
    return result


def cmd_sweep(args: argparse.Namespace):
    seeds = sweep.parse_seeds(args.seeds)
    if args.emit_torchrun is not None:
        load_config(args.recipe, args.overrides + args.toggle)  # validate before printing launches
        specs = sweep.plan_sweep(seeds, args.out, args.overrides, args.toggle)
        return {"commands": sweep.torchrun_commands(specs, args.recipe, args.data, args.emit_torchrun, args.tokenizer)}
    result = run_sweep(args.recipe, seeds, args.out, args.data, args.overrides, args.toggle,
                       in_process=args.in_process, rerun=args.rerun, progress=args.progress, tokenizer=args.tokenizer)
    return result, (1 if result.get("failed") else 0)


def cmd_compare(args: argparse.Namespace) -> dict:
    return compare_runs([load_run(p) for p in args.runs], args.out)


def cmd_submit(args: argparse.Namespace) -> dict:
    if args.reference_runs and len(args.reference_runs) < 2:
        raise InputError("--reference-runs: a Welch test needs at least 2 reference runs")
    return write_record([load_run(p) for p in args.runs], args.out, name=args.name, author=args.author,
                        github_id=args.github_id, blurb=args.blurb, compress=args.compress,
                        reference_bpb=args.reference_bpb, reference_runs=[load_run(p) for p in args.reference_runs or []],
                        hardware=args.hardware, base_pr=args.base_pr, force=args.force)

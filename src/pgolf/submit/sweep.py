"""Seed sweeps and ablations: one recipe run per seed, then a table with statistics.

Layout: DIR/seed_<s>/ for the recipe, DIR/toggle/seed_<s>/ for the recipe plus the --toggle
overrides (an ablation), DIR/sweep.json with per-seed tables, mean/std and a Welch test of
toggle vs base. Runs go one after another as `python -m pgolf.cli run` subprocesses (fresh
memory and RNG state per seed) or in-process; `torchrun_commands` prints the launches instead.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pgolf.errors import InputError
from pgolf.submit import stats
from pgolf.submit.report import SUMMARY_FILE, load_run

SWEEP_FILE = "sweep.json"


@dataclass
class RunSpec:
    seed: int
    arm: str  # "base" or "toggle"
    out: Path
    overrides: list[str]  # recipe overrides, seed last

    def run_args(self, recipe: str, data: list[str] | None, tokenizer: str | None = None) -> list[str]:
        """Arguments after `... run` (shared by the subprocess and torchrun launches)."""
        args = ["--recipe", recipe]
        if data:
            args += ["--data", *data]
        if tokenizer:
            args += ["--tokenizer", tokenizer]
        args += ["--out", str(self.out)]
        for o in self.overrides:
            args += ["--set", o]
        return args


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise InputError(f"--seeds: expected comma-separated integers like 1,2,3, got '{text}'") from None
    if not seeds:
        raise InputError("--seeds: no seeds given")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds: duplicate seeds in {seeds}")
    return seeds


def _check_override(o: str, flag: str) -> None:
    if "=" not in o or not o.split("=", 1)[0].strip():
        raise InputError(f"{flag} '{o}': expected key=value, e.g. model.num_layers=11")
    if o.split("=", 1)[0].strip() == "train.seed":
        raise InputError(f"{flag} '{o}': the seed comes from --seeds")


def plan_sweep(seeds: list[int], out: str | Path, overrides: list[str] | None = None,
               toggle: list[str] | None = None) -> list[RunSpec]:
    """The runs of a sweep: every seed for the base arm, then every seed with the toggle applied."""
    out = Path(out)
    overrides, toggle = list(overrides or []), list(toggle or [])
    for o in overrides:
        _check_override(o, "--set")
    for o in toggle:
        _check_override(o, "--toggle")
    specs = [RunSpec(s, "base", out / f"seed_{s}", overrides + [f"train.seed={s}"]) for s in seeds]
    if toggle:
        specs += [RunSpec(s, "toggle", out / "toggle" / f"seed_{s}", overrides + toggle + [f"train.seed={s}"])
                  for s in seeds]
    return specs


def torchrun_commands(specs: list[RunSpec], recipe: str, data: list[str] | None, nproc: int,
                      tokenizer: str | None = None) -> list[str]:
    """Shell lines launching each run with torchrun on one node."""
    if nproc < 1:
        raise InputError(f"--emit-torchrun: expected a process count >= 1, got {nproc}")
    head = ["torchrun", "--standalone", f"--nproc_per_node={nproc}", "-m", "pgolf.cli", "run"]
    return [shlex.join(head + s.run_args(recipe, data, tokenizer)) for s in specs]


def run_one(spec: RunSpec, recipe: str, data: list[str] | None, in_process: bool = False,
            progress: bool = False, tokenizer: str | None = None) -> bool:
    """Run one seed; True when it left a summary.json."""
    spec.out.mkdir(parents=True, exist_ok=True)
    if in_process:
        from pgolf.config import load_config
        from pgolf.pipeline import run_pipeline

        run_pipeline(load_config(recipe, spec.overrides), data, spec.out, tokenizer=tokenizer, progress=progress)
    else:
        cmd = [sys.executable, "-m", "pgolf.cli", "run", *spec.run_args(recipe, data, tokenizer)]
        if not progress:
            cmd.append("--no-progress")
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            return False
    return (spec.out / SUMMARY_FILE).is_file()


def _arm_stats(runs: list, tpb: float | None) -> dict:
    summaries = [r.summary for r in runs]
    out = stats.seed_table(summaries)
    out["runs"] = [str(r.path) for r in runs]
    if tpb is not None:
        out["threshold_bpb"] = stats.threshold_bpb(tpb)
    return out


def collect(out: str | Path, specs: list[RunSpec] | None = None) -> dict:
    """Read every seed_*/summary.json under `out` (and toggle/), compute the tables and tests."""
    out = Path(out)
    arms: dict[str, list] = {"base": [], "toggle": []}
    if specs is None:
        dirs = [("base", p) for p in sorted(out.glob("seed_*"))]
        dirs += [("toggle", p) for p in sorted((out / "toggle").glob("seed_*"))]
    else:
        dirs = [(s.arm, s.out) for s in specs]
    missing = []
    for arm, d in dirs:
        if (d / SUMMARY_FILE).is_file():
            arms[arm].append(load_run(d))
        else:
            missing.append(str(d))
    if not arms["base"] and not arms["toggle"]:
        raise InputError(f"{out}: no seed_*/summary.json found")
    all_summaries = [r.summary for a in arms.values() for r in a]
    tpb = stats.mean_tokens_per_byte(all_summaries)
    result: dict = {"dir": str(out), "tokens_per_byte": tpb, "missing": missing}
    for arm, runs in arms.items():
        if runs:
            result[arm] = _arm_stats(runs, tpb)
    b = [r.summary["val_bpb"] for r in arms["base"]]
    t = [r.summary["val_bpb"] for r in arms["toggle"]]
    if len(b) >= 2 and len(t) >= 2:
        result["toggle_vs_base"] = stats.welch_test(t, b, tpb)
    return result


def write_sweep_json(out: str | Path, result: dict) -> Path:
    from pgolf.model.io import atomic_write_text

    path = Path(out) / SWEEP_FILE
    atomic_write_text(path, json.dumps(result, indent=2, sort_keys=True))
    return path


def run_sweep(recipe: str, seeds: list[int], out: str | Path, data: list[str] | None = None,
              overrides: list[str] | None = None, toggle: list[str] | None = None, in_process: bool = False,
              rerun: bool = False, progress: bool = False, tokenizer: str | None = None) -> dict:
    """Run (or reuse) every seed, then write DIR/sweep.json. Returns the sweep result."""
    from pgolf.config import load_config

    load_config(recipe, list(overrides or []) + list(toggle or []))  # fail fast on a bad recipe/override
    specs = plan_sweep(seeds, out, overrides, toggle)
    failed, reused = [], []
    for spec in specs:
        if not rerun and (spec.out / SUMMARY_FILE).is_file():
            reused.append(str(spec.out))
            continue
        print(f"[pgolf sweep] {spec.arm} seed {spec.seed} -> {spec.out}", file=sys.stderr, flush=True)
        if not run_one(spec, recipe, data, in_process, progress, tokenizer):
            failed.append(str(spec.out))
    if len(failed) == len(specs):
        result = {"dir": str(out), "failed": failed}
        write_sweep_json(out, result)
        return result
    result = collect(out, specs)
    result.update(recipe=recipe, seeds=seeds, overrides=list(overrides or []),
                  toggle_overrides=list(toggle or []),
                  failed=failed, reused=reused)
    write_sweep_json(out, result)
    return result

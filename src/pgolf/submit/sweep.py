"""Seed sweeps and ablations, planned: which runs, where, with which overrides; and the statistics
over the finished runs.

Layout: DIR/seed_<s>/ for the recipe, DIR/toggle/seed_<s>/ for the recipe plus the --toggle
overrides (an ablation), DIR/sweep.json with per-seed tables, mean/std and a Welch test of toggle vs
base. pgolf.pipeline.sweeps runs the plan; `torchrun_commands` prints the launches instead.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from pgolf.errors import InputError
from pgolf.submit import stats
from pgolf.submit.report import Run


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


def _arm_stats(runs: list, tpb: float | None) -> dict:
    summaries = [r.summary for r in runs]
    out = stats.seed_table(summaries)
    out["runs"] = [str(r.path) for r in runs]
    if tpb is not None:
        out["threshold_bpb"] = stats.threshold_bpb(tpb)
    return out


def collect(out: str | Path, arms: dict[str, list[Run]], missing: list[str]) -> dict:
    """The tables and tests over the finished runs of each arm ("base", "toggle")."""
    if not arms.get("base") and not arms.get("toggle"):
        raise InputError(f"{out}: no finished seed runs (seed_*/summary.json) found")
    all_summaries = [r.summary for a in arms.values() for r in a]
    tpb = stats.mean_tokens_per_byte(all_summaries)
    result: dict = {"dir": str(out), "tokens_per_byte": tpb, "missing": missing}
    for arm, runs in arms.items():
        if runs:
            result[arm] = _arm_stats(runs, tpb)
    b = [r.summary["val_bpb"] for r in arms.get("base", [])]
    t = [r.summary["val_bpb"] for r in arms.get("toggle", [])]
    if len(b) >= 2 and len(t) >= 2:
        result["toggle_vs_base"] = stats.welch_test(t, b, tpb)
    return result

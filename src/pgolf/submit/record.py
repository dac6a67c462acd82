"""Challenge-style record folder from finished runs of one recipe (one run per seed).

DIR/ holds README.md (results per seed, mean/std, significance, configuration, methods,
compliance, what the counted script leaves out), submission.json (the fields records use),
train_seed<s>.log per seed (everything the run printed, to the scored val_bpb), requirements.txt
(exactly the bundle's third-party imports, pinned) and train_gpt.py (pgolf.submit.bundle). The folder
is built in a temporary directory next to DIR and renamed into place.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path

import torch

from pgolf.atomic import atomic_dir
from pgolf.config import ARTIFACT_LIMIT, Config
from pgolf.errors import InputError
from pgolf.model.switches import active
from pgolf.submit import stats
from pgolf.submit.bundle import bundle_info, requirements
from pgolf.submit.report import Run, flatten, step_ms

TRACK = "10min_16mb"
TIME_LIMIT_S = 600.0
LOCAL_KEYS = (("train", "seed"), ("data", "path"), ("data", "tokenizer"))  # may differ between seeds


def _shared_config(run: Run) -> dict:
    if run.config is None:
        raise InputError(f"{run.path}: config.json not found (is this a pgolf run directory?)")
    d = json.loads(json.dumps(run.config))
    for section, key in LOCAL_KEYS:
        d.get(section, {}).pop(key, None)
    return d


def check_same_recipe(runs: list[Run]) -> Config:
    """All runs must share one config except seed and data paths; returns the first run's Config."""
    if not runs:
        raise InputError("submit: give at least one run directory")
    ref = flatten(_shared_config(runs[0]))
    for r in runs[1:]:
        other = flatten(_shared_config(r))
        diff = sorted(k for k in ref.keys() | other.keys() if ref.get(k) != other.get(k))
        if diff:
            shown = ", ".join(f"{k} ({ref.get(k)!r} vs {other.get(k)!r})" for k in diff[:6])
            raise InputError(f"{r.path}: config differs from {runs[0].path} in {shown}; "
                             "a record's runs must share one recipe (only the seed may change)")
    seeds = [r.summary.get("seed", (r.config or {}).get("train", {}).get("seed")) for r in runs]
    if len(set(seeds)) != len(seeds):
        raise InputError(f"submit: runs repeat a seed ({seeds}); give one run per seed")
    return Config.from_dict(runs[0].config)


def switches(cfg: Config) -> list[tuple[str, object]]:
    """Config fields that differ from pgolf's defaults (what the recipe turns on), minus local paths."""
    base = flatten(Config().to_dict())
    mine = flatten(cfg.to_dict())
    skip = {"name", "description", "data.path", "data.tokenizer", "train.seed"}
    return [(k, v) for k, v in sorted(mine.items()) if k not in skip and base.get(k) != v]


def methods(cfg: Config) -> list[str]:
    """One line per part of the recipe, in words (model switches from pgolf.model.switches)."""
    m, o, t, q, e = cfg.model, cfg.optim, cfg.train, cfg.quant, cfg.eval
    arch = (f"{m.num_layers} layers, d={m.model_dim}, {m.num_heads} heads / {m.num_kv_heads} KV heads, "
            f"MLP {m.mlp_mult:g}x {m.activation}, vocab {m.vocab_size:,}, "
            f"{'tied' if m.tie_embeddings else 'untied'} embeddings, logit softcap {m.logit_softcap:g}")
    extras = active(m)
    opt = (f"Muon (lr {o.matrix_lr:g}, momentum {o.muon_momentum:g}, NS {o.muon_ns_steps} {o.muon_ns_coeffs}"
           f"{', MuonEq-R' if o.muon_eq_r else ''}, wd {o.muon_wd:g}) for matrices; Adam for embeddings "
           f"(lr {o.embed_lr:g}) and scalars (lr {o.scalar_lr:g})")
    avg = (f"EMA {o.ema_decay:g}" if o.ema_decay > 0 else f"SWA every {o.swa_every}" if o.swa_every > 0
           else "no weight averaging")
    budget = f"{t.max_seconds:g} s / {t.max_steps:,} steps" if t.max_seconds > 0 else f"{t.max_steps:,} steps"
    train = (f"{t.batch_tokens:,} tokens/step at seq {t.seq_len:,}, budget {budget}, "
             + (f"warmdown over the last {t.warmdown_frac:.0%} of the budget" if t.warmdown_frac
                else f"warmdown {t.warmdown_iters:,} iters"))
    bits = ", ".join(f"{g.pattern}: {g.bits}-bit {g.clip}{' GPTQ' if g.gptq else ''}" for g in q.groups)
    quant = (f"{bits}; codec {q.codec}; QAT {q.qat}" + (f"; LQER rank {q.lqer_rank}" if q.lqer_rank else "")
             + f"; code wrapper {q.code_compress}")
    ev = f"{e.method}" + (f" (stride {e.stride})" if e.method == "sliding" else "") + \
         (", doc-isolated" if e.doc_isolated else "")
    return [f"Model: {arch}" + (f"; {', '.join(extras)}" if extras else ""), f"Optimizer: {opt}; {avg}",
            f"Training: {train}", f"Quantization: {quant}", f"Evaluation: {ev}"]


def _hardware(run: Run) -> str | None:
    if run.summary.get("hardware"):
        return str(run.summary["hardware"])
    e = run.env or {}
    name = e.get("device_name") or e.get("device")
    return f"{e.get('world_size', 1)}x {name}" if name else None


def _audit(runs: list[Run]) -> bool | None:
    """True if every run has a passing audit.json, False if any failed, None if none/some missing."""
    results = [None if r.audit is None else bool(r.audit.get("passed", False)) for r in runs]
    if any(x is False for x in results):
        return False
    return True if results and all(x is True for x in results) else None


def _all_le(values: list, limit: float) -> bool | None:
    nums = [v for v in values if isinstance(v, (int, float))]
    if len(nums) != len(values):
        return None
    return all(v <= limit for v in nums)


def build_submission(runs: list[Run], cfg: Config, code_len: int, *, name: str, author: str | None = None,
                     github_id: str | None = None, blurb: str = "", date: str | None = None,
                     hardware: str | None = None, base_pr: int | None = None,
                     reference_bpb: float | None = None, reference_runs: list[Run] | None = None) -> dict:
    """The submission.json dict (plus a `significance` block) for runs of one recipe."""
    summaries = [r.summary for r in runs]
    order = sorted(range(len(runs)), key=lambda i: summaries[i].get("seed", i))
    runs, summaries = [runs[i] for i in order], [summaries[i] for i in order]
    bpbs = [s["val_bpb"] for s in summaries]
    losses = [s.get("val_loss") for s in summaries]
    mean_bpb, std_bpb = stats.mean_std(bpbs)
    mean_loss = stats.mean_std(losses)[0] if all(isinstance(v, (int, float)) for v in losses) else None
    seed_results = {}
    for s in summaries:
        seed_results[str(s.get("seed"))] = {
            "val_loss": s.get("val_loss"), "val_bpb": s["val_bpb"], "artifact_bytes": s.get("artifact_bytes"),
            "steps": s.get("steps"), "step_avg_ms": step_ms(s), "eval_time_s": s.get("eval_seconds")}
    # The artifact this folder describes: each run's model bytes + this folder's train_gpt.py.
    models = [s.get("model_bytes") for s in summaries]
    if all(isinstance(v, int) for v in models):
        bytes_total = max(models) + code_len
    else:
        arts = [s.get("artifact_bytes") for s in summaries if isinstance(s.get("artifact_bytes"), int)]
        bytes_total = max(arts) if arts else None
    tpb = stats.mean_tokens_per_byte(summaries)
    significance: dict = {"tokens_per_byte": tpb, "threshold_bpb": stats.threshold_bpb(tpb)}
    if reference_bpb is not None:
        significance["one_sample"] = stats.one_sample_test(bpbs, reference_bpb, tpb)
    if reference_runs:
        significance["welch"] = stats.welch_test(bpbs, [r.summary["val_bpb"] for r in reference_runs], tpb)
    main_test = significance.get("one_sample") or significance.get("welch")
    fulls = [s.get("eval_full_split") for s in summaries]
    full_val = None if any(x is None for x in fulls) else all(fulls)
    hw = hardware or next((h for h in map(_hardware, runs) if h), None)
    return {
        "author": author, "github_id": github_id, "name": name, "blurb": blurb,
        "date": date or _dt.date.today().isoformat(), "track": TRACK,
        "val_loss": mean_loss, "val_bpb": mean_bpb, "val_bpb_std": std_bpb,
        "seeds": [s.get("seed") for s in summaries], "seed_results": seed_results,
        "bytes_total": bytes_total, "bytes_code": code_len, "hardware": hw,
        "pytorch_version": next((s["torch_version"] for s in summaries if s.get("torch_version")), torch.__version__),
        "compliance": {
            "train_under_600s": _all_le([s.get("train_seconds") for s in summaries], TIME_LIMIT_S),
            "eval_under_600s": _all_le([s.get("eval_seconds") for s in summaries], TIME_LIMIT_S),
            "artifact_under_16mb": None if bytes_total is None else bytes_total < ARTIFACT_LIMIT,
            "audit_passed": _audit(runs),
            "full_validation": full_val,
        },
        "base_pr": base_pr,
        "t_statistic": main_test["t_statistic"] if main_test else None,
        "p_value": main_test["p_value"] if main_test else None,
        "recipe": cfg.name, "eval_method": summaries[0].get("eval_method"),
        "significance": significance,
    }


def _num(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render_readme(sub: dict, runs: list[Run], cfg: Config) -> str:
    by_seed = {str(r.summary.get("seed")): r.summary for r in runs}
    lines = [f"# {sub['name']}", ""]
    if sub.get("blurb"):
        lines += [sub["blurb"], ""]
    who = ", ".join(x for x in (sub.get("author"), f"@{sub['github_id']}" if sub.get("github_id") else None) if x)
    n = len(sub["seeds"])
    headline = (f"**val_bpb {sub['val_bpb']:.5f} ± {sub['val_bpb_std']:.5f}** (mean ± sample std over {n} seeds)"
                if n > 1 else f"**val_bpb {sub['val_bpb']:.5f}** (1 seed: no spread to report)")
    lines += [headline + f" · track `{sub['track']}` · {sub['date']}" + (f" · {who}" if who else ""),
              "", "## Results", "",
              "| seed | val_loss | val_bpb | pre-quant bpb | artifact bytes | steps | ms/step | train s | eval s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for seed, res in sub["seed_results"].items():
        s = by_seed.get(seed, {})
        lines.append(f"| {seed} | {_num(res['val_loss'], '.5f')} | {res['val_bpb']:.5f} | "
                     f"{_num(s.get('val_bpb_prequant'), '.5f')} | {_num(res['artifact_bytes'], ',')} | "
                     f"{_num(res['steps'], ',')} | {_num(res['step_avg_ms'], '.1f')} | "
                     f"{_num(s.get('train_seconds'), '.1f')} | {_num(res['eval_time_s'], '.1f')} |")
    if n > 1:
        lines.append(f"| **mean** | {_num(sub['val_loss'], '.5f')} | **{sub['val_bpb']:.5f}** | | | | | | |")
        lines.append(f"| std | | {sub['val_bpb_std']:.5f} | | | | | | |")
    sig = sub["significance"]
    lines += ["", "## Significance", "",
              f"Record threshold 0.005 nats/token = {sig['threshold_bpb']:.5f} bpb at this tokenizer "
              f"({sig['tokens_per_byte']:.4f} tokens/byte)."]
    if "one_sample" in sig:
        t = sig["one_sample"]
        lines.append(f"One-sided one-sample t-test against {t['reference_bpb']:.5f} - threshold = "
                     f"{t['target_bpb']:.5f}: t = {t['t_statistic']:.3f}, p = {t['p_value']:.2e} "
                     f"({'significant' if t['significant'] else 'not significant'} at p < 0.01).")
    if "welch" in sig:
        t = sig["welch"]
        lines.append(f"Welch's t-test against {t['n_reference']} reference runs (mean {t['reference_mean']:.5f}): "
                     f"delta {t['delta_bpb']:+.5f} bpb, t = {t['t_statistic']:.3f}, p = {t['p_value']:.2e} "
                     f"({'significant' if t['significant'] else 'not significant'} at p < 0.01).")
    if "one_sample" not in sig and "welch" not in sig:
        lines.append("No reference given (use --reference-bpb or --reference-runs).")
    lines += ["", "## Configuration", "", f"Recipe `{cfg.name}`" + (f": {cfg.description}" if cfg.description else "")
              + ". Fields that differ from pgolf's defaults:", ""]
    lines += [f"- `{k} = {json.dumps(v)}`" for k, v in switches(cfg)] or ["- (none)"]
    lines += ["", "## Methods", ""] + [f"- {m}" for m in methods(cfg)]
    c = sub["compliance"]
    flag = {True: "yes", False: "**NO**", None: "unknown"}
    lines += ["", "## Compliance", "",
              f"- Training under 600 s: {flag[c['train_under_600s']]}",
              f"- Evaluation under 600 s: {flag[c['eval_under_600s']]}",
              f"- Artifact under 16,000,000 bytes: {flag[c['artifact_under_16mb']]} "
              f"({_num(sub['bytes_total'], ',')} bytes total, code {sub['bytes_code']:,})",
              f"- Legality audit (`pgolf audit`) passed: {flag[c['audit_passed']]}",
              f"- Scored on the whole validation split of the run's data: {flag[c['full_validation']]}",
              f"- Hardware: {sub.get('hardware') or 'unknown'}; PyTorch {sub['pytorch_version']}",
              "", "## Reproduce", "", "```",
              "pip install -r requirements.txt"]
    launch = reproduce_command(runs)
    for seed in sub["seeds"]:
        lines.append(f"{launch} train_gpt.py --data DATA_DIR --tokenizer TOKENIZER --set train.seed={seed} "
                     f"--out runs/seed_{seed}")
    lines += ["```", "", "`train_gpt.py` is self-contained (generated by pgolf's bundler from the recipe's code "
              "path): it trains, quantizes and packs, reloads the artifact and scores it with the recipe's "
              f"eval method ({cfg.eval.method}). It leaves out what the score does not need: the legality "
              "audit, plots, checkpoints and resume, corpus building, the dataset downloader and the CLI "
              "(all in pgolf itself), toolkit diagnostics (the pack's per-tensor tables, the evaluation's "
              "normalization spot check, which the audit makes from outside) and the checks against "
              "programmer error that its frozen config makes dead (errors in its inputs are still "
              "reported). `train_seed<S>.log` holds everything each run printed, through the scored "
              "val_bpb, the artifact bytes and the eval time."]
    return "\n".join(lines) + "\n"


def reproduce_command(runs: list[Run]) -> str:
    """torchrun with the runs' GPU count, or plain python for CPU runs."""
    env = runs[0].env or {}
    world = int(env.get("world_size") or runs[0].summary.get("world_size") or 1)
    on_gpu = str(env.get("device", runs[0].summary.get("device", ""))).startswith("cuda")
    if on_gpu or world > 1:
        return f"torchrun --standalone --nproc_per_node={world}"
    return "python"


def check_runs(runs: list[Run]) -> None:
    """Each run must have a post-quant score of the artifact that is on disk now."""
    for r in runs:
        s = r.summary
        if s.get("eval_source") != "artifact" or not isinstance(s.get("val_bpb"), (int, float)):
            raise InputError(f"{r.path}: summary.json has no post-quant score of the artifact (run `pgolf eval "
                             f"{r.path} --record` on the packed artifact first)")
        if r.artifact_sha256 is None:
            raise InputError(f"{r.path}: no artifact.pgolf (pack the run first)")
        if s.get("artifact_sha256") != r.artifact_sha256:
            raise InputError(f"{r.path}: summary.json describes another artifact (sha256 "
                             f"{str(s.get('artifact_sha256'))[:12]}... vs {r.artifact_sha256[:12]}... on disk); "
                             "re-evaluate the run with `pgolf eval RUN --record`")
        if r.log is None or not r.log.is_file():
            raise InputError(f"{r.path}: no train.log (a record ships the training log of every seed)")


def write_record(runs: list[Run], out: str | os.PathLike, *, name: str | None = None,
                 author: str | None = None, github_id: str | None = None, blurb: str = "",
                 compress: str | None = None, reference_bpb: float | None = None,
                 reference_runs: list[Run] | None = None, hardware: str | None = None,
                 base_pr: int | None = None, date: str | None = None, force: bool = False) -> dict:
    """Build the record folder at `out` from loaded runs. Returns submission.json's dict plus `out`
    and `files`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise InputError(f"{out}: exists and is not empty (pass --force to replace it)")
    cfg = check_same_recipe(runs)
    check_runs(runs)
    compress = compress or cfg.quant.code_compress
    info = bundle_info(cfg, compress)
    sub = build_submission(runs, cfg, info.code_bytes, name=name or cfg.name, author=author, github_id=github_id,
                           blurb=blurb, date=date, hardware=hardware, base_pr=base_pr,
                           reference_bpb=reference_bpb, reference_runs=reference_runs or [])
    with atomic_dir(out) as tmp:
        (tmp / "train_gpt.py").write_bytes(info.data())
        (tmp / "submission.json").write_text(json.dumps(sub, indent=2) + "\n")
        (tmp / "README.md").write_text(render_readme(sub, runs, cfg))
        (tmp / "requirements.txt").write_text("\n".join(requirements(info)) + "\n")
        for r in runs:
            shutil.copyfile(r.log, tmp / f"train_seed{r.summary.get('seed')}.log")
    warnings = []
    if len(runs) < 3:
        warnings.append(f"only {len(runs)} seed{'s' if len(runs) != 1 else ''}: records show at least 3")
    for key, ok in sub["compliance"].items():
        if ok is False:
            warnings.append(f"compliance: {key} is false")
    return sub | {"out": str(out), "files": sorted(p.name for p in out.iterdir()), "warnings": warnings}

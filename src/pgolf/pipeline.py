"""The main job: data -> train -> pack -> evaluate the artifact -> RUN/summary.json.

`run_pipeline` is what `pgolf run` and the bundled single-file train_gpt.py both call, so a record's
script and the toolkit run the same code. Under torchrun every rank calls it; data preparation and
packing happen on rank 0 between barriers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from pgolf.config import Config, ConfigError, apply_overrides, load_config
from pgolf.errors import InputError, WorkError



def _is_rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _log(msg: str) -> None:
    if _is_rank0():
        print(f"[pgolf] {msg}", file=sys.stderr, flush=True)


def _has_shards(d: Path, split: str) -> bool:
    return d.is_dir() and any(d.glob(f"fineweb_{split}_*.bin"))


def _link_split(src: Path, dest: Path, split: str) -> None:
    for p in sorted(src.glob(f"fineweb_{split}_*.bin")):
        target = dest / p.name
        if target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to(p.resolve())


def _build(inputs: list[str], tokenizer: str | None, out: Path, val_docs: int, what: str, progress: bool) -> Path:
    from pgolf.data.build import build_shards

    for item in inputs:
        if not (Path(item).is_file() or any(ch in item for ch in "*?[")):
            raise InputError(f"{what} {item}: not a shard directory or a corpus file")
    if not tokenizer:
        raise InputError(f"{what} is a text corpus: pass --tokenizer MODEL (or set data.tokenizer)")
    build_shards(inputs, tokenizer, out, val_docs=val_docs, progress=progress)
    return out


def _shard_dir(items: list[str] | None) -> Path | None:
    """The directory if `items` names exactly one directory, else None (corpus files)."""
    return Path(items[0]) if items and len(items) == 1 and Path(items[0]).is_dir() else None


def resolve_data(cfg: Config, data: list[str] | None, val_data: list[str] | None, tokenizer: str | None,
                 out_dir: Path, val_docs: int = 50_000, progress: bool = True) -> tuple[Path, str | None]:
    """Turn --data / --val-data into one shard directory; returns (dir, tokenizer path).

    data: a shard dir, corpus files (tokenized into RUN/data), or None for the published export.
    val_data: an optional separate validation source: a shard dir or corpus files (all docs are val).
    A single shard dir with both splits is used in place; otherwise RUN/data links the parts.
    """
    from pgolf.data.build import manifest_tokenizer

    tok = tokenizer or cfg.data.tokenizer or None
    if not data:
        try:
            from pgolf.data.hub import download
        except ModuleNotFoundError:  # a bundled train_gpt.py carries no downloader
            raise InputError("--data: required here (a shard dir with fineweb_train_*/fineweb_val_*.bin; "
                             "fetch the published export with `pgolf data download`)") from None
        variant = f"sp{cfg.model.vocab_size}"
        dest = Path("data") / variant
        if _is_rank0():
            _log(f"no --data: downloading the published {variant} export (val + 1 train shard) to {dest}")
            download(variant, dest, train_shards=1, progress=progress)
        _barrier()
        data = [str(dest)]
    src = _shard_dir(data)
    if src is not None:
        if not _has_shards(src, "train"):
            raise InputError(f"{src}: no fineweb_train_*.bin shards (build them with `pgolf data build`)")
        if tok is None and manifest_tokenizer(src) is not None:
            tok = str(manifest_tokenizer(src))
        if not val_data:
            if not _has_shards(src, "val"):
                raise InputError(f"{src}: no fineweb_val_*.bin shards; pass --val-data")
            return src, tok
    combined = out_dir / "data"
    if _is_rank0():
        combined.mkdir(parents=True, exist_ok=True)
        if src is None:  # corpus: all docs train when a separate val source is given
            src = _build(data, tok, combined / "build", 0 if val_data else val_docs, "--data", progress)
        _link_split(src, combined, "train")
        vsrc = _shard_dir(val_data) if val_data else src
        if vsrc is not None and not _has_shards(vsrc, "val"):
            raise InputError(f"{vsrc}: no fineweb_val_*.bin shards")
        if vsrc is None:
            vsrc = _build(val_data, tok, combined / "val_build", 10**15, "--val-data", progress)
        _link_split(vsrc, combined, "val")
    _barrier()
    if not _has_shards(combined, "val") or not _has_shards(combined, "train"):
        raise InputError(f"{combined}: data preparation left no train or no val shards")
    return combined, tok


def run_pipeline(cfg: Config, data: list[str] | None, out_dir: str | os.PathLike, *,
                 val_data: list[str] | None = None, tokenizer: str | None = None, val_docs: int = 50_000,
                 resume: bool = False, progress: bool = True) -> dict:
    """Train, pack and evaluate; returns the final summary (also RUN/summary.json)."""
    from pgolf.data.shards import load_split
    from pgolf.data.tokenizer import byte_tables, load_tokenizer
    from pgolf.eval.api import eval_token_cap, evaluate
    from pgolf.atomic import atomic_write_json, read_json_object
    from pgolf.model.io import load_model
    from pgolf.quant.pack import pack_run
    from pgolf.train.trainer import train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_dir, tok = resolve_data(cfg, data, val_data, tokenizer, out, val_docs, progress)
    if not tok:
        raise InputError(f"{data_dir}: no tokenizer known (pass --tokenizer; val_bpb needs its byte tables)")
    cfg.data.path, cfg.data.tokenizer = str(data_dir), str(tok)

    summary = train(cfg, data_dir, out, resume=resume, progress=progress)

    if _is_rank0():
        pack = pack_run(out)
        _log(f"artifact {pack['artifact_path']}: {pack['total_bytes']:,} bytes "
             f"(model {pack['model_bytes']:,} + code {pack['code_bytes']:,})")
    _barrier()

    # Roundtrip: the artifact alone rebuilds the model that is scored.
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    device = _eval_device(cfg)
    model, acfg, _ = load_model(out / "artifact.pgolf")
    model.to(device)
    cap, subset_note = eval_token_cap(cfg, device)
    tables = byte_tables(load_tokenizer(tok))
    tokens = load_split(data_dir, "val", cfg.model.vocab_size, max_tokens=cap)
    if cap and len(tokens) < cap:
        subset_note = f"all {len(tokens):,} validation tokens in {data_dir} (fewer than the cap of {cap:,})"
    _log(f"evaluating the artifact ({cfg.eval.method}) on {subset_note}")
    t0 = time.time()
    result = evaluate(model, tokens, tables, acfg, device, rank=rank, world=world)
    eval_seconds = time.time() - t0
    # The quantization gap compares like with like: plain eval, same tokens, before and after.
    plain = result if result.get("method", acfg.eval.method) == "plain" else \
        evaluate(model, tokens, tables, acfg, device, method="plain", rank=rank, world=world)

    audit = _audit(model, tokens, tables, acfg, device, out)
    summary_path = out / "summary.json"
    summary = read_json_object(summary_path, missing=dict(summary))
    summary.update({
        "val_loss": result["val_loss"], "val_bpb": result["val_bpb"],
        "eval_method": result.get("method", cfg.eval.method), "eval_seconds": eval_seconds,
        "eval_tokens": result["tokens"], "eval_bytes": result["bytes"], "eval_subset": subset_note,
        "val_bpb_postquant_plain": plain["val_bpb"],
        "audit_passed": None if audit is None else audit["passed"],
        "quant_gap": (plain["val_bpb"] - summary["val_bpb_prequant"]
                      if summary.get("val_bpb_prequant") is not None else None),
    })
    if _is_rank0():
        atomic_write_json(summary_path, summary)
        _log(f"val_bpb {result['val_bpb']:.4f} (pre-quant {summary.get('val_bpb_prequant')}) on {subset_note}; "
             f"artifact {summary.get('artifact_bytes')} bytes")
    return summary


def _audit(model, tokens, tables, cfg: Config, device: torch.device, out: Path) -> dict | None:
    """The automatic legality audit of the run's own eval method on the first val tokens.

    Every rank runs the same audit as a world of one (process-group reductions then see identical
    work on all ranks); rank 0 records RUN/audit.json. A failure stops the run (exit 1)."""
    from pgolf.eval.api import record_audit
    from pgolf.eval.audit import audit_model

    n = cfg.eval.audit_tokens
    if not n:
        return None
    report = audit_model(model, tokens[:n], tables, cfg, cfg.eval.method, device)
    if _is_rank0():
        record_audit(out, report)
        failed = [k for k, c in report["checks"].items() if c["passed"] is False]
        _log(f"legality audit of {cfg.eval.method} on {report['targets']:,} targets: "
             + ("passed" if report["passed"] else f"FAILED ({', '.join(failed)})"))
    if not report["passed"]:
        raise WorkError(f"legality audit of eval method {cfg.eval.method} failed; see {out / 'audit.json'}")
    return report


def _eval_device(cfg: Config) -> torch.device:
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))  # torchrun's launcher contract
    return torch.device("cuda", local)


# -- entry point shared by `pgolf run` and the bundled train_gpt.py ------------------------------------

def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="recipe name or .toml path")
    p.add_argument("--config-json", help="a resolved config (JSON file or inline JSON) instead of a recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by dotted path (repeatable)")
    p.add_argument("--data", nargs="+", help="shard dir or corpus files; default: download the published export")
    p.add_argument("--val-data", nargs="+", help="separate validation source: shard dir or corpus files")
    p.add_argument("--tokenizer", help="SentencePiece model (needed for corpora and val_bpb)")
    p.add_argument("--val-docs", type=int, default=50_000, help="docs held out as val when building from a corpus")
    p.add_argument("--out", default="runs/run", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> Config:
    if args.config_json:
        text = args.config_json
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise InputError(f"--config-json {text}: not a file or inline JSON")
            text = path.read_text()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"--config-json: invalid JSON ({e})") from None
        return Config.from_dict(apply_overrides(d, args.overrides))
    if not args.recipe:
        raise ConfigError("--recipe: required (or --config-json)")
    return load_config(args.recipe, args.overrides)


def run_from_args(args: argparse.Namespace) -> dict:
    from pgolf.compat import apply_env_compat

    args.overrides = apply_env_compat(args.overrides)
    cfg = config_from_args(args)
    s = run_pipeline(cfg, args.data, args.out, val_data=args.val_data, tokenizer=args.tokenizer,
                     val_docs=args.val_docs, resume=args.resume, progress=not args.no_progress)
    keys = ("recipe", "seed", "params", "steps", "train_seconds", "val_loss", "val_bpb", "val_bpb_prequant",
            "quant_gap", "artifact_bytes", "model_bytes", "code_bytes", "eval_method", "eval_seconds",
            "eval_subset")
    return {k: s.get(k) for k in keys} | {"run_dir": str(args.out)}


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (the bundled script): same flags as `pgolf run`, JSON on stdout."""
    p = argparse.ArgumentParser(prog="train_gpt.py", description="pgolf run: data -> train -> pack -> eval")
    add_run_args(p)
    args = p.parse_args(argv)
    try:
        result = run_from_args(args)
    except (InputError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WorkError as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    if _is_rank0():
        print(json.dumps(result, sort_keys=True))
    return 0


def _human(r: dict) -> str:
    lines = [f"run {r['run_dir']} (recipe {r['recipe']}, seed {r['seed']}): {r['steps']} steps in "
             f"{(r['train_seconds'] or 0):.0f} s, {r['params']:,} params"]
    pre = r.get("val_bpb_prequant")
    lines.append(f"val_bpb {r['val_bpb']:.4f}  (pre-quant {pre:.4f}, gap {r['quant_gap']:+.4f})" if pre is not None
                 else f"val_bpb {r['val_bpb']:.4f}")
    lines.append(f"artifact {r['artifact_bytes']:,} bytes = model {r['model_bytes']:,} + code {r['code_bytes']:,} "
                 f"(limit 16,000,000)")
    lines.append(f"evaluated with {r['eval_method']} in {r['eval_seconds']:.1f} s on {r['eval_subset']}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the main job: data -> train -> pack -> eval (writes RUN/summary.json)")
    add_run_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run_from_args, human=_human)

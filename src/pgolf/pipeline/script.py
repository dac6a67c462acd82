"""The entry of the counted train_gpt.py: train -> pack -> reload the artifact -> score. Nothing else.

It runs the same code as `pgolf run` (the trainer, quant.budget.pack_state, eval.methods.evaluate), so
the same seed gives the same val_bpb, but leaves out what producing the score does not need: the
audit, plots, checkpoints and resume, corpus building and manifests, the downloader, progress bars and
the CLI. Code bytes are the size of the running train_gpt.py itself. The script is specialised to its
recipe: only the seed can change (`--set train.seed=N` or the challenge's SEED variable).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

import pgolf
from pgolf import runtime
from pgolf.atomic import atomic_write_bytes, atomic_write_json
from pgolf.config import Config
from pgolf.data.shards import list_shards
from pgolf.data.tokenizer import byte_tables, check_vocab, file_sha256, load_tokenizer
from pgolf.errors import ConfigError, InputError, WorkError
from pgolf.eval import methods
from pgolf.eval.artifact import TOKENIZER_SHA_KEY, load_artifact_for
from pgolf.logs import log, log_file, setup_console
from pgolf.model.weights import RECURRENCE_KEY
from pgolf.pipeline.job import final_lines, train_data
from pgolf.quant.budget import pack_state
from pgolf.train.trainer import train

BUNDLED = False  # True in the counted script (set by the bundler): its config is compiled in


def record_run(cfg: Config, data_dir: str, tokenizer: str, out: Path, code_bytes: int) -> dict:
    with runtime.process_group(cfg.train.device) as proc:
        setup_console(False, proc.rank)
        out.mkdir(parents=True, exist_ok=True)
        with log_file(out / "train.log"):
            sp = load_tokenizer(tokenizer)
            check_vocab(sp.vocab_size(), cfg.model.vocab_size, tokenizer)
            tdata, subset, full = train_data(cfg, Path(data_dir), byte_tables(sp), proc.device,
                                             list_shards(data_dir, "train"))
            result = train(cfg, tdata, None, proc, progress=False)
            s, artifact = result.summary, out / "artifact.pgolf"
            if proc.is_main:
                meta = {"recipe": cfg.name, "seed": cfg.train.seed, "pgolf_version": pgolf.__version__,
                        "torch_version": torch.__version__, TOKENIZER_SHA_KEY: file_sha256(tokenizer),
                        RECURRENCE_KEY: int(result.recurrence)}
                packed = pack_state(result.state, cfg.artifact_dict(), cfg.quant, code_bytes, meta, result.hessians, False)
                if not packed.report["fits"]:
                    raise WorkError(f"artifact over budget: {packed.report['total_bytes']:,} bytes")
                atomic_write_bytes(artifact, packed.blob)
                s.update(model_bytes=packed.report["model_bytes"], artifact_bytes=packed.report["total_bytes"])
            runtime.barrier()
            model, _ = load_artifact_for(cfg, artifact)
            log.info(f"scoring the artifact ({cfg.eval.method}) on {subset}")
            r = methods.evaluate(model, tdata.final_tokens, tdata.final_bytes, cfg, proc.device)
            s.update(val_loss=r["val_loss"], val_bpb=r["val_bpb"], eval_method=r["method"], eval_seconds=r["seconds"],
                     eval_tokens=r["tokens"], eval_bytes=r["bytes"], eval_subset=subset, eval_full_split=full,
                     run_dir=str(out), code_bytes=code_bytes, eval_source="artifact")
            if proc.is_main:
                for line in final_lines(s, audited=False):
                    log.info(line)
                atomic_write_json(out / "summary.json", s)
            return s


def seed_from(overrides: list[str], default: int) -> int:
    """The seed of a record run: --set train.seed=N, else the challenge's SEED variable, else the
    recipe's. Nothing else can change: the counted script is specialised to its recipe."""
    raw = os.environ.get("SEED", "").strip() or str(default)
    for o in overrides:
        key, _, raw = o.partition("=")
        if key.strip() != "train.seed":
            raise ConfigError(f"--set {o}: only train.seed can change (the script is specialised to its recipe)")
    if not raw.strip().isdecimal() or int(raw) >= 2 ** 32:
        raise ConfigError(f"train.seed: expected an integer in 0 .. 2**32-1, got {raw!r}")
    return int(raw)


def config_from(args: argparse.Namespace) -> Config:
    """The recipe's config (--config-json) with the run's seed. In a bundle this body is replaced:
    the config is compiled in, and only the seed is read at run time."""
    if not args.config_json:
        raise InputError("--config-json: required (the recipe's resolved config)")
    try:
        d = json.loads(args.config_json)
    except json.JSONDecodeError as e:
        raise InputError(f"--config-json: invalid JSON ({e})") from None
    cfg = Config.from_dict(d)
    methods.check(cfg)  # a bundle's config passed this when it was bundled
    return cfg.replace([f"train.seed={seed_from(args.overrides, cfg.train.seed)}"])


def own_size() -> int:
    """Bytes of the running train_gpt.py (the counted code)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return Path(path).stat().st_size if path and path.endswith(".py") else 0


def main(argv: list[str] | None = None) -> int:
    # train -> pack -> score; --data: the shard dir, --tokenizer: its SentencePiece model, --out: the
    # folder for artifact.pgolf, train.log and summary.json (help texts would be counted bytes)
    p = argparse.ArgumentParser(prog="train_gpt.py")
    if not BUNDLED:
        p.add_argument("--config-json")
    p.add_argument("--data", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", default="runs/record")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="train.seed=N")
    args = p.parse_args(argv)
    try:
        s = record_run(config_from(args), args.data, args.tokenizer, Path(args.out), own_size())
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WorkError as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    if runtime.is_main():
        print(json.dumps({k: s.get(k) for k in ("val_bpb", "val_loss", "artifact_bytes", "steps")}, sort_keys=True))
    return 0

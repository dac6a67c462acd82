"""Handlers of the smaller commands: `pgolf data ...`, `pgolf model`, `pgolf config`, `pgolf bundle`."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pgolf.atomic import atomic_write_text
from pgolf.config import SECTIONS, field_docs, load_config
from pgolf.data.build import build_shards
from pgolf.data.corpus import iter_documents
from pgolf.data.hub import download, mirror_fetcher
from pgolf.data.inspect import inspect_dir
from pgolf.data.tokenizer import file_sha256, train_tokenizer
from pgolf.errors import InputError
from pgolf.logs import setup_console
from pgolf.model.gpt import GPT, layer_schedule
from pgolf.submit.bundle import bundle_info, write_bundle


def cmd_data_tokenizer(args: argparse.Namespace) -> dict:
    if not 1 <= args.vocab_size <= 65536:
        raise InputError(f"--vocab-size {args.vocab_size}: expected 1..65536 (ids must fit uint16 shards)")
    if not args.out.endswith(".model"):
        raise InputError(f"--out {args.out}: expected a path ending in .model (the .vocab goes beside it)")
    if args.max_docs < 0:
        raise InputError(f"--max-docs must be >= 0, got {args.max_docs}")
    seen = [0]

    def counted():
        for text in iter_documents(args.corpus):
            seen[0] += 1
            yield text

    sp = train_tokenizer(counted(), args.vocab_size, args.out, max_docs=args.max_docs)
    return {"model": args.out, "vocab_size": int(sp.vocab_size()), "requested_vocab_size": args.vocab_size,
            "docs": min(seen[0], args.max_docs) if args.max_docs else seen[0], "sha256": file_sha256(args.out)}


def cmd_data_build(args: argparse.Namespace) -> dict:
    setup_console(args.progress)
    m = build_shards(args.corpus, args.tokenizer, args.out, val_docs=args.val_docs, shard_tokens=args.shard_tokens,
                     workers=args.workers, progress=args.progress, caseops=args.caseops)
    return {"dir": args.out, "tokenizer": m["tokenizer"]["path"], "vocab_size": m["tokenizer"]["vocab_size"],
            **{f"{s}_{k}": (len(v[k]) if k == "shards" else v[k])
               for s, v in m["splits"].items() for k in ("docs", "tokens", "shards")}}


def cmd_data_download(args: argparse.Namespace) -> dict:
    setup_console(args.progress)
    fetch = mirror_fetcher(args.mirror) if args.mirror else None
    return download(args.variant, args.out, train_shards=args.train_shards, repo_id=args.repo_id, fetch=fetch,
                    progress=args.progress)


def cmd_data_inspect(args: argparse.Namespace) -> dict:
    return inspect_dir(args.dir, args.tokenizer)


def model_summary(model: GPT) -> dict:
    groups: dict[str, int] = {}
    for name, p in model.named_parameters():
        key = name.split(".")[0] if not name.startswith("blocks.") else "blocks." + name.split(".", 2)[2]
        groups[key] = groups.get(key, 0) + p.numel()
    cfg = model.cfg
    return {"params": model.num_params(), "layers": cfg.num_layers,
            "virtual_layers_recurrent": len(layer_schedule(cfg, True)), "model_dim": cfg.model_dim,
            "heads": cfg.num_heads, "kv_heads": cfg.num_kv_heads, "mlp_hidden": cfg.mlp_hidden,
            "vocab_size": cfg.vocab_size, "param_groups": groups}


def cmd_model(args: argparse.Namespace) -> dict:
    cfg = load_config(args.recipe, args.overrides)
    return model_summary(GPT(cfg.model)) | {"recipe": cfg.name}


def cmd_config(args: argparse.Namespace) -> dict:
    cfg = load_config(args.recipe, args.overrides, smoke=args.smoke)
    d = cfg.to_dict()
    fields = {name: {k: {"value": d[name][k], "doc": doc} for k, doc in field_docs(cls).items()}
              for name, cls in SECTIONS.items()}
    return {"recipe": cfg.name, "config": d, "fields": fields}


def cmd_bundle(args: argparse.Namespace) -> dict:
    cfg = load_config(args.recipe, args.overrides)
    b = bundle_info(cfg, args.compress)
    write_bundle(Path(args.out), b)
    return {k: v for k, v in dataclasses.asdict(b).items() if k != "code"} | {"out": args.out, "recipe": cfg.name}

"""`pgolf data ...`: tokenizer, build, download, inspect."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pgolf.errors import InputError


def _tokenizer(args: argparse.Namespace) -> dict:
    from pgolf.data.corpus import iter_documents
    from pgolf.data.tokenizer import file_sha256, train_tokenizer

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
    model = Path(args.out)
    return {"model": str(model), "vocab_size": int(sp.vocab_size()), "requested_vocab_size": args.vocab_size,
            "docs": min(seen[0], args.max_docs) if args.max_docs else seen[0], "sha256": file_sha256(model)}


def _build(args: argparse.Namespace) -> dict:
    from pgolf.data.build import build_shards

    m = build_shards(args.corpus, args.tokenizer, args.out, val_docs=args.val_docs,
                     shard_tokens=args.shard_tokens, workers=args.workers, progress=sys.stderr.isatty())
    return {"dir": args.out, "tokenizer": m["tokenizer"]["path"], "vocab_size": m["tokenizer"]["vocab_size"],
            **{f"{s}_{k}": (len(v[k]) if k == "shards" else v[k])
               for s, v in m["splits"].items() for k in ("docs", "tokens", "shards")}}


def _download(args: argparse.Namespace) -> dict:
    from pgolf.data.hub import download, mirror_fetcher

    fetch = mirror_fetcher(args.mirror) if args.mirror else None
    return download(args.variant, args.out, train_shards=args.train_shards, repo_id=args.repo_id,
                    fetch=fetch, progress=sys.stderr.isatty())


def _inspect(args: argparse.Namespace) -> dict:
    from pgolf.data.inspect import inspect_dir

    return inspect_dir(args.dir, args.tokenizer)


def _human_inspect(r: dict) -> str:
    lines = [f"{r['dir']}  (tokenizer: {r['tokenizer'] or 'none: bytes not computed'})"]
    lines.append(f"{'split':6} {'shards':>6} {'tokens':>14} {'docs':>10} {'bytes':>15} {'bytes/tok':>9} {'max id':>6}")
    for split, s in r["splits"].items():
        bpt = f"{s['bytes_per_token']:.4f}" if s["bytes_per_token"] is not None else "-"
        nbytes = f"{s['bytes']:,}" if s["bytes"] is not None else "-"
        top = s["max_token_id"] if s["max_token_id"] is not None else "-"
        lines.append(f"{split:6} {s['shards']:>6} {s['tokens']:>14,} {s['docs']:>10,} {nbytes:>15} {bpt:>9} {top:>6}")
    return "\n".join(lines)


def register(sub) -> None:
    from pgolf.cli import add_json_flag

    data = sub.add_parser("data", help="tokenizers, shards, the published export, inspection")
    dsub = data.add_subparsers(dest="data_command", required=True, parser_class=type(data))

    p = dsub.add_parser("tokenizer", help="train a SentencePiece BPE with the challenge's settings")
    p.add_argument("corpus", nargs="+", metavar="CORPUS", help=".txt / .jsonl files or globs (.zst/.xz/.gz ok)")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--out", required=True, metavar="MODEL", help="output .model path (.vocab written beside it)")
    p.add_argument("--max-docs", type=int, default=0, help="train on the first N documents (0 = all)")
    add_json_flag(p)
    p.set_defaults(func=_tokenizer, human=None)

    p = dsub.add_parser("build", help="corpus -> fineweb_{val,train}_*.bin shards + manifest.json")
    p.add_argument("corpus", nargs="+", metavar="CORPUS")
    p.add_argument("--tokenizer", required=True, metavar="MODEL")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--val-docs", type=int, default=50_000, help="the first N documents form the val split")
    p.add_argument("--shard-tokens", type=int, default=100_000_000)
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    add_json_flag(p)
    p.set_defaults(func=_build, human=None)

    p = dsub.add_parser("download", help="the published FineWeb export from the Hugging Face hub")
    p.add_argument("--variant", default="sp1024", help="sp1024 | sp4096 | sp8192")
    p.add_argument("--train-shards", type=int, default=80)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--repo-id", default=None, help="dataset repo (default: the variant's known repo)")
    p.add_argument("--mirror", default=None, metavar="DIR",
                   help="read from a local directory laid out like the hub repo instead of the hub")
    add_json_flag(p)
    p.set_defaults(func=_download, human=None)

    p = dsub.add_parser("inspect", help="per split: shards, tokens, docs, bytes (val_bpb denominator), max id")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--tokenizer", default=None, metavar="MODEL", help="default: the one in DIR/manifest.json")
    add_json_flag(p)
    p.set_defaults(func=_inspect, human=_human_inspect)

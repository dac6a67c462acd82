"""`pgolf data ...`: tokenizer, build, download, inspect (arguments and human output; the work is
in pgolf.pipeline.tools)."""
from __future__ import annotations

from pgolf.cli import add_json_flag, add_progress_flag, command

T = "pgolf.pipeline.tools"


def human_inspect(r: dict) -> str:
    lines = [f"{r['dir']}  (tokenizer: {r['tokenizer'] or 'none: bytes not computed'})"]
    lines.append(f"{'split':6} {'shards':>6} {'tokens':>14} {'docs':>10} {'bytes':>15} {'bytes/tok':>9} {'max id':>6}  bytes from")
    for split, s in r["splits"].items():
        bpt = f"{s['bytes_per_token']:.4f}" if s["bytes_per_token"] is not None else "-"
        nbytes = f"{s['bytes']:,}" if s["bytes"] is not None else "-"
        top = s["max_token_id"] if s["max_token_id"] is not None else "-"
        lines.append(f"{split:6} {s['shards']:>6} {s['tokens']:>14,} {s['docs']:>10,} {nbytes:>15} {bpt:>9} {top:>6}"
                     f"  {s.get('bytes_source') or '-'}")
    return "\n".join(lines)


def register(sub) -> None:
    data = sub.add_parser("data", help="tokenizers, shards, the published export, inspection")
    dsub = data.add_subparsers(dest="data_command", required=True, parser_class=type(data))

    p = dsub.add_parser("tokenizer", help="train a SentencePiece BPE with the challenge's settings")
    p.add_argument("corpus", nargs="+", metavar="CORPUS", help=".txt / .jsonl files or globs (.zst/.xz/.gz ok)")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--out", required=True, metavar="MODEL", help="output .model path (.vocab written beside it)")
    p.add_argument("--max-docs", type=int, default=0, help="train on the first N documents (0 = all)")
    add_json_flag(p)
    command(p, f"{T}:cmd_data_tokenizer")

    p = dsub.add_parser("build", help="corpus -> fineweb_{val,train}_*.bin shards + manifest.json")
    p.add_argument("corpus", nargs="+", metavar="CORPUS")
    p.add_argument("--tokenizer", required=True, metavar="MODEL")
    p.add_argument("--out", required=True, metavar="DIR", help="new, empty or an earlier shard dir (replaced whole)")
    p.add_argument("--val-docs", type=int, default=50_000, help="the first N documents form the val split")
    p.add_argument("--shard-tokens", type=int, default=100_000_000)
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    p.add_argument("--caseops", action="store_true",
                   help="CaseOps-transform each document (needs a CaseOps tokenizer) and write the val byte "
                        "sidecar fineweb_val_bytes_*.bin (the leaderboard top's data)")
    add_progress_flag(p)
    add_json_flag(p)
    command(p, f"{T}:cmd_data_build")

    p = dsub.add_parser("download", help="the published FineWeb export from the Hugging Face hub")
    p.add_argument("--variant", default="sp1024", help="sp1024 | sp4096 | sp8192")
    p.add_argument("--train-shards", type=int, default=80)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--repo-id", default=None, help="dataset repo (default: the variant's known repo)")
    p.add_argument("--mirror", default=None, metavar="DIR",
                   help="read from a local directory laid out like the hub repo instead of the hub")
    add_progress_flag(p)
    add_json_flag(p)
    command(p, f"{T}:cmd_data_download")

    p = dsub.add_parser("inspect", help="per split: shards, tokens, docs, bytes (val_bpb denominator), max id")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--tokenizer", default=None, metavar="MODEL",
                   help="default: the one in DIR/manifest.json (a different one is refused)")
    add_json_flag(p)
    command(p, f"{T}:cmd_data_inspect", "pgolf.data.commands:human_inspect")

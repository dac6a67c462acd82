"""Make a small shard dir for CPU smoke runs: stand-in train docs + the FineWeb val prefix.

    python benchmarks/make_standin_shards.py --out /tmp/tiny_data [--docs 2000]

Train: the first --docs documents of ../shared/data/standin/standin_000.jsonl.zst encoded with the
sp1024 tokenizer as [BOS] + tokens per doc -> fineweb_train_000000.bin. Val: a symlink to the
shipped sp1024 FineWeb val prefix (901 docs). A manifest.json names the tokenizer so `pgolf train`
finds it. (`pgolf data build` does the full job; this is the quick, dependency-free path.)
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import zstandard

from pgolf.data.shards import write_shard
from pgolf.data.tokenizer import BOS_ID, file_sha256, load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def standin_docs(path: Path, n: int):
    with open(path, "rb") as f:
        reader = zstandard.ZstdDecompressor().stream_reader(f)
        for i, line in enumerate(io.TextIOWrapper(reader, encoding="utf-8")):
            if i >= n:
                break
            yield json.loads(line)["text"]


def make(out: Path, docs: int, shared: Path = SHARED) -> dict:
    tok = shared / "tokenizers" / "fineweb_1024_bpe.model"
    val = shared / "fineweb" / "sp1024" / "fineweb_val_000000.bin"
    corpus = shared / "standin" / "standin_000.jsonl.zst"
    for p in (tok, val, corpus):
        if not p.is_file():
            raise SystemExit(f"missing {p} (the shared offline data)")
    sp = load_tokenizer(tok)
    texts = list(standin_docs(corpus, docs))
    ids = sp.encode(texts)
    tokens = np.concatenate([np.asarray([BOS_ID] + t, dtype=np.uint16) for t in ids])
    out.mkdir(parents=True, exist_ok=True)
    write_shard(out / "fineweb_train_000000.bin", tokens)
    link = out / "fineweb_val_000000.bin"
    if link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(val)
    manifest = {"format": "pgolf-shards", "made_by": "benchmarks/make_standin_shards.py",
                "tokenizer": {"path": str(tok), "sha256": file_sha256(tok), "vocab_size": sp.vocab_size()},
                "splits": {"train": {"docs": len(texts), "tokens": int(tokens.size), "source": str(corpus)},
                           "val": {"source": str(val)}}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--docs", type=int, default=2000, help="stand-in documents to encode for training")
    args = p.parse_args(argv)
    m = make(Path(args.out), args.docs)
    print(json.dumps(m["splits"]), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

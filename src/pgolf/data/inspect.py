"""Per-split statistics of a shard directory, including the val_bpb byte denominator.

bytes = the tokenizer's byte tables over the split's whole token stream (every token after the first
is a target), shard by shard with the previous token carried across boundaries; or, for a split with
a byte sidecar (fineweb_val_bytes_*.bin, CaseOps), the sidecar's counts of those targets.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pgolf.config import BOS_ID
from pgolf.data.manifest import manifest_tokenizer, resolve_tokenizer, validate_shard_dir
from pgolf.data.shards import read_shard
from pgolf.data.tokenizer import ByteTables, byte_tables, load_tokenizer
from pgolf.errors import InputError

CHUNK = 1 << 24  # tokens per pass: bounded memory on 100M-token shards


def split_stats(paths: list[Path], tables: ByteTables | None, sidecar: list[Path] | None = None) -> dict:
    """shards, tokens, docs (BOS count), bytes, bytes_per_token, max_token_id over one split."""
    tokens = docs = nbytes = 0
    top = -1
    prev: int | None = None
    for path in paths:
        shard = read_shard(path)
        for lo in range(0, len(shard), CHUNK):
            chunk = np.asarray(shard[lo: lo + CHUNK], dtype=np.int64)
            tokens += len(chunk)
            docs += int(np.count_nonzero(chunk == BOS_ID))
            top = max(top, int(chunk.max()))
            if tables is not None and not sidecar:
                if top >= tables.vocab_size:
                    raise InputError(f"{path}: token id {top} >= tokenizer vocab size {tables.vocab_size} "
                                     "(tokenizer/shard vocab mismatch)")
                seq = chunk if prev is None else np.concatenate([[prev], chunk])
                nbytes += tables.stream_bytes(seq)
            prev = int(chunk[-1])
    source = "tokenizer" if tables is not None else None
    if sidecar:
        counts = [read_shard(p) for p in sidecar]
        if sum(len(c) for c in counts) != tokens:
            raise InputError(f"{sidecar[0]}: byte sidecar has {sum(len(c) for c in counts):,} entries for "
                             f"{tokens:,} tokens")
        # Every token after the first is a target; the stream's first token is a BOS (0 bytes) anyway.
        nbytes = sum(int(np.asarray(c, dtype=np.int64).sum()) for c in counts) - int(counts[0][0]) if tokens else 0
        source = "sidecar"
    known = source is not None
    return {"shards": len(paths), "tokens": tokens, "docs": docs,
            "bytes": nbytes if known else None, "bytes_source": source,
            "bytes_per_token": nbytes / tokens if known and tokens else None,
            "max_token_id": top if tokens else None}


def inspect_dir(directory: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> dict:
    """Statistics for the train and val splits of DIR; bytes need a tokenizer (argument or manifest)."""
    d = Path(directory)
    found = validate_shard_dir(d)
    if not found["val"] and not found["train"]:
        raise InputError(f"{d}: no fineweb_val_*.bin or fineweb_train_*.bin shards")
    named, _ = manifest_tokenizer(d)
    tok_path = resolve_tokenizer(d, tokenizer) if tokenizer or named is not None else None
    tables = byte_tables(load_tokenizer(tok_path)) if tok_path is not None else None
    splits = {s: split_stats(found[s], tables, found["val_bytes"] if s == "val" else None) for s in ("val", "train")}
    return {"dir": str(d), "tokenizer": str(tok_path) if tok_path is not None else None, "splits": splits}

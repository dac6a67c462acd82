"""Per-split statistics of a shard directory, including the val_bpb byte denominator.

bytes = ByteTables.stream_bytes over the split's whole token stream (every token after the first is a
target), computed shard by shard in chunks with the previous token carried across boundaries.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pgolf.data.build import manifest_tokenizer
from pgolf.data.shards import list_shards, read_shard
from pgolf.data.tokenizer import BOS_ID, ByteTables, byte_tables, load_tokenizer
from pgolf.errors import InputError

CHUNK = 1 << 24  # tokens per pass: bounded memory on 100M-token shards


def split_stats(paths: list[Path], tables: ByteTables | None) -> dict:
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
            if tables is not None:
                if top >= tables.vocab_size:
                    raise InputError(f"{path}: token id {top} >= tokenizer vocab size {tables.vocab_size} "
                                     "(tokenizer/shard vocab mismatch)")
                seq = chunk if prev is None else np.concatenate([[prev], chunk])
                nbytes += tables.stream_bytes(seq)
            prev = int(chunk[-1])
    return {
        "shards": len(paths),
        "tokens": tokens,
        "docs": docs,
        "bytes": nbytes if tables is not None else None,
        "bytes_per_token": nbytes / tokens if tables is not None and tokens else None,
        "max_token_id": top if tokens else None,
    }


def inspect_dir(directory: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> dict:
    """Statistics for the train and val splits of DIR; bytes need a tokenizer (argument or manifest)."""
    d = Path(directory)
    splits = {s: list_shards(d, s) for s in ("val", "train")}
    if not any(splits.values()):
        raise InputError(f"{d}: no fineweb_val_*.bin or fineweb_train_*.bin shards")
    tok_path = Path(tokenizer) if tokenizer else manifest_tokenizer(d)
    if tok_path is not None and not tok_path.is_file() and not tokenizer:
        raise InputError(f"{d / 'manifest.json'}: tokenizer {tok_path} not found; pass --tokenizer MODEL")
    tables = byte_tables(load_tokenizer(tok_path)) if tok_path is not None else None
    return {
        "dir": str(d),
        "tokenizer": str(tok_path) if tok_path is not None else None,
        "splits": {s: split_stats(paths, tables) for s, paths in splits.items()},
    }

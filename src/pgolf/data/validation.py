"""The validation stream and the bytes credited to each of its targets (the val_bpb denominator).

Bytes come from the tokenizer's byte tables (challenge.md) or, when the shard directory has a byte
sidecar (fineweb_val_bytes_*.bin, CaseOps), from the sidecar: there a token's bytes are those of the
original text it stands for, so val_bpb is charged on the original bytes.
"""
from __future__ import annotations

import os

import numpy as np

from pgolf.data.shards import list_shards, load_split
from pgolf.data.tokenizer import ByteTables
from pgolf.errors import InputError


def target_bytes(tokens: np.ndarray, tables: ByteTables, sidecar: np.ndarray | None = None) -> np.ndarray:
    """Bytes of every target (int32 [len(tokens) - 1]): the sidecar's count of token i+1 when given,
    else the byte tables' count given the previous token."""
    if sidecar is None:
        return tables.target_bytes(tokens)
    sidecar = np.asarray(sidecar)
    if len(sidecar) != len(tokens):
        raise InputError(f"byte sidecar has {len(sidecar):,} entries for {len(tokens):,} tokens")
    return np.asarray(sidecar[1:], dtype=np.int32)


def load_val(directory: str | os.PathLike, vocab_size: int, tables: ByteTables,
             max_tokens: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, bytes of every target) of DIR's val split, the first `max_tokens` tokens when > 0."""
    tokens = load_split(directory, "val", vocab_size, max_tokens)
    sidecar = None
    if list_shards(directory, "val_bytes"):
        sidecar = load_split(directory, "val_bytes", None, max_tokens)
        if len(sidecar) != len(tokens):
            raise InputError(f"{directory}: the byte sidecar has {len(sidecar):,} entries for {len(tokens):,} "
                             "val tokens (fineweb_val_bytes_*.bin must match fineweb_val_*.bin)")
    if tables.vocab_size < vocab_size:
        raise InputError(f"tokenizer has {tables.vocab_size:,} pieces for a {vocab_size:,}-token model")
    return tokens, target_bytes(tokens, tables, sidecar)

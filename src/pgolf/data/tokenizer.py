"""SentencePiece tokenizers: loading, training with the challenge's settings, and byte tables.

The byte tables define the val_bpb denominator exactly as the challenge does:
- control / unknown / unused pieces: boundary, 0 bytes;
- byte-fallback pieces <0xNN>: 1 byte;
- other pieces: a leading U+2581 marks a leading space (dropped from the count), the rest counts
  its UTF-8 bytes. The space byte is added only when the previous token is not a boundary.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import sentencepiece as spm

from pgolf.config import BOS_ID
from pgolf.errors import InputError
from pgolf.logs import DETAIL

SPACE = "\u2581"


def load_tokenizer(path: str | os.PathLike) -> spm.SentencePieceProcessor:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: tokenizer model not found")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except Exception as e:  # sentencepiece raises OSError/RuntimeError with terse text
        raise InputError(f"{path}: not a SentencePiece model ({e})") from None
    check_tokenizer(sp, path)
    return sp


def check_tokenizer(sp: spm.SentencePieceProcessor, where: str | os.PathLike = "tokenizer") -> None:
    """Refuse a vocab without a standalone '▁' piece: it miscounts spaces by ~20%."""
    if sp.piece_to_id(SPACE) == sp.unk_id() or sp.id_to_piece(sp.piece_to_id(SPACE)) != SPACE:
        hint = " (retrain with the challenge settings, see `pgolf data tokenizer`)" if DETAIL else ""
        raise InputError(f"{where}: vocab has no standalone '\u2581' piece; val_bpb byte counts would be wrong{hint}")
    if sp.bos_id() != BOS_ID:
        raise InputError(f"{where}: bos id is {sp.bos_id()}, the challenge format needs {BOS_ID}")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ByteTables:
    """Per-id tables: bytes (int16), leading_space (bool), boundary (bool)."""

    base_bytes: np.ndarray
    leading_space: np.ndarray
    boundary: np.ndarray

    @property
    def vocab_size(self) -> int:
        return len(self.base_bytes)

    def token_bytes(self, prev: np.ndarray, tgt: np.ndarray) -> np.ndarray:
        """Bytes credited to each target token given the previous token (int64)."""
        tgt = np.asarray(tgt, dtype=np.int64)
        prev = np.asarray(prev, dtype=np.int64)
        return self.base_bytes[tgt].astype(np.int64) + (self.leading_space[tgt] & ~self.boundary[prev])

    def target_bytes(self, tokens: np.ndarray) -> np.ndarray:
        """Bytes of every target of a stream (target i = token i+1), int32 [len(tokens) - 1]."""
        tokens = np.asarray(tokens, dtype=np.int64)
        return self.token_bytes(tokens[:-1], tokens[1:]).astype(np.int32)

    def stream_bytes(self, tokens: np.ndarray) -> int:
        """Total bytes over a token stream, every token after the first being a target."""
        return int(self.target_bytes(tokens).sum(dtype=np.int64))


def check_vocab(tokenizer_vocab: int, model_vocab: int, tokenizer: str | os.PathLike) -> None:
    """The one vocabulary check: a tokenizer and a model (or shards) must agree on the size."""
    if tokenizer_vocab != model_vocab:
        raise InputError(f"{tokenizer}: tokenizer has {tokenizer_vocab:,} pieces but model.vocab_size is "
                         f"{model_vocab:,} (pass the tokenizer the shards were built with)")


def byte_tables(sp: spm.SentencePieceProcessor) -> ByteTables:
    n = sp.vocab_size()
    base = np.zeros(n, dtype=np.int16)
    lead = np.zeros(n, dtype=bool)
    boundary = np.zeros(n, dtype=bool)
    for i in range(n):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            boundary[i] = True
            continue
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(SPACE):
            lead[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return ByteTables(base, lead, boundary)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out: str | os.PathLike,
                    max_docs: int = 0, num_threads: int | None = None) -> spm.SentencePieceProcessor:
    """Train a BPE model with the challenge's settings; writes OUT (.model) and OUT.vocab."""
    out = Path(out)
    # SentencePiece appends ".model"/".vocab" to the prefix; keep dots in the stem (e.g. "my.tok").
    prefix = out.with_suffix("") if out.suffix == ".model" else out
    prefix.parent.mkdir(parents=True, exist_ok=True)

    def capped():
        for i, t in enumerate(texts):
            if max_docs and i >= max_docs:
                return
            if t:
                yield t

    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=capped(),
            model_prefix=str(prefix),
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=0.999,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="nmt_nfkc",
            add_dummy_prefix=False,
            hard_vocab_limit=False,
            pad_id=0, bos_id=1, eos_id=2, unk_id=3,
            # Guarantee the standalone space piece the byte tables rely on.
            user_defined_symbols=[SPACE],
            max_sentence_length=1 << 16,
            train_extremely_large_corpus=False,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise InputError(f"tokenizer training failed: {e}") from None
    model_path = prefix.parent / (prefix.name + ".model")
    return load_tokenizer(model_path)

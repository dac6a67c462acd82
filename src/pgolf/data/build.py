"""Corpus -> challenge shards: fineweb_val_*.bin (first N docs), fineweb_train_*.bin, manifest.json.

Each document becomes [BOS=1] + sp.encode(text); documents are concatenated per split and cut into
shards of exactly `shard_tokens` tokens (documents may span shards, the last shard is shorter).
With caseops, each text is CaseOps-transformed first (pgolf.data.caseops) and the val split gets a
byte sidecar, fineweb_val_bytes_*.bin: per token the original UTF-8 bytes it stands for (BOS 0).
Streaming: documents are read, tokenized and written in bounded batches, never the whole corpus.
Tokenization runs in a process pool with a bounded window of batches in flight, results consumed
in submission order, so the output is byte-identical for any worker count.
The build goes into a temporary directory beside DIR that replaces DIR only when complete, with the
manifest written last: an interrupted build leaves the previous DIR as it was.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

import pgolf
from pgolf.atomic import atomic_dir
from pgolf.data import caseops as co
from pgolf.data.corpus import expand_paths, iter_documents
from pgolf.data.manifest import MANIFEST, tokenizer_record, write_manifest
from pgolf.data.shards import shard_name, write_shard
from pgolf.data.tokenizer import BOS_ID, file_sha256, load_tokenizer
from pgolf.errors import InputError
from pgolf.logs import progress_enabled

BATCH_DOCS = 512  # documents per tokenization task
BATCH_CHARS = 4 << 20  # ...or fewer when they are long, to bound memory per task
_OURS = ("fineweb_", MANIFEST)  # what a shard directory holds; anything else in DIR is the user's


# --- tokenization (runs in worker processes) ---------------------------------------------------

_SP = None  # the worker's tokenizer, loaded once by _init_worker


def _init_worker(model_path: str) -> None:
    global _SP
    _SP = load_tokenizer(model_path)


def _flat(seqs: list[list[int]]) -> np.ndarray:
    """[0] + seq for each sequence, concatenated, as uint16 (the caller sets the BOS entries)."""
    out = np.zeros(sum(len(x) + 1 for x in seqs), dtype=np.uint16)
    pos = 0
    for seq in seqs:
        out[pos + 1: pos + 1 + len(seq)] = seq
        pos += len(seq) + 1
    return out


def _encode_with(sp, texts: list[str], caseops: bool = False,
                 sidecar: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """([BOS] + ids for each text, concatenated, as uint16; the byte sidecar or None)."""
    if caseops:
        texts = [co.encode(t) for t in texts]
    if sidecar:
        protos = sp.encode(texts, out_type="proto")  # piece surfaces: needs protobuf
        ids = [[p.id for p in pr.pieces] for pr in protos]
        counts = _flat([co.original_bytes(p.surface for p in pr.pieces) for pr in protos])  # BOS: 0 bytes
    else:
        ids, counts = sp.encode(texts), None
    tokens = _flat(ids)
    tokens[np.cumsum([0] + [len(x) + 1 for x in ids[:-1]])] = BOS_ID
    return tokens, counts


def _encode_batch(texts: list[str], caseops: bool, sidecar: bool) -> tuple[np.ndarray, np.ndarray | None]:
    return _encode_with(_SP, texts, caseops, sidecar)


# --- writing -----------------------------------------------------------------------------------

@dataclass
class _SplitWriter:
    """Accumulates one split's token stream and writes full shards as they fill."""

    out_dir: Path
    split: str
    shard_tokens: int
    docs: int = 0
    tokens: int = 0
    shards: list[dict] = field(default_factory=list)
    _buf: np.ndarray | None = None
    _fill: int = 0

    def add(self, toks: np.ndarray, docs: int) -> None:
        self.docs += docs
        self.tokens += len(toks)
        if self._buf is None:
            self._buf = np.empty(self.shard_tokens, dtype=np.uint16)  # pages touched only as filled
        i = 0
        while i < len(toks):
            take = min(len(toks) - i, self.shard_tokens - self._fill)
            self._buf[self._fill: self._fill + take] = toks[i: i + take]
            self._fill += take
            i += take
            if self._fill == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if self._fill == 0:
            return
        name = shard_name(self.split, len(self.shards))
        write_shard(self.out_dir / name, self._buf[: self._fill])
        self.shards.append({"name": name, "tokens": int(self._fill)})
        self._fill = 0

    def summary(self) -> dict:
        return {"docs": self.docs, "tokens": self.tokens, "shards": self.shards}


def _batches(docs: Iterable[str], val_docs: int) -> Iterator[tuple[str, list[str]]]:
    """(split, texts) batches in corpus order; a batch never straddles the val/train boundary."""
    batch: list[str] = []
    chars = 0
    split = "val" if val_docs > 0 else "train"
    for i, text in enumerate(docs):
        if i == val_docs and batch:
            yield split, batch
            batch, chars = [], 0
        split = "val" if i < val_docs else "train"
        batch.append(text)
        chars += len(text)
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield split, batch
            batch, chars = [], 0
    if batch:
        yield split, batch


def _encoded(batches: Iterator[tuple[str, list[str]]], model_path: str, workers: int,
             sp, caseops: bool = False) -> Iterator[tuple[str, int, tuple]]:
    """(split, n_docs, (tokens, sidecar)) per batch, in order; at most 2*workers batches in flight."""
    if workers <= 1:
        for split, texts in batches:
            yield split, len(texts), _encode_with(sp, texts, caseops, caseops and split == "val")
        return
    # spawn: no fork of a parent that may hold threads (tqdm, loaders) or CUDA state.
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(model_path,)) as pool:
        pending: deque = deque()
        for split, texts in batches:
            job = pool.apply_async(_encode_batch, (texts, caseops, caseops and split == "val"))
            pending.append((split, len(texts), job))
            if len(pending) >= 2 * workers:
                s, n, res = pending.popleft()
                yield s, n, res.get()
        while pending:
            s, n, res = pending.popleft()
            yield s, n, res.get()


def _check_out(out: Path) -> None:
    """DIR must be absent, empty or an earlier shard directory: a build replaces it whole."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not p.name.startswith(_OURS))
        if foreign:
            raise InputError(f"--out {out}: holds files that are not shards ({', '.join(foreign[:3])}); "
                             "a build replaces the directory whole, so choose an empty or new one")


def build_shards(corpus: Sequence[str | os.PathLike], tokenizer: str | os.PathLike,
                 out_dir: str | os.PathLike, val_docs: int = 50_000,
                 shard_tokens: int = 100_000_000, workers: int | None = None,
                 progress: bool = False, caseops: bool = False) -> dict:
    """Tokenize a corpus into challenge shards in out_dir; returns the manifest (also written)."""
    if val_docs < 0:
        raise InputError(f"--val-docs must be >= 0, got {val_docs}")
    if shard_tokens < 1:
        raise InputError(f"--shard-tokens must be >= 1, got {shard_tokens}")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 0:
        raise InputError(f"--workers must be >= 0, got {workers}")
    paths = expand_paths(corpus)
    tok_path = Path(tokenizer)
    sp = load_tokenizer(tok_path)
    if sp.vocab_size() > 65536:
        raise InputError(f"{tok_path}: vocab size {sp.vocab_size()} does not fit uint16 shards")
    if caseops:
        co.check_tokenizer(sp, str(tok_path))
    out = Path(out_dir)
    _check_out(out)
    with atomic_dir(out) as tmp:
        writers = {s: _SplitWriter(tmp, s, shard_tokens) for s in ("val", "train") + ("val_bytes",) * caseops}
        bar = tqdm(unit="doc", desc="build", file=sys.stderr, disable=None if progress and progress_enabled() else True)
        batches = _batches(iter_documents(paths), val_docs)
        encoded = _encoded(batches, str(tok_path), workers, sp, caseops)
        try:
            for split, n_docs, (toks, counts) in encoded:
                writers[split].add(toks, n_docs)
                if counts is not None:
                    writers["val_bytes"].add(counts, n_docs)
                bar.update(n_docs)
        finally:  # on failure: stop the worker pool and close the corpus files now, not at garbage collection
            encoded.close()
            batches.close()
            bar.close()
        for w in writers.values():
            w.flush()
        manifest = {
            "pgolf_version": pgolf.__version__,
            "tokenizer": tokenizer_record(tok_path, sp.vocab_size()),
            "inputs": [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in paths],
            "settings": {"val_docs": val_docs, "shard_tokens": shard_tokens, "bos_id": BOS_ID,
                         "doc_format": "[BOS] + sp.encode(caseops(text))" if caseops else "[BOS] + sp.encode(text)",
                         "text_transform": co.NAME if caseops else "identity"},
            "splits": {s: w.summary() for s, w in writers.items()},
        }
        write_manifest(tmp, manifest)
    return manifest

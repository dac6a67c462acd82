"""The challenge's shard format: 256 little-endian int32 header words, then uint16 tokens.

header[0] = 20240520 (magic), header[1] = 1 (version), header[2] = token count, rest zero.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from pgolf.atomic import atomic_path
from pgolf.errors import InputError

MAGIC = 20240520
VERSION = 1
HEADER_WORDS = 256
HEADER_BYTES = HEADER_WORDS * 4


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> None:
    """Write tokens atomically: a temp file in the same folder, renamed over the final name."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > 65535):
        raise InputError(f"{path}: token ids must fit uint16 (0..65535)")
    header = np.zeros(HEADER_WORDS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, tokens.size
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2", copy=False).tobytes())
        f.flush()
        os.fsync(f.fileno())


def read_header(path: str | os.PathLike) -> int:
    """Validate the header and file size; return the token count."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: shard file not found")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise InputError(f"{path}: truncated shard ({size} bytes, header alone is {HEADER_BYTES})")
    header = np.fromfile(path, dtype="<i4", count=HEADER_WORDS)
    if int(header[0]) != MAGIC:
        raise InputError(f"{path}: bad magic {int(header[0])} (expected {MAGIC}); not a challenge shard")
    if int(header[1]) != VERSION:
        raise InputError(f"{path}: unsupported shard version {int(header[1])} (expected {VERSION})")
    count = int(header[2])
    expected = HEADER_BYTES + 2 * count
    if count < 0 or size != expected:
        raise InputError(f"{path}: file size {size} != {expected} (1024-byte header + 2 x {count} tokens); "
                         "truncated or corrupt shard")
    return count


def read_shard(path: str | os.PathLike, vocab_size: int | None = None, check: bool = True) -> np.ndarray:
    """Memory-map a shard's tokens (uint16). With vocab_size, ids >= vocab_size are rejected."""
    count = read_header(path)
    tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))
    if check and vocab_size is not None and count:
        top = int(tokens.max())
        if top >= vocab_size:
            raise InputError(f"{path}: token id {top} >= vocab size {vocab_size} "
                             "(shards and tokenizer/model do not match)")
    return tokens


def shard_name(split: str, index: int) -> str:
    return f"fineweb_{split}_{index:06d}.bin"


def list_shards(directory: str | os.PathLike, split: str) -> list[Path]:
    """Sorted fineweb_{split}_NNNNNN.bin files (split: train | val | val_bytes, the byte sidecar)."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: data directory not found")
    pattern = re.compile(rf"^fineweb_{re.escape(split)}_\d{{6}}\.bin$")
    return sorted(p for p in d.glob(f"fineweb_{split}_*.bin") if pattern.match(p.name))


def load_split(directory: str | os.PathLike, split: str, vocab_size: int | None = None,
               max_tokens: int = 0) -> np.ndarray:
    """All tokens of a split concatenated in shard order (as int64), optionally the first N."""
    paths = list_shards(directory, split)
    if not paths:
        raise InputError(f"{directory}: no fineweb_{split}_*.bin shards")
    parts, have = [], 0
    for p in paths:
        t = read_shard(p, vocab_size)
        if max_tokens:
            t = t[: max_tokens - have]
        parts.append(np.asarray(t, dtype=np.int64))
        have += len(parts[-1])
        if max_tokens and have >= max_tokens:
            break
    return np.concatenate(parts)

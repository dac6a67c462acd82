"""Lossless codecs for artifact sections, byte shuffling, and low-bit packing.

CODECS is the one registry: name -> Codec(compress, decompress). Every decompressor is told the exact
size the section declares and stops once output would pass it (a zip-bomb guard), except zpaq, whose
Python binding has no output limit (its output is checked after the fact; see docs/artifact.md).
Measured choices are in docs/benchmarks.md ("Codecs").
"""
from __future__ import annotations

import lzma
import zlib
from dataclasses import dataclass
from typing import Callable

import brotli
import numpy as np
import pyppmd
import zpaq
import zstandard

_CHUNK = 1 << 20
PPMD_ORDER, PPMD_MEM = 2, 16 << 20  # order 2 measured best on int6 rows (order 3+ dilutes the statistics)
ZPAQ_METHOD = "51"  # zpaq level 5, log2 block size 1 (2 MiB blocks: a large section decodes in parallel)


class CodecError(ValueError):
    """Corrupt or oversized compressed data (callers wrap it into an InputError naming the file)."""


@dataclass(frozen=True)
class Codec:
    name: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes, int], bytes]  # (blob, declared size) -> at most size + 1 bytes


def _zlib_d(blob: bytes, size: int) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(blob, size + 1)
    if len(out) <= size and (not d.eof or d.unused_data):
        raise CodecError("zlib stream is truncated or has trailing data")
    return out


def _xz_d(blob: bytes, size: int) -> bytes:
    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    out = d.decompress(blob, max_length=size + 1)
    if len(out) <= size and (not d.eof or d.unused_data):
        raise CodecError("xz stream is truncated or has trailing data")
    return out


def _zstd_d(blob: bytes, size: int) -> bytes:
    with zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=False) as r:
        out = r.read(size + 1)
        if len(out) <= size and r.read(1):
            raise CodecError("zstd stream has trailing data")
    return out


def _brotli_d(blob: bytes, size: int) -> bytes:
    d = brotli.Decompressor()
    parts = [d.process(blob, output_buffer_limit=_CHUNK)]
    total = len(parts[0])
    while total <= size and not d.is_finished():
        parts.append(d.process(b"", output_buffer_limit=_CHUNK))
        if not parts[-1]:  # wants more input than the stream holds
            raise CodecError("brotli stream is truncated")
        total += len(parts[-1])
    return b"".join(parts)


def _ppmd_c(data: bytes) -> bytes:
    enc = pyppmd.Ppmd8Encoder(PPMD_ORDER, PPMD_MEM)
    return enc.encode(data) + enc.flush(endmark=True)


def _ppmd_d(blob: bytes, size: int) -> bytes:
    d = pyppmd.Ppmd8Decoder(PPMD_ORDER, PPMD_MEM)
    out = d.decode(blob, size + 1)
    if len(out) <= size and not d.eof:
        raise CodecError("ppmd stream is truncated")
    return out


CODECS: dict[str, Codec] = {c.name: c for c in (
    Codec("zlib", lambda d: zlib.compress(d, 9), _zlib_d),
    Codec("zstd", lambda d: zstandard.ZstdCompressor(level=22).compress(d), _zstd_d),
    Codec("lzma", lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME), _xz_d),
    Codec("brotli", lambda d: brotli.compress(d, quality=11, lgwin=24), _brotli_d),
    Codec("ppmd", _ppmd_c, _ppmd_d),
    # method 5 in blocks of 2 MiB ("51"): the blocks decode on all cores (~0.05% larger than one
    # block per section); one thread to encode, so the bytes never depend on the machine
    Codec("zpaq", lambda d: zpaq.compress(d, method=ZPAQ_METHOD, threads=1), lambda b, size: zpaq.decompress(b)),
)}


def _codec(name: str) -> Codec:
    if name not in CODECS:
        raise CodecError(f"unknown codec {name!r} (expected one of {', '.join(CODECS)})")
    return CODECS[name]


def compress(data: bytes, codec: str) -> bytes:
    return _codec(codec).compress(bytes(data))


def decompress(blob: bytes, codec: str, size: int) -> bytes:
    """Exactly `size` bytes, or CodecError (corrupt, truncated, larger or smaller than declared)."""
    c = _codec(codec)
    try:
        out = c.decompress(bytes(blob), size)
    except CodecError:
        raise
    except Exception as e:  # each library raises its own error type for corrupt input
        raise CodecError(f"{codec} data is corrupt: {e}") from None
    if len(out) != size:
        raise CodecError(f"{codec} data decodes to {'more' if len(out) > size else len(out)} bytes, "
                         f"the header declares {size}")
    return out


def best_codec(data: bytes, codecs: tuple[str, ...] | list[str]) -> tuple[str, bytes]:
    """Compress with every codec; the smallest (ties: first in `codecs`)."""
    blobs = [(name, compress(data, name)) for name in codecs]
    return min(blobs, key=lambda x: len(x[1]))


def byte_shuffle(data: bytes, itemsize: int) -> bytes:
    """Group byte j of every element together (j = 0..itemsize-1); helps codecs on float arrays."""
    if itemsize <= 1 or len(data) == 0:
        return bytes(data)
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, itemsize).T.tobytes()


def byte_unshuffle(data: bytes, itemsize: int) -> bytes:
    if itemsize <= 1 or len(data) == 0:
        return bytes(data)
    return np.frombuffer(data, dtype=np.uint8).reshape(itemsize, -1).T.tobytes()


# ---------------------------------------------------------------------------------------------
# low-bit packing. Measured on Gaussian rows (512x2048) with every codec: int8 storage compresses
# smaller than packing for 5..8 bits (e.g. int6 brotli 442 KB vs 531 KB bit-packed), while
# byte-aligned packing wins slightly for <= 4 bits (int4 2/byte: 432 vs 435 KB brotli, 437 vs 497 KB
# zlib; int2 4/byte). So int-k with k <= 4 is packed, k >= 5 is stored as int8.

def values_per_byte(bits: int) -> int:
    """1 (int8 storage) for 5..8 bits, 2 for 3..4 bits, 4 for 2 bits."""
    return 4 if bits == 2 else 2 if bits <= 4 else 1


def pack_lowbit(q: np.ndarray, bits: int) -> np.ndarray:
    """int8 values in [-(2^(bits-1)-1), 2^(bits-1)-1] -> uint8, values_per_byte(bits) per byte."""
    per = values_per_byte(bits)
    flat = q.reshape(-1).astype(np.int16)
    if per == 1:
        return flat.astype(np.int8).view(np.uint8)
    width = 8 // per
    u = (flat + (1 << (bits - 1))).astype(np.uint8)  # offset binary, 1..2^bits-1
    u = np.concatenate([u, np.zeros(-len(u) % per, np.uint8)]).reshape(-1, per)
    out = np.zeros(u.shape[0], np.uint8)
    for j in range(per):
        out |= (u[:, j] << (j * width)).astype(np.uint8)
    return out


def unpack_lowbit(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_lowbit: the first `count` int8 values."""
    per = values_per_byte(bits)
    if per == 1:
        return packed.view(np.int8)[:count].copy()
    width = 8 // per
    cols = [(packed >> (j * width)) & ((1 << width) - 1) for j in range(per)]
    u = np.stack(cols, axis=1).reshape(-1)[:count].astype(np.int16)
    return (u - (1 << (bits - 1))).astype(np.int8)


def packed_nbytes(count: int, bits: int) -> int:
    per = values_per_byte(bits)
    return (count + per - 1) // per

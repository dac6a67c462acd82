"""The artifact file: a pickle-free container of quantized tensors.

Layout (little-endian):
    magic      7 bytes  b"PGOLF1\\0"
    codec id   u8       index into CODECS (zlib, zstd, lzma, brotli)
    hdr_len    u32      compressed header bytes
    hdr_raw    u32      uncompressed header bytes (<= 64 MiB)
    header     JSON (utf-8), compressed with the codec
    payload    every tensor array back to back, compressed as one stream with the codec

The header holds the format version, codec, byte_shuffle, payload sizes, the model config and
metadata (opaque JSON from the caller) and, per tensor: name, scheme (int | fp16 | fp32 | bf16 | raw),
bits, shape, restore dtype, sha256 of its raw array bytes, and its arrays (role, dtype, shape,
offset, length in the uncompressed payload). int-k values are int8 for k >= 5 and packed 2 or 4 per
byte for k <= 4 (measured smaller, see codecs.py). With byte_shuffle, each array with itemsize > 1 is
byte-shuffled before compression.

Reading never unpickles; everything is validated and any problem raises InputError naming the file.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Union

import numpy as np
import torch
from torch import Tensor

from pgolf.atomic import atomic_write_bytes
from pgolf.errors import InputError
from pgolf.quant.codecs import (CODECS, CodecError, byte_shuffle, byte_unshuffle, compress, decompress,
                                pack_lowbit, packed_nbytes, unpack_lowbit)
from pgolf.quant.quantizers import Passthrough, QuantizedTensor, qmax_for

MAGIC = b"PGOLF1\x00"
VERSION = 1
_PREFIX = struct.Struct("<7sBII")
MAX_HEADER_BYTES = 64 << 20
MAX_RAW_BYTES = 4 << 30  # zip-bomb guard on the declared payload size

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16, "int32": torch.int32,
    "int64": torch.int64, "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_SCHEME_OF = {torch.float16: "fp16", torch.float32: "fp32", torch.bfloat16: "bf16"}
PACKED = "packed"  # array dtype of low-bit packed int values

Stored = Union[QuantizedTensor, Passthrough, Tensor]


def _dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype {dtype} cannot be stored in an artifact")
    return _DTYPE_NAMES[dtype]


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _bytes_tensor(b: bytes, dtype: torch.dtype, shape: list[int]) -> Tensor:
    if len(b) == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(b), dtype=dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------
# writing

def _int_arrays(prefix: str, qt: QuantizedTensor) -> list[tuple[str, str, list[int], bytes, int]]:
    """(role, dtype, shape, bytes, itemsize) for q and scale of one int tensor."""
    q = qt.q.detach().cpu().contiguous()
    qm = qmax_for(qt.bits)
    if q.dtype != torch.int8 or (q.numel() and int(q.abs().max()) > qm):
        raise ValueError(f"{prefix}q must be int8 within +-{qm} for {qt.bits} bits")
    shape = list(q.shape)
    if qt.bits <= 4:
        qb = pack_lowbit(q.numpy(), qt.bits).tobytes()
        qa = (prefix + "q", PACKED, shape, qb, 1)
    else:
        qa = (prefix + "q", "int8", shape, _tensor_bytes(q), 1)
    s = qt.scale.detach().cpu().to(torch.float16).contiguous()
    if tuple(s.shape) != (shape[0],):
        raise ValueError(f"{prefix}scale must have shape [{shape[0]}], got {list(s.shape)}")
    return [qa, (prefix + "scale", "float16", [shape[0]], _tensor_bytes(s), 2)]


def _entry_arrays(name: str, t: Stored) -> tuple[dict, list[tuple[str, str, list[int], bytes, int]]]:
    if isinstance(t, QuantizedTensor):
        entry = {"name": name, "scheme": "int", "bits": t.bits, "shape": list(t.q.shape),
                 "dtype": _dtype_name(t.dtype)}
        arrays = _int_arrays("", t)
        if t.lowrank is not None:
            a, b = t.lowrank
            if a.bits != b.bits or a.q.ndim != 2 or b.q.ndim != 2 or a.q.shape[1] != b.q.shape[0]:
                raise ValueError(f"{name}: LQER factors must be 2-D [out,r] @ [r,in] with equal bits")
            entry["lqer"] = {"rank": int(a.q.shape[1]), "bits": a.bits}
            arrays += _int_arrays("lqer_a.", a) + _int_arrays("lqer_b.", b)
        return entry, arrays
    if isinstance(t, Passthrough):
        data, restore = t.data, t.dtype
    elif isinstance(t, Tensor):
        data, restore = t, t.dtype
    else:
        raise TypeError(f"{name}: expected QuantizedTensor, Passthrough or Tensor, got {type(t).__name__}")
    data = data.detach().cpu().contiguous()
    scheme = _SCHEME_OF.get(data.dtype, "raw")
    entry = {"name": name, "scheme": scheme, "bits": data.element_size() * 8, "shape": list(data.shape),
             "dtype": _dtype_name(restore)}
    return entry, [("data", _dtype_name(data.dtype), list(data.shape), _tensor_bytes(data), data.element_size())]


def _payload(tensors: Mapping[str, Stored], shuffle: bool) -> tuple[list[dict], bytes]:
    entries, chunks, offset = [], [], 0
    for name, t in tensors.items():
        entry, arrays = _entry_arrays(name, t)
        h = hashlib.sha256()
        entry["arrays"] = []
        for role, dtype, shape, data, itemsize in arrays:
            h.update(data)
            entry["arrays"].append({"role": role, "dtype": dtype, "shape": shape, "offset": offset,
                                    "length": len(data)})
            chunks.append(byte_shuffle(data, itemsize) if shuffle else data)
            offset += len(data)
        entry["sha256"] = h.hexdigest()
        entries.append(entry)
    return entries, b"".join(chunks)


def raw_payload(tensors: Mapping[str, Stored], shuffle: bool = False) -> bytes:
    """The uncompressed payload bytes of some tensors (used to estimate per-group compressed size)."""
    return _payload(tensors, shuffle)[1]


def header_overhead(blob: bytes) -> int:
    """Bytes of an artifact that are not compressed payload (prefix + compressed header)."""
    return _PREFIX.size + _PREFIX.unpack_from(blob)[2]


def serialize_artifact(tensors: Mapping[str, Stored], config: dict, meta: dict, codec: str = "zlib",
                       byte_shuffle: bool = False) -> bytes:
    """The artifact as bytes. codec "auto" tries every codec and keeps the smallest file."""
    if codec == "auto":
        blobs = [serialize_artifact(tensors, config, meta, c, byte_shuffle) for c in CODECS]
        return min(blobs, key=len)
    if codec not in CODECS:
        raise ValueError(f"unknown codec '{codec}' (expected {' | '.join(CODECS)} | auto)")
    entries, raw = _payload(tensors, byte_shuffle)
    payload = compress(raw, codec)
    header = {"format": "pgolf-artifact", "version": VERSION, "codec": codec, "byte_shuffle": bool(byte_shuffle),
              "raw_bytes": len(raw), "payload_bytes": len(payload), "config": config, "meta": meta,
              "tensors": entries}
    hraw = json.dumps(header, separators=(",", ":"), sort_keys=False, allow_nan=False).encode("utf-8")
    hblob = compress(hraw, codec)
    return _PREFIX.pack(MAGIC, CODECS.index(codec), len(hblob), len(hraw)) + hblob + payload


def write_artifact(path: str | Path, tensors: Mapping[str, Stored], config: dict, meta: dict,
                   codec: str = "zlib", byte_shuffle: bool = False) -> dict:
    """Write atomically; returns {path, bytes, sha256, codec, byte_shuffle}."""
    data = serialize_artifact(tensors, config, meta, codec, byte_shuffle)
    path = Path(path)
    atomic_write_bytes(path, data)
    return {"path": str(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "codec": CODECS[data[7]], "byte_shuffle": bool(byte_shuffle)}


# ---------------------------------------------------------------------------------------------
# reading

@dataclass
class Artifact:
    tensors: dict[str, Union[QuantizedTensor, Passthrough]]
    config: dict
    meta: dict
    codec: str
    byte_shuffle: bool
    bytes: int
    sha256: str


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_artifact(data: bytes, where: str = "artifact") -> Artifact:
    """Validate and decode artifact bytes. Any problem -> InputError('{where}: ...')."""

    def bad(msg: str) -> InputError:
        return InputError(f"{where}: not a valid pgolf artifact: {msg}")

    if len(data) < _PREFIX.size or data[:7] != MAGIC:
        raise bad(f"bad magic (expected {MAGIC!r} at the start of the file)")
    _, codec_id, hlen, hraw = _PREFIX.unpack_from(data)
    if codec_id >= len(CODECS):
        raise bad(f"unknown codec id {codec_id} (allowed: {', '.join(CODECS)})")
    codec = CODECS[codec_id]
    if hraw > MAX_HEADER_BYTES or _PREFIX.size + hlen > len(data):
        raise bad(f"header length {hlen} (raw {hraw}) exceeds the file or the {MAX_HEADER_BYTES}-byte cap")
    try:
        htext = decompress(data[_PREFIX.size:_PREFIX.size + hlen], codec, hraw)
        if len(htext) != hraw:
            raise CodecError(f"header is {len(htext)} bytes, declared {hraw}")
        header = json.loads(htext.decode("utf-8"))
    except (CodecError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"header unreadable: {e}") from None
    if not isinstance(header, dict) or header.get("format") != "pgolf-artifact":
        raise bad("header is not a pgolf-artifact JSON object")
    if header.get("version") != VERSION:
        raise bad(f"format version {header.get('version')!r} is not supported (expected {VERSION})")
    if header.get("codec") != codec:
        raise bad(f"header codec {header.get('codec')!r} does not match the prefix codec '{codec}'")
    for key, kind in (("config", dict), ("meta", dict), ("tensors", list), ("byte_shuffle", bool)):
        if not isinstance(header.get(key), kind):
            raise bad(f"header field '{key}' must be a {kind.__name__}")
    raw_bytes, payload_bytes = header.get("raw_bytes"), header.get("payload_bytes")
    if not (_is_int(raw_bytes) and _is_int(payload_bytes)) or not 0 <= raw_bytes <= MAX_RAW_BYTES:
        raise bad(f"raw_bytes/payload_bytes must be integers with raw_bytes <= {MAX_RAW_BYTES}")
    start = _PREFIX.size + hlen
    if len(data) - start != payload_bytes:
        raise bad(f"payload is {len(data) - start} bytes, header declares {payload_bytes} (truncated or padded)")
    try:
        raw = decompress(data[start:], codec, raw_bytes)
    except CodecError as e:
        raise bad(f"payload: {e}") from None
    if len(raw) != raw_bytes:
        raise bad(f"payload decompressed to {len(raw)} bytes, header declares {raw_bytes}")

    shuffle = header["byte_shuffle"]
    tensors: dict[str, Union[QuantizedTensor, Passthrough]] = {}
    for i, entry in enumerate(header["tensors"]):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name in tensors:
            raise bad(f"tensor #{i}: missing or duplicate name {name!r}")
        try:
            tensors[name] = _decode_entry(entry, raw, shuffle)
        except (KeyError, TypeError, ValueError) as e:
            raise bad(f"tensor '{name}': {e}") from None
    return Artifact(tensors, header["config"], header["meta"], codec, shuffle, len(data),
                    hashlib.sha256(data).hexdigest())


def _array(spec: object, raw: bytes, shuffle: bool, bits: int = 0) -> tuple[bytes, Tensor]:
    """Validate one array spec; return its unshuffled bytes and the decoded tensor."""
    if not isinstance(spec, dict):
        raise ValueError("array spec must be an object")
    dtype, shape, off, length = spec["dtype"], spec["shape"], spec["offset"], spec["length"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise ValueError(f"bad shape {shape!r}")
    if not (_is_int(off) and _is_int(length)) or off < 0 or length < 0 or off + length > len(raw):
        raise ValueError(f"array offset {off!r} + length {length!r} outside the {len(raw)}-byte payload")
    count = math.prod(shape)
    if dtype == PACKED:
        if not 2 <= bits <= 4:
            raise ValueError(f"packed storage needs 2..4 bits, got {bits}")
        itemsize, expected = 1, packed_nbytes(count, bits)
    elif dtype in DTYPES:
        itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
        expected = count * itemsize
    else:
        raise ValueError(f"dtype {dtype!r} not allowed (allowed: {', '.join(DTYPES)}, {PACKED})")
    if length != expected:
        raise ValueError(f"array length {length} != {expected} bytes for shape {shape} ({dtype})")
    b = raw[off:off + length]
    if shuffle:
        b = byte_unshuffle(b, itemsize)
    if dtype == PACKED:
        vals = unpack_lowbit(np.frombuffer(b, dtype=np.uint8), bits, count)
        return b, torch.from_numpy(vals.copy()).reshape(shape)
    return b, _bytes_tensor(b, DTYPES[dtype], shape)


def _decode_int(prefix: str, arrays: dict, bits: int, shape: list, raw: bytes, shuffle: bool,
                h: "hashlib._Hash") -> QuantizedTensor:
    if not _is_int(bits) or not 2 <= bits <= 8:
        raise ValueError(f"int bits must be 2..8, got {bits!r}")
    qspec, sspec = arrays[prefix + "q"], arrays[prefix + "scale"]
    if qspec["dtype"] not in ("int8", PACKED) or sspec["dtype"] != "float16":
        raise ValueError("int tensors store q as int8/packed and scale as float16")
    qb, q = _array(qspec, raw, shuffle, bits)
    sb, s = _array(sspec, raw, shuffle)
    h.update(qb)
    h.update(sb)
    if list(q.shape) != shape or len(shape) < 2 or list(s.shape) != [shape[0]]:
        raise ValueError(f"q shape {list(q.shape)} / scale shape {list(s.shape)} do not match {shape}")
    qm = qmax_for(bits)
    if q.numel() and int(q.abs().max()) > qm:
        raise ValueError(f"int{bits} values outside +-{qm}")
    return QuantizedTensor(q, s, bits)


def _decode_entry(entry: dict, raw: bytes, shuffle: bool) -> Union[QuantizedTensor, Passthrough]:
    scheme, shape, restore = entry["scheme"], entry["shape"], entry["dtype"]
    if restore not in DTYPES:
        raise ValueError(f"restore dtype {restore!r} not allowed")
    if not isinstance(entry["arrays"], list):
        raise ValueError("'arrays' must be a list")
    arrays = {a["role"]: a for a in entry["arrays"]}
    h = hashlib.sha256()
    if scheme == "int":
        expected_roles = {"q", "scale"}
        qt = _decode_int("", arrays, entry["bits"], shape, raw, shuffle, h)
        if "lqer" in entry:
            lq = entry["lqer"]
            rank, lbits = lq["rank"], lq["bits"]
            if not _is_int(rank) or rank < 1 or len(shape) != 2:
                raise ValueError(f"bad LQER rank {rank!r} for shape {shape}")
            a = _decode_int("lqer_a.", arrays, lbits, [shape[0], rank], raw, shuffle, h)
            b = _decode_int("lqer_b.", arrays, lbits, [rank, shape[1]], raw, shuffle, h)
            qt.lowrank = (a, b)
            expected_roles |= {"lqer_a.q", "lqer_a.scale", "lqer_b.q", "lqer_b.scale"}
        out: Union[QuantizedTensor, Passthrough] = qt
        qt.dtype = DTYPES[restore]
    elif scheme in ("fp16", "fp32", "bf16", "raw"):
        expected_roles = {"data"}
        spec = arrays["data"]
        want = {"fp16": "float16", "fp32": "float32", "bf16": "bfloat16"}.get(scheme)
        if (want and spec["dtype"] != want) or (not want and spec["dtype"] in ("float16", "float32", "bfloat16")):
            raise ValueError(f"scheme {scheme} cannot hold dtype {spec['dtype']!r}")
        b, t = _array(spec, raw, shuffle)
        h.update(b)
        if list(t.shape) != shape:
            raise ValueError(f"data shape {list(t.shape)} != {shape}")
        out = Passthrough(t, DTYPES[restore])
    else:
        raise ValueError(f"unknown scheme {scheme!r} (expected int | fp16 | fp32 | bf16 | raw)")
    if set(arrays) != expected_roles or len(arrays) != len(entry["arrays"]):
        raise ValueError(f"arrays {sorted(arrays)} do not match scheme {scheme} (expected {sorted(expected_roles)})")
    if h.hexdigest() != entry["sha256"]:
        raise ValueError("sha256 mismatch (corrupt payload)")
    return out


def read_artifact_quantized(path: str | Path) -> Artifact:
    """The quantized form (QuantizedTensor / Passthrough per name) plus config, meta, codec, size, sha256."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read artifact: {e.strerror or e}") from None
    return parse_artifact(data, str(path))


def dequantize_all(tensors: Mapping[str, Union[QuantizedTensor, Passthrough]]) -> dict[str, Tensor]:
    return {name: t.dequantize() for name, t in tensors.items()}


def read_artifact(path: str | Path) -> tuple[dict[str, Tensor], dict, dict]:
    """(state dict of dequantized tensors in their original dtypes, model config, metadata)."""
    art = read_artifact_quantized(path)
    return dequantize_all(art.tensors), art.config, art.meta

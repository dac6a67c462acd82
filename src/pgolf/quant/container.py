"""The artifact file: a pickle-free container of quantized tensors.

Layout (little-endian):
    magic     7 bytes   b"PGOLF2\\0"
    codec     6 bytes   the header's codec name, ASCII, NUL-padded
    hdr_size  u32       compressed header bytes
    hdr_raw   u32       uncompressed header bytes (<= 64 MiB)
    header    JSON (utf-8), compressed with that codec
    sections  one compressed stream each, back to back, in header order

The header holds the model config and metadata (opaque JSON from the caller), per tensor its name,
kind (int | fp16 | fp32 | bf16 | raw), bits, shape and restore dtype, and per section its codec, byte
shuffle flag, sizes and the arrays it holds in order ([tensor index, role]). An array's dtype and
length follow from its tensor's entry, so nothing in a file can ask for an arbitrary type or offset.
Roles: q (int values: int8, or packed 2-4 per byte for <= 4 bits), s (fp16 row scales), p (int32 row
order of q, when rows were reordered for compression), aq/as/bq/bs (LQER factors), d (float or raw
data). An int tensor may store q column-major ("cols"). A sha256 of all array bytes guards the payload.

Reading never unpickles; anything malformed raises InputError naming the file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Mapping, Union

import numpy as np
import torch
from torch import Tensor

from pgolf.errors import InputError
from pgolf.quant.codecs import CodecError, byte_unshuffle, compress, decompress, pack_lowbit, packed_nbytes, \
    unpack_lowbit
from pgolf.quant.codecs import byte_shuffle as shuffle_bytes
from pgolf.quant.quantizers import Passthrough, QuantizedTensor, qmax_for

MAGIC = b"PGOLF2\x00"
FORMAT = "pgolf-artifact"
VERSION = 2
_PREFIX = struct.Struct("<7s6sII")
MAX_HEADER_BYTES = 64 << 20
MAX_RAW_BYTES = 4 << 30  # zip-bomb guard on a section's declared size
PLAIN_CODECS = ("zlib", "zstd", "lzma", "brotli")  # what quant.codec="auto" tries

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16, "int32": torch.int32,
    "int64": torch.int64, "bool": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}
FLOAT_KINDS = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}
_KIND_OF = {v: k for k, v in FLOAT_KINDS.items()}

Stored = Union[QuantizedTensor, Passthrough, Tensor]


@dataclass
class Section:
    """One compressed stream: these (tensor name, role) arrays, in order."""

    codec: str
    shuffle: bool
    arrays: list[tuple[str, str]]


@dataclass
class Storage:
    """How an artifact lays out its arrays (the default: one section holding everything)."""

    sections: list[Section]
    perms: dict[str, np.ndarray] = field(default_factory=dict)  # name -> row order of q as stored
    columns: set[str] = field(default_factory=set)  # names whose q is stored column-major


def _bytes(t: Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def roles(t: Stored) -> list[str]:
    """The arrays a stored tensor is written as."""
    if isinstance(t, QuantizedTensor):
        return ["q", "s"] + (["aq", "as", "bq", "bs"] if t.lowrank is not None else [])
    return ["d"]


def _int_arrays(qt: QuantizedTensor, prefix: str = "") -> dict[str, tuple[Tensor, int]]:
    q = qt.q.detach().cpu()
    qm = qmax_for(qt.bits)
    lo = -qm - int(qt.asym)
    if q.dtype != torch.int8 or q.ndim != 2 or (q.numel() and (int(q.max()) > qm or int(q.min()) < lo)):
        raise ValueError(f"{prefix}q must be 2-D int8 within [{lo}, {qm}] for {qt.bits} bits")
    s = qt.scale.detach().cpu().to(torch.float16)
    if tuple(s.shape) != (q.shape[0],):
        raise ValueError(f"{prefix}scale must have shape [{q.shape[0]}], got {list(s.shape)}")
    return {prefix + "q": (q, qt.bits), prefix + "s": (s, 0)}


def _entry(name: str, t: Stored, storage: Storage | None, lqer: bool) -> tuple[dict, dict[str, tuple[Tensor, int]]]:
    """(header entry, role -> (tensor as stored, bits for packing or 0)). storage None: the plain
    layout (no stored row or column orders); lqer False: a writer for tensors without LQER factors."""
    if isinstance(t, QuantizedTensor):
        e = {"name": name, "kind": "int", "bits": t.bits, "shape": list(t.q.shape), "dtype": _NAMES[t.dtype]}
        arrays = _int_arrays(t)
        q = arrays["q"][0]
        if storage is not None and name in storage.perms:
            perm = torch.as_tensor(np.asarray(storage.perms[name]), dtype=torch.int64)
            q = q[perm]
            arrays["p"] = (perm.to(torch.int32), 0)
            e["rows"] = 1
        if storage is not None and name in storage.columns:
            q = q.T
            e["cols"] = 1
        arrays["q"] = (q.contiguous(), t.bits)
        if t.lowrank is not None and not lqer:
            raise ValueError(f"{name}: LQER factors given to a writer without lqer")
        if lqer and t.lowrank is not None:
            a, b = t.lowrank
            if a.asym:  # PR #1855's form: A int2, B int4 in groups (stored [r * in / g, g])
                rank, group = int(a.q.shape[1]), int(b.q.shape[1])
                if (a.bits, b.bits) != (2, 4) or not b.asym or b.q.numel() != rank * t.q.shape[1]:
                    raise ValueError(f"{name}: asym LQER factors must be int2 [out, r] and int4 [r * in / g, g]")
                e["lqer_asym"] = [rank, group]
            elif a.bits != b.bits or a.q.shape[1] != b.q.shape[0]:
                raise ValueError(f"{name}: LQER factors must be [out,r] @ [r,in] with equal bits")
            else:
                e["lqer"] = [int(a.q.shape[1]), a.bits]
            arrays |= _int_arrays(a, "a") | _int_arrays(b, "b")
        return e, arrays
    data, restore = (t.data, t.dtype) if isinstance(t, Passthrough) else (t, t.dtype)
    data = data.detach().cpu().contiguous()
    kind = _KIND_OF.get(data.dtype, "raw")
    e = {"name": name, "kind": kind, "shape": list(data.shape), "dtype": _NAMES[restore]}
    if kind == "raw":
        e["stored"] = _NAMES[data.dtype]
    return e, {"d": (data, 0)}


def _array_bytes(t: Tensor, bits: int, lowbit: bool) -> bytes:
    if lowbit and bits and bits <= 4:
        return pack_lowbit(t.numpy(), bits).tobytes()
    return _bytes(t)


def plain_storage(tensors: Mapping[str, Stored], codec: str, shuffle: bool) -> Storage:
    return Storage([Section(codec, shuffle, [(n, r) for n, t in tensors.items() for r in roles(t)])])


def serialize_artifact(tensors: Mapping[str, Stored], config: dict, meta: dict, codec: str = "zlib",
                       byte_shuffle: bool = False, storage: Storage | None = None,
                       compressed: dict | None = None, lqer: bool = True, lowbit: bool = True) -> bytes:
    """The artifact as bytes. `storage` (sections, row orders, column-major tensors) overrides the
    single-section default; `compressed` holds blobs already made, by (codec, sha256 of the raw section).
    lqer False: no tensor has LQER factors (the counted script's writer then has no LQER code); lowbit
    False: no array has 4 bits or fewer (none is packed, and the packing code can go)."""
    index = {name: i for i, name in enumerate(tensors)}
    entries, arrays = [], []
    for name, t in tensors.items():
        e, a = _entry(name, t, storage, lqer)
        entries.append(e)
        arrays.append(a)
    sha = hashlib.sha256()
    sections, blobs = [], []
    placed = set()
    for sec in (storage or plain_storage(tensors, codec, byte_shuffle)).sections:
        chunks = []
        for name, role in sec.arrays:
            t, bits = arrays[index[name]][role]
            b = _array_bytes(t, bits, lowbit)
            sha.update(b)
            chunks.append(shuffle_bytes(b, t.element_size()) if sec.shuffle and not bits else b)
            placed.add((name, role))
        raw = b"".join(chunks)
        known = (compressed or {}).get((sec.codec, hashlib.sha256(raw).hexdigest())) if compressed else None
        blobs.append(known if known is not None else compress(raw, sec.codec))
        sections.append({"codec": sec.codec, "shuffle": sec.shuffle, "raw": len(raw), "size": len(blobs[-1]),
                         "arrays": [[index[n], r] for n, r in sec.arrays]})
    if len(sections) == 1 and sections[0]["arrays"] == _all_arrays(entries):
        del sections[0]["arrays"]  # the default layout: every array in entry order (saves ~200 bytes)
    missing = [(n, r) for n, a in zip(tensors, arrays) for r in a if (n, r) not in placed]
    if missing:
        raise ValueError(f"storage places no section for {missing[:3]}")
    header = {"format": FORMAT, "version": VERSION, "codec": codec, "config": config, "meta": meta,
              "sha256": sha.hexdigest(), "tensors": entries, "sections": sections}
    hraw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    hcodec = codec if codec in PLAIN_CODECS else "brotli"
    hblob = compress(hraw, hcodec)
    return _PREFIX.pack(MAGIC, hcodec.encode(), len(hblob), len(hraw)) + hblob + b"".join(blobs)


def framing_bytes(blob: bytes) -> int:
    """Bytes of an artifact that are not tensor sections (prefix + compressed header)."""
    return _PREFIX.size + _PREFIX.unpack_from(blob)[2]


def raw_arrays(tensors: Mapping[str, Stored], shuffle: bool = False) -> bytes:
    """The uncompressed, single-section array bytes of some tensors (per-group size estimates)."""
    out = []
    for name, t in tensors.items():
        _, a = _entry(name, t, None, True)
        for role in roles(t):
            arr, bits = a[role]
            b = _array_bytes(arr, bits, True)
            out.append(shuffle_bytes(b, arr.element_size()) if shuffle and not bits else b)
    return b"".join(out)


# ---------------------------------------------------------------------------------------------
# reading

@dataclass
class Artifact:
    tensors: dict[str, Union[QuantizedTensor, Passthrough]]
    config: dict
    meta: dict
    codec: str
    sections: list[dict]  # codec, shuffle, raw and compressed size of each section
    bytes: int
    sha256: str


def parse_artifact(data: bytes, where: str = "artifact", lqer: bool = True, reorder: bool = True,
                   lowbit: bool = True) -> Artifact:
    """Validate and decode artifact bytes. Any problem -> InputError('{where}: not a valid ...').
    lqer / reorder / lowbit False: a reader for artifacts without LQER factors / stored row or column
    orders / arrays of 4 bits or fewer (the counted script reads only its own kind; without reorder,
    sections decode one after another); an entry that has them then fails the layout checks."""
    try:
        return _parse(bytes(data), lqer, reorder, lowbit)
    except KeyError as e:
        raise InputError(f"{where}: not a valid pgolf artifact: missing field {e}") from None
    except (CodecError, ValueError, TypeError, IndexError, RuntimeError, struct.error) as e:
        raise InputError(f"{where}: not a valid pgolf artifact: {e}") from None


def _size(x: object, cap: int, what: str) -> int:
    if type(x) is not int or not 0 <= x <= cap:
        raise ValueError(f"{what} must be an integer in 0..{cap:,}, got {x!r}")
    return x


def _specs(e: dict, lqer: bool = True, reorder: bool = True) -> dict[str, tuple[torch.dtype, list[int], int]]:
    """role -> (dtype, shape, packing bits) of one tensor entry; validates the entry."""
    shape = e["shape"]
    if not isinstance(e["name"], str) or not isinstance(shape, list) or \
            not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"bad tensor entry {str(e)[:80]}")
    kind = e["kind"]
    DTYPES[e["dtype"]]  # the restore dtype must be known
    if kind in FLOAT_KINDS:
        return {"d": (FLOAT_KINDS[kind], shape, 0)}
    if kind == "raw":
        if e["stored"] in ("float16", "float32", "bfloat16"):
            raise ValueError(f"raw tensor '{e['name']}' cannot hold {e['stored']}")
        return {"d": (DTYPES[e["stored"]], shape, 0)}
    if kind != "int":
        raise ValueError(f"unknown kind {kind!r} (expected int | fp16 | fp32 | bf16 | raw)")
    bits = e["bits"]
    if type(bits) is not int or not 2 <= bits <= 8 or len(shape) != 2:
        raise ValueError(f"int tensor '{e['name']}': bits 2..8 and a 2-D shape needed, got {bits!r}, {shape}")
    rows, cols = shape
    out = {"q": (torch.int8, [cols, rows] if reorder and e.get("cols") else shape, bits),
           "s": (torch.float16, [rows], 0)}
    if reorder and e.get("rows"):
        out["p"] = (torch.int32, [rows], 0)
    if not lqer:
        return out
    if "lqer_asym" in e and "lqer" in e:
        raise ValueError(f"'{e['name']}': two LQER specs")
    if "lqer_asym" in e:
        rank, group = e["lqer_asym"]
        if type(rank) is not int or rank < 1 or type(group) is not int or group < 1 or (rank * cols) % group:
            raise ValueError(f"bad asym LQER spec {e['lqer_asym']!r}")
        n = rank * cols // group
        out |= {"aq": (torch.int8, [rows, rank], 2), "as": (torch.float16, [rows], 0),
                "bq": (torch.int8, [n, group], 4), "bs": (torch.float16, [n], 0)}
    if "lqer" in e:
        rank, lbits = e["lqer"]
        if type(rank) is not int or rank < 1 or type(lbits) is not int or not 2 <= lbits <= 8:
            raise ValueError(f"bad LQER spec {e['lqer']!r}")
        out |= {"aq": (torch.int8, [rows, rank], lbits), "as": (torch.float16, [rows], 0),
                "bq": (torch.int8, [rank, cols], lbits), "bs": (torch.float16, [rank], 0)}
    return out


def _all_arrays(entries: list[dict], lqer: bool = True, reorder: bool = True) -> list[list]:
    """[index, role] of every array in entry order: a lone section without an 'arrays' list holds these."""
    return [[i, r] for i, e in enumerate(entries) for r in _specs(e, lqer, reorder)]


def _decode(b: bytes, dtype: torch.dtype, shape: list[int], bits: int, lowbit: bool) -> Tensor:
    count = math.prod(shape)
    if lowbit and bits and bits <= 4:
        return torch.from_numpy(unpack_lowbit(np.frombuffer(b, np.uint8), bits, count)).reshape(shape)
    return torch.frombuffer(bytearray(b), dtype=dtype).reshape(shape) if count else torch.empty(shape, dtype=dtype)


def _int(a: dict, q: str, s: str, bits: int, asym: bool = False) -> QuantizedTensor:
    qm = qmax_for(bits)
    if a[q].numel() and (int(a[q].max()) > qm or int(a[q].min()) < -qm - int(asym)):
        raise ValueError(f"int{bits} values outside [{-qm - int(asym)}, {qm}]")
    return QuantizedTensor(a[q], a[s], bits, asym=asym)


def _build(e: dict, a: dict[str, Tensor], lqer: bool, reorder: bool) -> Union[QuantizedTensor, Passthrough]:
    restore = DTYPES[e["dtype"]]
    if e["kind"] != "int":
        return Passthrough(a["d"], restore)
    if reorder and e.get("cols"):
        a["q"] = a["q"].T.contiguous()
    if reorder and e.get("rows"):
        perm = a["p"].long()
        if not torch.equal(torch.sort(perm).values, torch.arange(len(perm))):
            raise ValueError(f"'{e['name']}': the stored row order is not a permutation")
        q = torch.empty_like(a["q"])
        q[perm] = a["q"]
        a["q"] = q
    qt = _int(a, "q", "s", e["bits"])
    qt.dtype = restore
    if not lqer:
        return qt
    if "lqer" in e:
        qt.lowrank = (_int(a, "aq", "as", e["lqer"][1]), _int(a, "bq", "bs", e["lqer"][1]))
    if "lqer_asym" in e:
        qt.lowrank = (_int(a, "aq", "as", 2, asym=True), _int(a, "bq", "bs", 4, asym=True))
    return qt


def _parse(data: bytes, lqer: bool, reorder: bool, lowbit: bool) -> Artifact:
    if data[:7] != MAGIC:
        raise ValueError(f"bad magic (expected {MAGIC!r} at the start of the file)")
    _, hcodec, hsize, hraw = _PREFIX.unpack_from(data)
    start = _PREFIX.size + hsize
    header = json.loads(decompress(data[_PREFIX.size:start], hcodec.rstrip(b"\0").decode("ascii"),
                                   _size(hraw, MAX_HEADER_BYTES, "the header size")))
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        raise ValueError(f"not a {FORMAT} version {VERSION} header")
    entries = header["tensors"]
    specs = [_specs(e, lqer, reorder) for e in entries]
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names")
    got: list[dict[str, Tensor]] = [{} for _ in entries]
    sha = hashlib.sha256()
    pos, jobs = start, []
    for k, sec in enumerate(header["sections"]):
        size = _size(sec["size"], len(data) - pos, f"section {k} size (truncated file?)")
        jobs.append((data[pos:pos + size], sec["codec"], _size(sec["raw"], MAX_RAW_BYTES, f"section {k} raw size")))
        pos += size
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} bytes after the last section (padded or concatenated)")
    if reorder and len(jobs) > 1:  # a per-group artifact's sections in parallel (codecs release the GIL)
        with ThreadPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as pool:
            raws = list(pool.map(lambda j: decompress(*j), jobs))
    else:
        raws = [decompress(*j) for j in jobs]
    for k, (sec, raw) in enumerate(zip(header["sections"], raws)):
        raw_len = len(raw)
        off = 0
        layout = sec["arrays"] if "arrays" in sec or len(header["sections"]) != 1 else _all_arrays(entries, lqer, reorder)
        for i, role in layout:
            dtype, shape, bits = specs[i][role]
            if role in got[i]:
                raise ValueError(f"'{names[i]}' array {role} stored twice")
            count = math.prod(shape)
            n = packed_nbytes(count, bits) if lowbit and bits and bits <= 4 else count * dtype.itemsize
            b = raw[off:off + n]
            off += n
            if len(b) != n:
                raise ValueError(f"section {k} ends inside '{names[i]}' ({role})")
            if sec["shuffle"] and not bits:
                b = byte_unshuffle(b, dtype.itemsize)
            sha.update(b)
            got[i][role] = _decode(b, dtype, shape, bits, lowbit)
        if off != raw_len:
            raise ValueError(f"section {k} holds {raw_len - off} bytes beyond its arrays")
    if sha.hexdigest() != header["sha256"]:
        raise CodecError("sha256 mismatch (corrupt payload)")  # a CodecError: the counted script keeps it
    for i, e in enumerate(entries):
        if set(got[i]) != set(specs[i]):
            raise ValueError(f"'{names[i]}' is missing arrays {sorted(set(specs[i]) - set(got[i]))}")
    tensors = {e["name"]: _build(e, got[i], lqer, reorder) for i, e in enumerate(entries)}
    if not isinstance(header["config"], dict) or not isinstance(header["meta"], dict):
        raise ValueError("config and meta must be JSON objects")
    sections = [{k: s[k] for k in ("codec", "shuffle", "raw", "size")} for s in header["sections"]]
    return Artifact(tensors, header["config"], header["meta"], header["codec"], sections, len(data),
                    hashlib.sha256(data).hexdigest())


def dequantize_all(tensors: Mapping[str, Union[QuantizedTensor, Passthrough]]) -> dict[str, Tensor]:
    return {name: t.dequantize() for name, t in tensors.items()}

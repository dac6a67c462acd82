"""Codecs, byte shuffle, low-bit packing and the artifact container (roundtrip + hostile input)."""
import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from pgolf.errors import InputError
from pgolf.quant.codecs import (CODECS, CodecError, best_codec, byte_shuffle, byte_unshuffle, compress, decompress,
                                pack_lowbit, unpack_lowbit)
from pgolf.quant.container import (MAGIC, parse_artifact, read_artifact, read_artifact_quantized,
                                   serialize_artifact, write_artifact)
from pgolf.quant.lqer import lowrank_factors
from pgolf.quant.quantizers import Passthrough, QuantizedTensor, quantize


def _tensors():
    g = torch.Generator().manual_seed(0)
    w6 = torch.randn(40, 24, generator=g) * 0.05
    w3 = torch.randn(16, 24, generator=g) * 0.05
    q6, s6 = quantize(w6, 6, "sdclip", 12.85, 0.0)
    q3, s3 = quantize(w3, 3, "mse", 0.0, 0.0)
    qt3 = QuantizedTensor(q3, s3, 3)
    qt3.lowrank = lowrank_factors(w3 - qt3.dequantize(), 2, 2)
    return {
        "blocks.0.mlp.fc.weight": QuantizedTensor(q6, s6, 6, torch.float32),
        "blocks.0.attn.c_q.weight": qt3,
        "blocks.0.attn_scale": Passthrough(torch.randn(24, generator=g), torch.float32),
        "blocks.0.norm": Passthrough(torch.randn(24, generator=g).half(), torch.float32),
        "bf": torch.randn(3, 5, generator=g).bfloat16(),
        "step": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
    }


def test_byte_shuffle_layout_and_inverse():
    a = np.arange(6, dtype="<u2")  # bytes 00 00 01 00 02 00 ...
    sh = byte_shuffle(a.tobytes(), 2)
    assert sh == bytes([0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0])
    data = os.urandom(4 * 33)
    for k in (1, 2, 4, 8):
        assert byte_unshuffle(byte_shuffle(data[: len(data) // k * k], k), k) == data[: len(data) // k * k]


def test_codecs_roundtrip_best_and_caps():
    data = os.urandom(2000) + bytes(50_000)
    sizes = {}
    for c in CODECS:
        blob = compress(data, c)
        sizes[c] = len(blob)
        assert decompress(blob, c, len(data)) == data
        with pytest.raises(CodecError):
            decompress(blob, c, len(data) - 1)  # output cap (zip-bomb guard)
        with pytest.raises(CodecError):
            decompress(blob[: len(blob) // 2], c, len(data))  # truncated
    name, blob = best_codec(data)
    assert len(blob) == min(sizes.values()) and sizes[name] == len(blob)
    with pytest.raises(CodecError):
        compress(data, "gzip")


@pytest.mark.parametrize("bits", range(2, 9))
def test_lowbit_pack_roundtrip(bits):
    qm = 2 ** (bits - 1) - 1
    q = np.random.default_rng(bits).integers(-qm, qm + 1, size=1001).astype(np.int8)
    assert np.array_equal(unpack_lowbit(pack_lowbit(q, bits), bits, q.size), q)


def _assert_same(a, b):
    if isinstance(a, QuantizedTensor):
        assert isinstance(b, QuantizedTensor) and a.bits == b.bits and a.dtype == b.dtype
        assert torch.equal(a.q, b.q) and torch.equal(a.scale, b.scale)
        assert (a.lowrank is None) == (b.lowrank is None)
        if a.lowrank:
            for x, y in zip(a.lowrank, b.lowrank):
                _assert_same(x, y)
    else:
        data = a.data if isinstance(a, Passthrough) else a
        assert b.data.dtype == data.dtype and torch.equal(b.data, data)
        assert b.dtype == (a.dtype if isinstance(a, Passthrough) else a.dtype)


@pytest.mark.parametrize("codec", CODECS + ("auto",))
@pytest.mark.parametrize("shuffle", [False, True])
def test_container_roundtrip_bit_exact(tmp_path, codec, shuffle):
    tensors = _tensors()
    cfg, meta = {"model_dim": 24, "nested": {"a": [1, 2]}}, {"seed": 1, "note": "x"}
    p = tmp_path / "m.pgolf"
    info = write_artifact(p, tensors, cfg, meta, codec, shuffle)
    raw = p.read_bytes()
    assert info["bytes"] == len(raw) and raw[:7] == MAGIC
    import hashlib
    assert info["sha256"] == hashlib.sha256(raw).hexdigest()
    assert codec == "auto" or info["codec"] == codec
    art = read_artifact_quantized(p)
    assert art.config == cfg and art.meta == meta and art.byte_shuffle == shuffle and art.bytes == len(raw)
    assert list(art.tensors) == list(tensors)
    for k in tensors:
        _assert_same(tensors[k], art.tensors[k])
    sd, cfg2, meta2 = read_artifact(p)
    assert sd["blocks.0.norm"].dtype == torch.float32
    assert torch.equal(sd["blocks.0.mlp.fc.weight"], tensors["blocks.0.mlp.fc.weight"].dequantize())
    assert torch.equal(sd["blocks.0.attn.c_q.weight"], tensors["blocks.0.attn.c_q.weight"].dequantize())
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


def test_auto_codec_is_smallest():
    t = _tensors()
    sizes = [len(serialize_artifact(t, {}, {}, c)) for c in CODECS]
    assert len(serialize_artifact(t, {}, {}, "auto")) == min(sizes)


# ---------------------------------------------------------------------------------------------
# hostile / broken files

def _split(blob):
    magic, cid, hlen, hraw = struct.unpack_from("<7sBII", blob)
    header = json.loads(decompress(blob[16:16 + hlen], CODECS[cid], hraw))
    return cid, header, blob[16 + hlen:]


def _join(cid, header, payload):
    h = json.dumps(header).encode()
    hb = compress(h, CODECS[cid])
    return struct.pack("<7sBII", MAGIC, cid, len(hb), len(h)) + hb + payload


def _expect(blob, words):
    with pytest.raises(InputError) as e:
        parse_artifact(blob, "bad.pgolf")
    assert "bad.pgolf" in str(e.value)
    assert any(w in str(e.value) for w in words), str(e.value)


def test_malformed_artifacts_rejected():
    blob = serialize_artifact(_tensors(), {}, {}, "zlib")
    _expect(b"XXXXXXX" + blob[7:], ["magic"])
    _expect(blob[:10], ["magic"])
    _expect(blob[:-1], ["truncated", "payload"])
    _expect(blob + b"\0", ["payload"])
    _expect(blob[:7] + bytes([9]) + blob[8:], ["codec"])  # unknown codec id
    flipped = bytearray(blob)
    flipped[-20] ^= 0xFF
    _expect(bytes(flipped), ["corrupt", "sha256", "payload"])

    cid, header, payload = _split(blob)
    # a payload byte changed and re-compressed: only the per-tensor sha256 can notice
    raw = bytearray(decompress(payload, "zlib", header["raw_bytes"]))
    raw[header["tensors"][0]["arrays"][0]["offset"] + 3] ^= 0x01
    tampered = compress(bytes(raw), "zlib")
    _expect(_join(cid, dict(header, payload_bytes=len(tampered)), tampered), ["sha256"])

    def mutated(fn):
        h = json.loads(json.dumps(header))
        fn(h)
        return _join(cid, h, payload)

    _expect(mutated(lambda h: h["tensors"][0]["arrays"][0].update(offset=h["raw_bytes"])), ["outside"])
    _expect(mutated(lambda h: h["tensors"][0]["arrays"][0].update(offset=-1)), ["outside"])
    _expect(mutated(lambda h: h["tensors"][0]["arrays"][0].update(length=5)), ["length"])
    _expect(mutated(lambda h: h["tensors"][0]["arrays"][0].update(dtype="object")), ["int8/packed"])
    _expect(mutated(lambda h: h["tensors"][2]["arrays"][0].update(dtype="object")), ["not allowed", "cannot hold"])
    _expect(mutated(lambda h: h.update(codec="pickle")), ["codec"])
    _expect(mutated(lambda h: h.update(version=99)), ["version"])
    _expect(mutated(lambda h: h.update(raw_bytes=h["raw_bytes"] - 1)), ["exceeds", "declared"])
    _expect(mutated(lambda h: h.update(raw_bytes=1 << 40)), ["raw_bytes"])
    _expect(mutated(lambda h: h["tensors"].append(dict(h["tensors"][0]))), ["duplicate"])
    _expect(mutated(lambda h: h["tensors"][0].update(scheme="pickle")), ["scheme"])
    _expect(mutated(lambda h: h["tensors"][0].update(bits=9)), ["bits"])
    _expect(mutated(lambda h: h.pop("tensors")), ["tensors"])
    hjson = b"{not json"
    hb = compress(hjson, "zlib")
    _expect(struct.pack("<7sBII", MAGIC, cid, len(hb), len(hjson)) + hb + payload, ["header"])


def test_zip_bomb_payload_rejected():
    cid, header, _ = _split(serialize_artifact({"x": torch.zeros(4)}, {}, {}, "zlib"))
    bomb = compress(bytes(50 << 20), "zlib")  # 50 MB of zeros, header declares 16 bytes
    header["payload_bytes"] = len(bomb)
    _expect(_join(cid, header, bomb), ["exceeds"])


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (self.marker, "w"))


def test_pickle_payload_is_never_executed(tmp_path):
    marker = tmp_path / "PWNED"
    pkl = tmp_path / "evil.pgolf"
    pkl.write_bytes(pickle.dumps({"w": _Evil(str(marker))}))
    pt = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "evil": _Evil(str(marker))}, pt)
    # a pickle smuggled behind a valid magic is still not unpickled
    smuggled = tmp_path / "smuggled.pgolf"
    smuggled.write_bytes(MAGIC + pickle.dumps(_Evil(str(marker))))
    for p in (pkl, pt, smuggled):
        with pytest.raises(InputError) as e:
            read_artifact(p)
        assert str(p) in str(e.value)
    assert not marker.exists()
    with pytest.raises(InputError):
        read_artifact(tmp_path / "missing.pgolf")

"""Codecs, byte shuffle, low-bit packing and the artifact container (roundtrip + hostile input)."""
import hashlib
import json
import os
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch

from pgolf.config import QuantConfig, QuantGroup
from pgolf.errors import InputError
from pgolf.eval.artifact import load_artifact
from pgolf.quant.budget import serialize
from pgolf.quant.codecs import (CODECS, CodecError, best_codec, byte_shuffle, byte_unshuffle, compress, decompress,
                                pack_lowbit, unpack_lowbit)
from pgolf.quant.container import (MAGIC, PLAIN_CODECS, Section, Storage, framing_bytes, parse_artifact, roles,
                                   serialize_artifact)
from pgolf.quant.lqer import lowrank_factors
from pgolf.quant.pergroup import l1_order, pergroup_storage, role_of
from pgolf.quant.quantizers import Passthrough, QuantizedTensor, quantize

PREFIX = struct.Struct("<7s6sII")


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
        "blocks.1.mlp.fc.weight": QuantizedTensor(q6.flip(0), s6.flip(0), 6, torch.bfloat16),
        "blocks.0.attn.c_q.weight": qt3,
        "blocks.0.attn_scale": Passthrough(torch.randn(24, generator=g), torch.float32),
        "blocks.0.norm": Passthrough(torch.randn(24, generator=g).half(), torch.float32),
        "bf": torch.randn(3, 5, generator=g).bfloat16(),
        "step": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
    }


def test_byte_shuffle_layout_and_inverse():
    a = np.arange(6, dtype="<u2")  # bytes 00 00 01 00 02 00 ...
    assert byte_shuffle(a.tobytes(), 2) == bytes([0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0])
    data = os.urandom(4 * 33)
    for k in (1, 2, 4, 8):
        n = len(data) // k * k
        assert byte_unshuffle(byte_shuffle(data[:n], k), k) == data[:n]


@pytest.mark.parametrize("codec", list(CODECS))
def test_codec_roundtrip_and_declared_size(codec):
    data = os.urandom(2000) + bytes(3 << 20 if codec == "brotli" else 50_000)  # brotli: several output chunks
    blob = compress(data, codec)
    assert decompress(blob, codec, len(data)) == data
    with pytest.raises(CodecError):
        decompress(blob, codec, len(data) - 1)  # declared smaller: refused (zip-bomb guard)
    with pytest.raises(CodecError):
        decompress(blob, codec, len(data) + 1)  # declared larger
    with pytest.raises(CodecError):
        decompress(blob[: len(blob) // 2], codec, len(data))  # truncated


def test_best_codec_and_unknown():
    data = bytes(range(256)) * 64
    name, blob = best_codec(data, PLAIN_CODECS)
    assert len(blob) == min(len(compress(data, c)) for c in PLAIN_CODECS) and compress(data, name) == blob
    with pytest.raises(CodecError, match="unknown codec"):
        compress(data, "gzip")


def test_bomb_stops_at_the_declared_size():
    bomb = zlib.compress(bytes(200 << 20), 9)  # 200 MB of zeros in ~200 KB
    with pytest.raises(CodecError, match="more"):
        decompress(bomb, "zlib", 16)


@pytest.mark.parametrize("bits", range(2, 9))
def test_lowbit_pack_roundtrip(bits):
    qm = 2 ** (bits - 1) - 1
    q = np.random.default_rng(bits).integers(-qm, qm + 1, size=1001).astype(np.int8)
    assert np.array_equal(unpack_lowbit(pack_lowbit(q, bits), bits, q.size), q)


def _assert_same(a, b):
    if isinstance(a, QuantizedTensor):
        assert isinstance(b, QuantizedTensor) and a.bits == b.bits and a.dtype == b.dtype
        assert torch.equal(a.q, b.q) and torch.equal(a.scale.half(), b.scale)
        assert (a.lowrank is None) == (b.lowrank is None)
        for x, y in zip(a.lowrank or (), b.lowrank or ()):
            _assert_same(x, y)
    else:
        data = a.data if isinstance(a, Passthrough) else a
        assert b.data.dtype == data.dtype and torch.equal(b.data, data)
        assert b.dtype == a.dtype


@pytest.mark.parametrize("codec", PLAIN_CODECS)
@pytest.mark.parametrize("shuffle", [False, True])
def test_container_roundtrip_bit_exact(codec, shuffle):
    tensors = _tensors()
    cfg, meta = {"model_dim": 24, "nested": {"a": [1, 2]}}, {"seed": 1, "note": "x"}
    blob = serialize_artifact(tensors, cfg, meta, codec, shuffle)
    art = parse_artifact(blob)
    assert blob[:7] == MAGIC and art.bytes == len(blob) and art.sha256 == hashlib.sha256(blob).hexdigest()
    assert art.config == cfg and art.meta == meta and list(art.tensors) == list(tensors)
    assert [s["shuffle"] for s in art.sections] == [shuffle]
    for k in tensors:
        _assert_same(tensors[k], art.tensors[k])
    assert torch.equal(art.tensors["blocks.0.attn.c_q.weight"].dequantize(),
                       tensors["blocks.0.attn.c_q.weight"].dequantize())


def test_auto_codec_is_smallest():
    t = _tensors()
    blob, _ = serialize(t, {}, {}, QuantConfig(lqer_rank=4), "auto")  # (t holds LQER factors)
    assert len(blob) == min(len(serialize_artifact(t, {}, {}, c)) for c in PLAIN_CODECS)


def test_sections_row_orders_and_column_major_roundtrip():
    t = _tensors()
    names = ["blocks.0.mlp.fc.weight", "blocks.1.mlp.fc.weight"]
    rest = [(n, r) for n, r in [(n, r) for n in t for r in (["q", "s"] if isinstance(t[n], QuantizedTensor)
                                                             else ["d"])] if (n, r) not in {(m, "q") for m in names}]
    rest += [(n, r) for r in ("aq", "as", "bq", "bs") for n in ["blocks.0.attn.c_q.weight"]]
    perm = np.random.default_rng(0).permutation(40)
    storage = Storage([Section("brotli", True, rest + [(names[0], "p")]), Section("ppmd", False, [(n, "q") for n in names])],
                      perms={names[0]: perm}, columns={names[0], names[1]})
    art = parse_artifact(serialize_artifact(t, {}, {}, "brotli", True, storage))
    for k in t:
        _assert_same(t[k], art.tensors[k])
    assert [s["codec"] for s in art.sections] == ["brotli", "ppmd"]
    with pytest.raises(ValueError, match="no section"):
        serialize_artifact(t, {}, {}, "brotli", True, Storage([Section("brotli", True, rest)]))


def test_sections_decode_alike_in_parallel_or_in_turn():
    t = _tensors()
    storage = Storage([Section("brotli", True, [(n, r) for n in list(t)[:2] for r in roles(t[n])]),
                       Section("zlib", False, [(n, r) for n in list(t)[2:] for r in roles(t[n])])])
    blob = serialize_artifact(t, {}, {}, "brotli", True, storage)
    for reorder in (True, False):  # the counted script's reader decodes sections one after another
        art = parse_artifact(blob, lqer=True, reorder=reorder)
        for k in t:
            _assert_same(t[k], art.tensors[k])


def test_a_writer_without_lqer_refuses_lqer_factors():
    t = _tensors()
    assert any(isinstance(v, QuantizedTensor) and v.lowrank is not None for v in t.values())
    with pytest.raises(ValueError, match="LQER factors given to a writer without lqer"):
        serialize_artifact(t, {}, {}, "zlib", lqer=False)
    plain = {k: v for k, v in t.items() if not (isinstance(v, QuantizedTensor) and v.lowrank is not None)}
    assert serialize_artifact(plain, {}, {}, "zlib", lqer=False) == serialize_artifact(plain, {}, {}, "zlib")


def test_a_reader_and_writer_without_low_bits_agree_on_wider_arrays():
    t = {k: v for k, v in _tensors().items() if k != "blocks.0.attn.c_q.weight"}  # 6-bit and floats only
    blob = serialize_artifact(t, {}, {}, "zlib", lqer=False, lowbit=False)
    assert blob == serialize_artifact(t, {}, {}, "zlib")  # nothing of 4 bits or fewer: the same bytes
    for lowbit in (False, True):
        art = parse_artifact(blob, lqer=False, reorder=False, lowbit=lowbit)
        for k in t:
            _assert_same(t[k], art.tensors[k])
    assert not QuantConfig().packs_low_bits and QuantConfig(lqer_rank=2).packs_low_bits
    assert QuantConfig(groups=(QuantGroup(pattern="blocks.*", bits=4), QuantGroup())).packs_low_bits


def test_pergroup_groups_roles_and_roundtrips():
    t = _tensors()
    memo: dict = {}
    storage, report = pergroup_storage(t, ("brotli", "ppmd", "zpaq"), ("mlp.*",), memo)
    assert role_of("blocks.11.mlp.fc.weight") == "mlp.fc.weight" and role_of("tok_emb.weight") == "tok_emb.weight"
    fc = next(r for r in report if r["group"] == "mlp.fc.weight")
    assert fc["tensors"] == 2 and fc["sorted"] and fc["compressed_bytes"] == min(fc["candidates"].values())
    assert not any(r["group"] == "attn.c_q.weight" for r in report)  # 3-bit values stay packed, in the remainder
    blob = serialize_artifact(t, {}, {}, "pergroup", True, storage, memo)
    art = parse_artifact(blob)
    assert art.codec == "pergroup" and art.sections[0]["codec"] == "brotli"
    for k in t:
        _assert_same(t[k], art.tensors[k])


def test_l1_order_is_a_nearest_neighbour_chain():
    x = torch.tensor([[0, 0], [10, 10], [1, 0], [9, 10], [2, 1]], dtype=torch.int8)
    assert l1_order(x).tolist() == [0, 2, 4, 3, 1]


# ---------------------------------------------------------------------------------------------
# hostile / broken files

def _split(blob):
    _, hcodec, hsize, hraw = PREFIX.unpack_from(blob)
    codec = hcodec.rstrip(b"\0").decode()
    header = json.loads(decompress(blob[PREFIX.size:PREFIX.size + hsize], codec, hraw))
    return codec, header, blob[PREFIX.size + hsize:]


def _join(codec, header, payload, magic=MAGIC):
    h = json.dumps(header).encode()
    hb = compress(h, codec)
    return PREFIX.pack(magic, codec.encode(), len(hb), len(h)) + hb + payload


def _expect(blob, words):
    with pytest.raises(InputError) as e:
        parse_artifact(blob, "bad.pgolf")
    assert "bad.pgolf" in str(e.value) and "not a valid pgolf artifact" in str(e.value)
    assert any(w in str(e.value) for w in words), str(e.value)


def test_malformed_artifacts_rejected():
    blob = serialize_artifact(_tensors(), {}, {}, "zlib", True)
    _expect(b"XXXXXXX" + blob[7:], ["magic"])
    _expect(b"PGOLF1\x00" + blob[7:], ["magic"])  # the old format is refused, never guessed at
    _expect(blob[:10], ["unpack", "buffer"])
    _expect(blob[:-1], ["truncated"])
    _expect(blob + b"\0", ["after the last section"])
    _expect(blob[:7] + b"pickle" + blob[13:], ["unknown codec"])
    flipped = bytearray(blob)
    flipped[-20] ^= 0xFF
    _expect(bytes(flipped), ["corrupt", "sha256", "truncated", "decodes"])

    codec, header, payload = _split(blob)
    # a payload byte changed and re-compressed: only the sha256 can notice
    raw = bytearray(decompress(payload, "zlib", header["sections"][0]["raw"]))
    raw[3] ^= 0x01
    tampered = compress(bytes(raw), "zlib")
    sec = dict(header["sections"][0], size=len(tampered))
    _expect(_join(codec, dict(header, sections=[sec]), tampered), ["sha256"])

    # a lone section in the default layout lists no arrays: every array, in entry order
    assert "arrays" not in header["sections"][0]
    def roles(e):
        if e["kind"] != "int":
            return ["d"]
        return ["q", "s"] + ["p"] * bool(e.get("rows")) + ["aq", "as", "bq", "bs"] * ("lqer" in e)
    layout = [[i, r] for i, e in enumerate(header["tensors"]) for r in roles(e)]
    listed = parse_artifact(_join(codec, dict(header, sections=[dict(header["sections"][0], arrays=layout)]), payload))
    assert all(torch.equal(listed.tensors[k].dequantize(), t.dequantize()) for k, t in parse_artifact(blob).tensors.items())

    def mutated(fn):
        h = json.loads(json.dumps(header))
        h["sections"][0]["arrays"] = [list(a) for a in layout]
        fn(h)
        return _join(codec, h, payload)

    def sec0(**kw):
        return lambda h: h["sections"][0].update(**kw)

    def ent0(**kw):
        return lambda h: h["tensors"][0].update(**kw)

    _expect(mutated(sec0(raw=header["sections"][0]["raw"] - 1)), ["more"])
    _expect(mutated(sec0(raw=1 << 40)), ["raw size"])
    _expect(mutated(sec0(size=-1)), ["size"])
    _expect(mutated(sec0(codec="pickle")), ["unknown codec"])
    _expect(mutated(lambda h: h["sections"][0]["arrays"].append([0, "q"])), ["twice"])
    _expect(mutated(lambda h: h["sections"][0]["arrays"].pop(-2)), ["beyond its arrays"])
    _expect(mutated(lambda h: h["sections"][0]["arrays"].__setitem__(0, [0, "zz"])), ["zz"])
    _expect(mutated(lambda h: h["sections"][0]["arrays"].__setitem__(0, [99, "q"])), ["index"])
    _expect(mutated(ent0(kind="pickle")), ["kind"])
    _expect(mutated(ent0(bits=9)), ["bits"])
    _expect(mutated(ent0(shape=[40, -24])), ["bad tensor entry"])
    _expect(mutated(ent0(dtype="object")), ["object"])
    _expect(mutated(ent0(rows=1)), ["missing arrays"])
    _expect(mutated(lambda h: h["tensors"][6].update(stored="float32")), ["cannot hold"])
    _expect(mutated(lambda h: h["tensors"].append(dict(h["tensors"][0]))), ["duplicate"])
    _expect(mutated(lambda h: h.pop("tensors")), ["missing field 'tensors'"])
    _expect(mutated(lambda h: h.update(version=1)), ["version"])
    _expect(mutated(lambda h: h.update(meta=[1])), ["JSON objects"])
    hjson = b"{not json"
    hb = compress(hjson, "zlib")
    _expect(PREFIX.pack(MAGIC, b"zlib", len(hb), len(hjson)) + hb + payload, ["Expecting"])


def test_a_stored_row_order_must_be_a_permutation():
    t = {"blocks.0.mlp.fc.weight": _tensors()["blocks.0.mlp.fc.weight"]}
    bad = np.zeros(40, dtype=np.int64)  # every row from row 0: not a permutation
    storage = Storage([Section("zlib", False, [("blocks.0.mlp.fc.weight", r) for r in ("q", "s", "p")])],
                      perms={"blocks.0.mlp.fc.weight": bad})
    _expect(serialize_artifact(t, {}, {}, "zlib", False, storage), ["not a permutation"])


def test_framing_is_the_prefix_and_header():
    blob = serialize_artifact(_tensors(), {}, {}, "brotli", True)
    codec, header, payload = _split(blob)
    assert framing_bytes(blob) == len(blob) - len(payload) == len(blob) - sum(s["size"] for s in header["sections"])


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
    smuggled = tmp_path / "smuggled.pgolf"  # a pickle behind a valid magic is still not unpickled
    smuggled.write_bytes(MAGIC + pickle.dumps(_Evil(str(marker))))
    for p in (pkl, pt, smuggled):
        with pytest.raises(InputError) as e:
            load_artifact(p)
        assert str(p) in str(e.value)
    assert not marker.exists()
    with pytest.raises(InputError):
        load_artifact(tmp_path / "missing.pgolf")


def _record_asym_pack(A, B, g):
    """PR #1855's asymmetric LQER pack, written out independently for comparison."""
    sA = (A.abs().max().clamp_min(1e-10) / 1.5).half()
    qA = torch.clamp(torch.round(A / sA.float()), -2, 1).to(torch.int8)
    Bf = B.reshape(-1, g)
    sB = (Bf.abs().amax(dim=-1).clamp_min(1e-10) / 7.5).half()
    qB = torch.clamp(torch.round(Bf / sB.float()[:, None]), -8, 7).to(torch.int8)
    return qA, sA, qB, sB


def test_asym_lqer_matches_the_record_and_round_trips():
    from pgolf.quant.lqer import apply_lqer, factors

    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 128, generator=g)
    q, s = quantize(w, 6, "percentile", 100.0)
    err = w - QuantizedTensor(q, s, 6).dequantize()
    a, b = factors(err, 4, 4, "asym", 64)
    U, S, Vh = torch.linalg.svd(err, full_matrices=False)
    qA, sA, qB, sB = _record_asym_pack(U[:, :4] * S[:4], Vh[:4], 64)
    assert torch.equal(a.q, qA) and torch.equal(b.q, qB) and torch.equal(b.scale, sB)
    assert torch.equal(a.scale, sA.expand(96)) and -2 <= int(a.q.min()) and int(a.q.max()) <= 1
    a.q[0, 0], b.q[0, 0] = -2, -8  # the bottom of each asymmetric grid
    qA[0, 0], qB[0, 0] = -2, -8
    qt = QuantizedTensor(q, s, 6, lowrank=(a, b))
    want = w - err + (qA.float() * sA.float()) @ (qB.float() * sB.float()[:, None]).reshape(4, 128)
    torch.testing.assert_close(qt.dequantize(), want)
    blob = serialize_artifact({"w": qt}, {}, {}, "zlib")
    back = parse_artifact(blob).tensors["w"]
    assert back.lowrank[0].asym and torch.equal(back.dequantize(), qt.dequantize())
    # -2 is legal only for the asym grid, and a group that does not divide r * in is refused
    h = json.loads(json.dumps(_split(blob)[1]))
    h["tensors"][0]["lqer"] = [4, 2]
    with pytest.raises(InputError, match="LQER"):
        parse_artifact(_join(_split(blob)[0], h, _split(blob)[2]))
    h["tensors"][0].pop("lqer")
    h["tensors"][0]["lqer_asym"] = [4, 48]
    with pytest.raises(InputError, match="asym LQER"):
        parse_artifact(_join(_split(blob)[0], h, _split(blob)[2]))
    # the correction helps, and a B that does not split into groups falls back to the record's per-row form
    ratios = apply_lqer({"w": QuantizedTensor(q, s, 6)}, {"w": w}, 4, 4, form="asym", group=64)
    assert ratios["w"] < 1.0
    a2, b2 = factors(err[:, :100], 4, 4, "asym", 64)
    assert not a2.asym and b2.q.shape == (4, 100)

"""val_bpb byte counts, `pgolf data inspect`, tokenizer training and the checks on bad shards/tokenizers."""
from __future__ import annotations

import json
import shutil

from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from pgolf.cli import main
from pgolf.data.corpus import iter_documents
from pgolf.data.inspect import inspect_dir
from pgolf.data.build import build_shards
from pgolf.data.shards import HEADER_BYTES, read_header, read_shard, write_shard
from pgolf.data.tokenizer import SPACE, byte_tables, load_tokenizer

VAL_BYTES = 2_504_310


def _inspect_json(capsys, *argv) -> dict:
    assert main(["data", "inspect", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("vocab", [1024, 8192])
def test_lut_bytes_equal_utf8_bytes_of_decoded_docs_and_inspect(shared_dir, val_docs, capsys, vocab):
    model = shared_dir / "tokenizers" / f"fineweb_{vocab}_bpe.model"
    shard_dir = shared_dir / "fineweb" / f"sp{vocab}"
    sp = load_tokenizer(model)
    tokens = np.asarray(read_shard(shard_dir / "fineweb_val_000000.bin", vocab), dtype=np.int64)
    # Independent count: decode each doc (split at BOS) and count its UTF-8 bytes.
    bos = np.flatnonzero(tokens == 1).tolist() + [len(tokens)]
    decoded = [sp.decode(tokens[a + 1: b].tolist()) for a, b in zip(bos[:-1], bos[1:])]
    assert len(decoded) == 901
    assert decoded == list(iter_documents([val_docs]))
    utf8 = sum(len(t.encode("utf-8")) for t in decoded)
    assert utf8 == VAL_BYTES
    assert byte_tables(sp).stream_bytes(tokens) == VAL_BYTES
    r = _inspect_json(capsys, shard_dir, "--tokenizer", model)
    val = r["splits"]["val"]
    assert val == {"shards": 1, "tokens": len(tokens), "docs": 901, "bytes": VAL_BYTES, "bytes_source": "tokenizer",
                   "bytes_per_token": pytest.approx(VAL_BYTES / len(tokens)), "max_token_id": int(tokens.max())}
    assert r["splits"]["train"]["shards"] == 0 and r["dir"] == str(shard_dir)


def test_inspect_chunks_and_shard_boundaries_do_not_change_bytes(shared_dir, sp1024_model, tmp_path, monkeypatch):
    tokens = np.asarray(read_shard(shared_dir / "fineweb" / "sp1024" / "fineweb_val_000000.bin"))
    # Cut mid-document so the carried previous token matters at each boundary.
    for i, (a, b) in enumerate([(0, 333_333), (333_333, 700_001), (700_001, len(tokens))]):
        write_shard(tmp_path / f"fineweb_val_{i:06d}.bin", tokens[a:b])
    write_shard(tmp_path / "fineweb_train_000000.bin", tokens[5:1000])
    import pgolf.data.inspect as insp

    monkeypatch.setattr(insp, "CHUNK", 100_003)
    r = inspect_dir(tmp_path, sp1024_model)
    assert r["splits"]["val"]["bytes"] == VAL_BYTES and r["splits"]["val"]["shards"] == 3
    tables = byte_tables(load_tokenizer(sp1024_model))
    assert r["splits"]["train"]["bytes"] == tables.stream_bytes(tokens[5:1000])
    assert r["splits"]["train"]["docs"] == int(np.count_nonzero(tokens[5:1000] == 1))


def test_inspect_uses_manifest_tokenizer(tmp_path, val_docs, sp8192_model, capsys):
    out = tmp_path / "out"
    assert main(["data", "build", str(val_docs), "--tokenizer", str(sp8192_model), "--out", str(out),
                 "--val-docs", "901", "--workers", "1"]) == 0
    capsys.readouterr()
    r = _inspect_json(capsys, out)
    # The manifest records the resolved path (../shared may be a symlink).
    assert Path(r["tokenizer"]).resolve() == sp8192_model.resolve() and r["splits"]["val"]["bytes"] == VAL_BYTES
    # Without a tokenizer anywhere, counts still come out but bytes are unknown.
    (out / "manifest.json").unlink()
    r = _inspect_json(capsys, out)
    assert r["tokenizer"] is None and r["splits"]["val"]["bytes"] is None and r["splits"]["val"]["docs"] == 901
    assert main(["data", "inspect", str(out)]) == 0
    assert "bytes not computed" in capsys.readouterr().out


def test_byte_fallback_pieces_count_one_byte(sp1024_model):
    sp = load_tokenizer(sp1024_model)
    tables = byte_tables(sp)
    for text in ["\u4e2d\u6587", "emoji \U0001F600 and \u00e9t\u00e9 \u2603"]:
        ids = sp.encode(text)
        assert any(sp.is_byte(i) for i in ids), "needs byte-fallback pieces to test them"
        assert sp.decode(ids) == text
        assert tables.stream_bytes(np.array([1] + ids)) == len(text.encode("utf-8"))


def test_no_space_byte_after_bos(sp1024_model):
    sp = load_tokenizer(sp1024_model)
    tables = byte_tables(sp)
    the = sp.piece_to_id(SPACE + "the")
    assert sp.id_to_piece(the) == SPACE + "the"
    word = sp.piece_to_id("is") if sp.id_to_piece(sp.piece_to_id("is")) == "is" else sp.encode("is")[0]
    assert tables.token_bytes(np.array([1]), np.array([the]))[0] == 3  # after BOS: no space byte
    assert tables.token_bytes(np.array([word]), np.array([the]))[0] == 4  # mid-doc: the space counts
    assert tables.token_bytes(np.array([word]), np.array([1]))[0] == 0  # BOS itself: 0 bytes


def _train_spaceless_tokenizer(tmp_path):
    """A SentencePiece model trained directly (no user_defined_symbols) on text without spaces."""
    rng = np.random.default_rng(0)
    lines = ["".join(rng.choice(list("abcdefgh"), size=60)) for _ in range(300)]
    (tmp_path / "nospace.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.Train(input=str(tmp_path / "nospace.txt"), model_prefix=str(tmp_path / "nospace"),
                                   model_type="bpe", vocab_size=300, byte_fallback=True,
                                   add_dummy_prefix=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                                   minloglevel=2)
    path = tmp_path / "nospace.model"
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert sp.id_to_piece(sp.piece_to_id(SPACE)) != SPACE  # really lacks the piece
    return path


def test_tokenizer_without_space_piece_is_refused(tmp_path, shared_dir, val_docs, capsys):
    bad = _train_spaceless_tokenizer(tmp_path)
    assert main(["data", "inspect", str(shared_dir / "fineweb" / "sp1024"), "--tokenizer", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and SPACE in err
    assert main(["data", "build", str(val_docs), "--tokenizer", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert str(bad) in capsys.readouterr().err


def test_cli_trains_tokenizer_with_space_piece(tmp_path, val_docs, capsys):
    out = tmp_path / "tok" / "small.model"
    assert main(["data", "tokenizer", str(val_docs), "--vocab-size", "400", "--max-docs", "150",
                 "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["model"] == str(out) and out.is_file() and out.with_suffix(".vocab").is_file()
    assert r["docs"] == 150 and 340 < r["vocab_size"] <= 400 and r["requested_vocab_size"] == 400
    sp = load_tokenizer(out)  # passes the space and BOS checks
    assert sp.id_to_piece(sp.piece_to_id(SPACE)) == SPACE and sp.bos_id() == 1
    text = "The quick brown fox, 1234 \u4e2d."
    assert sp.decode(sp.encode(text)) == text
    # Its byte tables count UTF-8 bytes exactly on held-out docs.
    tables = byte_tables(sp)
    docs = list(iter_documents([val_docs]))[850:860]
    stream = np.concatenate([[1] + sp.encode(d) for d in docs])
    assert tables.stream_bytes(stream) == sum(len(d.encode()) for d in docs)


def test_cli_tokenizer_bad_vocab_exits_2(tmp_path, val_docs, capsys):
    assert main(["data", "tokenizer", str(val_docs), "--vocab-size", "70000", "--out", str(tmp_path / "t")]) == 2
    assert "--vocab-size" in capsys.readouterr().err
    assert main(["data", "tokenizer", str(val_docs), "--vocab-size", "400", "--out", str(tmp_path / "t.tok")]) == 2
    assert "ending in .model" in capsys.readouterr().err


def _val_copy(shared_dir, tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    shutil.copy(shared_dir / "fineweb" / "sp1024" / "fineweb_val_000000.bin", d)
    return d, d / "fineweb_val_000000.bin"


def test_truncated_and_wrong_magic_shards_exit_2(tmp_path, shared_dir, sp1024_model, capsys):
    d, shard = _val_copy(shared_dir, tmp_path)
    with open(shard, "r+b") as f:
        f.truncate(HEADER_BYTES + 1000)
    assert main(["data", "inspect", str(d), "--tokenizer", str(sp1024_model)]) == 2
    err = capsys.readouterr().err
    assert str(shard) in err and "truncated" in err
    raw = bytearray((shared_dir / "fineweb" / "sp1024" / "fineweb_val_000000.bin").read_bytes())
    raw[0:4] = (12345).to_bytes(4, "little")
    shard.write_bytes(bytes(raw))
    assert main(["data", "inspect", str(d), "--tokenizer", str(sp1024_model)]) == 2
    err = capsys.readouterr().err
    assert str(shard) in err and "bad magic" in err


def test_tokenizer_shard_vocab_mismatch_and_ids_beyond_vocab_exit_2(tmp_path, shared_dir, sp1024_model, capsys):
    d = tmp_path / "s"
    write_shard(d / "fineweb_val_000000.bin", np.array([1, 5, 900, 3000, 7], dtype=np.int64))
    assert main(["data", "inspect", str(d), "--tokenizer", str(sp1024_model)]) == 2
    err = capsys.readouterr().err
    assert "fineweb_val_000000.bin" in err and "3000" in err and "vocab mismatch" in err
    # The sp8192 shards with the sp1024 tokenizer: the classic mix-up.
    assert main(["data", "inspect", str(shared_dir / "fineweb" / "sp8192"), "--tokenizer", str(sp1024_model)]) == 2
    assert "vocab mismatch" in capsys.readouterr().err


def test_missing_tokenizer_and_empty_dir_exit_2(tmp_path, shared_dir, capsys):
    assert main(["data", "inspect", str(shared_dir / "fineweb" / "sp1024"), "--tokenizer",
                 str(tmp_path / "none.model")]) == 2
    assert "none.model: tokenizer model not found" in capsys.readouterr().err
    assert main(["data", "inspect", str(tmp_path)]) == 2
    assert f"{tmp_path}: no fineweb_val" in capsys.readouterr().err
    assert main(["data", "inspect", str(tmp_path / "nodir")]) == 2
    assert "data directory not found" in capsys.readouterr().err
    # A manifest naming a tokenizer that has gone away.
    d, shard = _val_copy(shared_dir, tmp_path)
    (d / "manifest.json").write_text(json.dumps({"tokenizer": {"path": str(tmp_path / "gone.model")}, "splits": {
        "val": {"shards": [{"name": shard.name, "tokens": read_header(shard)}]}}}))
    assert main(["data", "inspect", str(d)]) == 2
    err = capsys.readouterr().err
    assert "gone.model" in err and "--tokenizer" in err


def test_another_tokenizer_than_the_manifests_is_refused(tmp_path, val_docs, sp1024_model, sp8192_model, capsys):
    out = tmp_path / "built"
    assert main(["data", "build", str(val_docs), "--tokenizer", str(sp1024_model), "--out", str(out),
                 "--val-docs", "901", "--workers", "1"]) == 0
    capsys.readouterr()
    # Same directory, another model (here the sp8192 one, whose ids also cover the shards): exit 2 naming both.
    assert main(["data", "inspect", str(out), "--tokenizer", str(sp8192_model)]) == 2
    err = capsys.readouterr().err
    assert str(sp8192_model) in err and "manifest.json" in err and "sha256" in err
    assert main(["data", "inspect", str(out), "--tokenizer", str(sp1024_model)]) == 0


def test_caseops_sidecar_gives_the_original_bytes(shared_dir, capsys):
    d = shared_dir / "fineweb" / "sp8192_caseops"
    model = shared_dir / "tokenizers" / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
    val = _inspect_json(capsys, d, "--tokenizer", model)["splits"]["val"]
    assert val["bytes"] == VAL_BYTES and val["bytes_source"] == "sidecar" and val["tokens"] == 808_617
    # The tokenizer's own tables would count the transformed text, not the original bytes.
    tokens = np.asarray(read_shard(d / "fineweb_val_000000.bin"), dtype=np.int64)
    assert byte_tables(load_tokenizer(model)).stream_bytes(tokens) != VAL_BYTES


def test_mixed_or_incomplete_shard_dirs_are_refused(tmp_path, shared_dir, sp1024_model, val_docs, capsys):
    out = tmp_path / "built"
    build_shards([val_docs], sp1024_model, out, val_docs=100, shard_tokens=200_000, workers=1)
    stray = out / "fineweb_train_000099.bin"
    write_shard(stray, np.arange(10))
    assert main(["data", "inspect", str(out)]) == 2
    assert "fineweb_train_000099.bin is not listed in manifest.json" in capsys.readouterr().err
    stray.unlink()
    (out / "manifest.json").unlink()
    (out / "fineweb_train_000001.bin").unlink()  # a gap, and no manifest to check against
    assert main(["data", "inspect", str(out), "--tokenizer", str(sp1024_model)]) == 2
    assert "not numbered 0.." in capsys.readouterr().err

"""Corpus -> shards: byte-for-byte reproduction of the official val shards, cutting, determinism, atomicity."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import sentencepiece as spm

import pgolf.data.build as build_mod
from pgolf.cli import main
from pgolf.data.build import build_shards
from pgolf.data.corpus import iter_documents
from pgolf.data.shards import read_header, read_shard


@pytest.mark.parametrize("vocab", [1024, 8192])
def test_cli_build_reproduces_official_val_shard(tmp_path, shared_dir, val_docs, vocab):
    model = shared_dir / "tokenizers" / f"fineweb_{vocab}_bpe.model"
    out = tmp_path / "out"
    rc = main(["data", "build", str(val_docs), "--tokenizer", str(model), "--out", str(out),
               "--val-docs", "901", "--workers", "1", "--json"])
    assert rc == 0
    ref = shared_dir / "fineweb" / f"sp{vocab}" / "fineweb_val_000000.bin"
    assert (out / "fineweb_val_000000.bin").read_bytes() == ref.read_bytes()
    assert not list(out.glob("fineweb_train_*.bin"))
    m = json.loads((out / "manifest.json").read_text())
    assert m["splits"]["val"]["docs"] == 901 and m["splits"]["train"]["docs"] == 0
    assert m["splits"]["val"]["tokens"] == read_header(ref)
    assert m["tokenizer"]["vocab_size"] == vocab and len(m["tokenizer"]["sha256"]) == 64
    assert m["inputs"][0]["path"] == str(val_docs) and m["inputs"][0]["bytes"] == val_docs.stat().st_size
    assert m["settings"] == {"val_docs": 901, "shard_tokens": 100_000_000, "bos_id": 1,
                             "doc_format": "[BOS] + sp.encode(text)", "text_transform": "identity"}


def _expected_stream(docs, model):
    sp = spm.SentencePieceProcessor(model_file=str(model))
    return [np.array([1] + sp.encode(d), dtype=np.int64) for d in docs]


def test_split_and_cut_match_independent_encoding(tmp_path, val_docs, sp1024_model):
    """First N docs -> val, the rest -> train; shards of exactly shard_tokens, docs spanning shards."""
    docs = list(iter_documents([val_docs]))[:120]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    enc = _expected_stream(docs, sp1024_model)
    m = build_shards([corpus], sp1024_model, tmp_path / "a", val_docs=30, shard_tokens=7_000, workers=1)
    for split, part in (("val", enc[:30]), ("train", enc[30:])):
        want = np.concatenate(part)
        paths = sorted((tmp_path / "a").glob(f"fineweb_{split}_*.bin"))
        sizes = [read_header(p) for p in paths]
        assert all(s == 7_000 for s in sizes[:-1]) and 0 < sizes[-1] <= 7_000
        assert len(paths) == -(-len(want) // 7_000)
        got = np.concatenate([np.asarray(read_shard(p), dtype=np.int64) for p in paths])
        np.testing.assert_array_equal(got, want)
        assert m["splits"][split]["tokens"] == len(want)
        assert m["splits"][split]["docs"] == len(part)
        assert [s["name"] for s in m["splits"][split]["shards"]] == [p.name for p in paths]


def test_worker_pool_output_is_byte_identical(tmp_path, val_docs, sp1024_model, monkeypatch):
    # Small tokenization tasks so several batches are in flight across the two workers.
    monkeypatch.setattr(build_mod, "BATCH_DOCS", 16)
    kw = dict(val_docs=100, shard_tokens=50_000)
    build_shards([val_docs], sp1024_model, tmp_path / "one", workers=1, **kw)
    build_shards([val_docs], sp1024_model, tmp_path / "two", workers=2, **kw)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert len(names) > 5
    for n in names:
        assert (tmp_path / "one" / n).read_bytes() == (tmp_path / "two" / n).read_bytes(), n


def test_rebuild_removes_stale_shards(tmp_path, val_docs, sp1024_model):
    out = tmp_path / "out"
    build_shards([val_docs], sp1024_model, out, val_docs=10, shard_tokens=100_000, workers=1)
    n_before = len(list(out.glob("fineweb_train_*.bin")))
    build_shards([val_docs], sp1024_model, out, val_docs=10, shard_tokens=400_000, workers=1)
    after = sorted(p.name for p in out.glob("fineweb_train_*.bin"))
    assert n_before > len(after) == 3
    m = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in m["splits"]["train"]["shards"]] == after


def _snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else None


def _no_temp_dirs(parent):
    assert [p.name for p in parent.iterdir() if p.name.startswith(".")] == []


def test_interrupted_build_keeps_the_previous_build(tmp_path, val_docs, sp1024_model, monkeypatch):
    out = tmp_path / "out"
    build_shards([val_docs], sp1024_model, out, val_docs=50, shard_tokens=200_000, workers=1)
    before = _snapshot(out)
    assert "manifest.json" in before

    real_write, calls = build_mod.write_shard, []

    def failing_write(path, tokens):
        calls.append(path)
        if len(calls) > 1:
            raise RuntimeError("power cut (simulated)")
        real_write(path, tokens)

    monkeypatch.setattr(build_mod, "write_shard", failing_write)
    with pytest.raises(RuntimeError, match="simulated"):
        main(["data", "build", str(val_docs), "--tokenizer", str(sp1024_model), "--out", str(out),
              "--val-docs", "50", "--shard-tokens", "100000", "--workers", "1"])
    assert _snapshot(out) == before  # the old build, whole and unmixed
    _no_temp_dirs(tmp_path)


def test_disk_full_names_the_file_and_leaves_nothing(tmp_path, val_docs, sp1024_model, monkeypatch, capsys):
    out = tmp_path / "out"
    real_fsync, calls = os.fsync, []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # mid-way through the second shard's write
            raise OSError(28, "No space left on device (simulated)")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    rc = main(["data", "build", str(val_docs), "--tokenizer", str(sp1024_model), "--out", str(out),
               "--val-docs", "0", "--shard-tokens", "300000", "--workers", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "fineweb_train_000001.bin: cannot write (No space left on device (simulated))" in err
    assert not out.exists()
    _no_temp_dirs(tmp_path)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bad_document_midway_exits_2_and_keeps_the_previous_build(tmp_path, val_docs, sp1024_model, capsys,
                                                                  monkeypatch, workers):
    monkeypatch.setattr(build_mod, "BATCH_DOCS", 16)  # so shards are written before the bad doc is read
    lines = val_docs.read_bytes().splitlines(keepends=True)[:300]
    lines[250] = b'{"text": "broken \xff byte"}\n'
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b"".join(lines))
    out = tmp_path / "out"
    build_shards([val_docs], sp1024_model, out, val_docs=5, shard_tokens=500_000, workers=1)
    before = _snapshot(out)
    rc = main(["data", "build", str(corpus), "--tokenizer", str(sp1024_model), "--out", str(out),
               "--val-docs", "10", "--shard-tokens", "50000", "--workers", workers])
    assert rc == 2
    assert f"{corpus}:251: invalid UTF-8" in capsys.readouterr().err
    assert _snapshot(out) == before
    _no_temp_dirs(tmp_path)


def test_build_refuses_a_directory_with_other_files(tmp_path, val_docs, sp1024_model, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    rc = main(["data", "build", str(val_docs), "--tokenizer", str(sp1024_model), "--out", str(out)])
    assert rc == 2 and "holds files that are not shards (notes.txt)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def test_build_is_deterministic_including_manifest(tmp_path, val_docs, sp1024_model):
    for d in ("a", "b"):
        build_shards([val_docs], sp1024_model, tmp_path / "same", val_docs=100, shard_tokens=300_000, workers=1)
        (tmp_path / "same" / "manifest.json").rename(tmp_path / f"manifest_{d}.json")
    assert (tmp_path / "manifest_a.json").read_bytes() == (tmp_path / "manifest_b.json").read_bytes()


def test_build_bad_arguments_exit_2(tmp_path, val_docs, sp1024_model, capsys):
    out = str(tmp_path / "out")
    assert main(["data", "build", str(val_docs), "--tokenizer", str(tmp_path / "missing.model"), "--out", out]) == 2
    assert "missing.model: tokenizer model not found" in capsys.readouterr().err
    assert main(["data", "build", str(val_docs), "--tokenizer", str(sp1024_model), "--out", out,
                 "--shard-tokens", "0"]) == 2
    assert "--shard-tokens" in capsys.readouterr().err
    notmodel = tmp_path / "x.model"
    notmodel.write_bytes(b"garbage")
    assert main(["data", "build", str(val_docs), "--tokenizer", str(notmodel), "--out", out]) == 2
    assert "x.model: not a SentencePiece model" in capsys.readouterr().err


"""Corpus reading: formats, compression, order, and bad input named by file and line."""
from __future__ import annotations

import gzip
import json
import lzma

import pytest
import zstandard

from pgolf.cli import main
from pgolf.data.corpus import expand_paths, iter_documents
from pgolf.errors import InputError

DOCS = ["first doc", "second doc with ünïcödé", "third 中文 doc \U0001F600"]


def _jsonl(docs) -> bytes:
    return "".join(json.dumps({"text": d, "source": "t"}) + "\n" for d in docs).encode()


def test_formats_and_compression_give_same_documents(tmp_path):
    raw_txt = ("\n".join(DOCS) + "\n").encode()
    files = {
        "a.txt": raw_txt,
        "b.jsonl": _jsonl(DOCS),
        "c.jsonl.zst": zstandard.ZstdCompressor().compress(_jsonl(DOCS)),
        "d.txt.xz": lzma.compress(raw_txt),
        "e.jsonl.gz": gzip.compress(_jsonl(DOCS)),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert list(iter_documents([tmp_path / name])) == DOCS, name


def test_order_given_globs_sorted_blank_lines_and_crlf_skipped(tmp_path):
    (tmp_path / "z.txt").write_bytes(b"z1\r\n\r\n   \nz2\n")
    (tmp_path / "b.txt").write_bytes(b"b1\nb2")  # no trailing newline
    (tmp_path / "a.txt").write_bytes(b"a1\n")
    (tmp_path / "m.jsonl").write_bytes(_jsonl(["m1", "", "m2"]))  # empty docs are skipped
    docs = list(iter_documents([tmp_path / "z.txt", str(tmp_path / "[ab].txt"), tmp_path / "m.jsonl"]))
    assert docs == ["z1", "z2", "a1", "b1", "b2", "m1", "m2"]
    assert [p.name for p in expand_paths([str(tmp_path / "*.txt")])] == ["a.txt", "b.txt", "z.txt"]


def test_multiframe_zstd_reads_all_frames(tmp_path):
    c = zstandard.ZstdCompressor()
    (tmp_path / "x.jsonl.zst").write_bytes(c.compress(_jsonl(["one"])) + c.compress(_jsonl(["two"])))
    assert list(iter_documents([tmp_path / "x.jsonl.zst"])) == ["one", "two"]


@pytest.mark.parametrize("name,data,needle", [
    ("bad.txt", b"ok line\nbad \xff\xfe line\n", "bad.txt:2: invalid UTF-8"),
    ("nul.txt", b"ok\nnul\x00here\n", "nul.txt:2: NUL byte"),
    ("nul.jsonl", b'{"text": "ok"}\n{"text": "a\\u0000b"}\n', "nul.jsonl:2: NUL"),
    ("surrogate.jsonl", b'{"text": "a\\ud800b"}\n', "surrogate.jsonl:1: invalid UTF-8"),
    ("notext.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', 'notext.jsonl:2: jsonl line has no "text"'),
    ("nonstr.jsonl", b'{"text": 5}\n', "nonstr.jsonl:1: \"text\" is int"),
    ("badjson.jsonl", b'{"text": "ok"}\n\n{"text": \n', "badjson.jsonl:3: invalid JSON"),
    ("empty.jsonl", b"\n\n", "empty corpus"),
])
def test_bad_corpus_names_file_and_line(tmp_path, name, data, needle):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError) as e:
        list(iter_documents([tmp_path / name]))
    assert needle in str(e.value)


def test_missing_unsupported_and_unmatched(tmp_path):
    with pytest.raises(InputError, match="corpus file not found"):
        list(iter_documents([tmp_path / "nope.jsonl"]))
    with pytest.raises(InputError, match="glob matches no files"):
        expand_paths([str(tmp_path / "*.jsonl")])
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(InputError, match="unsupported corpus file"):
        expand_paths([tmp_path / "x.csv"])
    (tmp_path / "t.jsonl.zst").write_bytes(b"not zstd at all")
    with pytest.raises(InputError, match="t.jsonl.zst: corrupt compressed data"):
        list(iter_documents([tmp_path / "t.jsonl.zst"]))


@pytest.mark.parametrize("suffix", [".txt.zst", ".jsonl.zst", ".txt.gz", ".jsonl.xz"])
def test_truncated_compressed_corpus_is_named_truncated(tmp_path, suffix, capsys, sp1024_model):
    docs = [f"document {i} " + "word " * (i % 50) for i in range(4000)]
    text = "".join((json.dumps({"text": d}) if "jsonl" in suffix else d) + "\n" for d in docs).encode()
    compress = {".zst": lambda b: zstandard.ZstdCompressor(level=3).compress(b), ".gz": gzip.compress,
                ".xz": lzma.compress}[suffix[suffix.rindex("."):]]
    blob = compress(text)
    path = tmp_path / f"corpus{suffix}"
    path.write_bytes(blob[: len(blob) * 6 // 10])  # cut at 60%
    with pytest.raises(InputError) as e:
        list(iter_documents([path]))
    assert str(path) in str(e.value) and "truncated" in str(e.value)
    rc = main(["data", "build", str(path), "--tokenizer", str(sp1024_model), "--out", str(tmp_path / "o"),
               "--workers", "1"])
    assert rc == 2 and "truncated" in capsys.readouterr().err and not (tmp_path / "o").exists()
    path.write_bytes(blob)  # the whole file reads in full
    assert len(list(iter_documents([path]))) == 4000


def test_concatenated_zstd_frames_read_in_full(tmp_path):
    c = zstandard.ZstdCompressor()
    path = tmp_path / "two.txt.zst"
    path.write_bytes(c.compress(b"first doc\nsecond doc\n") + c.compress(b"third doc\n"))
    assert list(iter_documents([path])) == ["first doc", "second doc", "third doc"]


@pytest.mark.parametrize("name,data,needle", [
    ("empty.txt", b"", "empty corpus"),
    ("bad.txt", b"fine\n\xc3\x28\n", "bad.txt:2: invalid UTF-8"),
    ("nul.txt", b"a\x00\n", "nul.txt:1: NUL byte"),
])
def test_cli_bad_corpus_exits_2(tmp_path, capsys, sp1024_model, name, data, needle):
    (tmp_path / name).write_bytes(data)
    for argv in (["data", "build", str(tmp_path / name), "--tokenizer", str(sp1024_model),
                  "--out", str(tmp_path / "out"), "--workers", "1"],
                 ["data", "tokenizer", str(tmp_path / name), "--vocab-size", "300",
                  "--out", str(tmp_path / "tok.model")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and str(tmp_path / name) in err
    assert not (tmp_path / "out" / "manifest.json").exists()

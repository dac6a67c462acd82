"""CaseOps: the transform's rules and inverse, the byte sidecar, and the leaderboard top's val files
reproduced byte for byte."""
from __future__ import annotations

import json

import numpy as np
import pytest
import sentencepiece as spm

from pgolf.cli import main
from pgolf.data import caseops as co
from pgolf.data.corpus import iter_documents
from pgolf.data.shards import read_shard
from pgolf.data.tokenizer import byte_tables
from pgolf.data.validation import load_val
from pgolf.errors import InputError

T, A, C, E = co.TITLE, co.ALLCAPS, co.CAPNEXT, co.ESC
CASEOPS_MODEL = "tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"


@pytest.mark.parametrize("text, want", [
    ("the NASA Launch", f"the {A}nasa {T}launch"),
    ("A cat", f"{T}a cat"),
    ("McDonald iPhone ABc", f"{T}mc{C}donald i{C}phone {T}a{C}bc"),
    ("x2Y", f"x2{T}y"),  # digits end a word
    ("Émile ÉCOLE", f"Émile É{A}cole"),  # only ASCII letters count: "COLE" is the word
    (f"op {T} and {E}!", f"op {E}{T} and {E}{E}!"),  # literal operators are escaped
    ("", ""),
])
def test_encode_rules(text, want):
    assert co.encode(text) == want
    assert co.decode(want) == text


@pytest.mark.parametrize("bad", [f"{T}", f"{A} x", f"a{T}b", f"{C}a", f"ab{C}{C}c", f"{E}a", "Cap", f"{E}"])
def test_malformed_caseops_is_an_input_error(bad):
    with pytest.raises(InputError, match="not valid lossless_caps_caseops_v1"):
        co.decode(bad, "doc 3")


def test_original_bytes_per_piece():
    # pieces of "The ÉCOLE NASA \ue001": operators 0, letters 1, É 2, an escaped operator its 3 bytes
    surfaces = [T, "the", " ", "É", A, "cole", " ", A, "na", "sa", " ", E, T]
    text = co.decode("".join(surfaces))
    assert text == "The ÉCOLE NASA \ue001"
    counts = co.original_bytes(surfaces)
    assert counts == [0, 3, 1, 2, 0, 4, 1, 0, 2, 2, 1, 0, 3]
    assert sum(counts) == len(text.encode("utf-8"))


def test_every_val_doc_round_trips_through_the_transform_and_the_tokenizer(shared_dir, val_docs):
    sp = spm.SentencePieceProcessor(model_file=str(shared_dir / CASEOPS_MODEL))
    docs = list(iter_documents([val_docs]))
    assert len(docs) == 901
    changed = 0
    for d in docs:
        enc = co.encode(d)
        changed += enc != d
        assert co.decode(enc) == d
        assert co.decode(sp.decode(sp.encode(enc))) == d
    assert changed > 800  # the transform is live on real text


def test_build_caseops_reproduces_the_records_val_files(tmp_path, shared_dir, val_docs, capsys):
    out = tmp_path / "co"
    rc = main(["data", "build", str(val_docs), "--tokenizer", str(shared_dir / CASEOPS_MODEL), "--out", str(out),
               "--val-docs", "901", "--caseops", "--json"])
    assert rc == 0
    ref = shared_dir / "fineweb" / "sp8192_caseops"
    for name in ("fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    m = json.loads((out / "manifest.json").read_text())
    assert m["settings"]["text_transform"] == co.NAME and m["splits"]["val_bytes"]["tokens"] == 808_617
    capsys.readouterr()
    assert main(["data", "inspect", str(out), "--json"]) == 0
    val = json.loads(capsys.readouterr().out)["splits"]["val"]
    assert (val["bytes"], val["bytes_source"], val["tokens"]) == (2_504_310, "sidecar", 808_617)
    # the sidecar, not the tokenizer's table, prices the targets: the table would charge operators
    tables = byte_tables(spm.SentencePieceProcessor(model_file=str(shared_dir / CASEOPS_MODEL)))
    tokens, nbytes = load_val(out, 8192, tables)
    assert int(nbytes.sum()) == 2_504_310
    assert int(tables.target_bytes(tokens).sum()) > 2_504_310


def test_sidecar_equals_the_table_on_text_without_capitals(tmp_path, shared_dir, val_docs):
    docs = [d.lower() for d in list(iter_documents([val_docs]))[:120] if co.ESC not in d]
    corpus = tmp_path / "lower.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    model = shared_dir / CASEOPS_MODEL
    assert main(["data", "build", str(corpus), "--tokenizer", str(model), "--out", str(tmp_path / "co"),
                 "--val-docs", str(len(docs)), "--caseops", "--workers", "1"]) == 0
    tables = byte_tables(spm.SentencePieceProcessor(model_file=str(model)))
    tokens, sidecar_bytes = load_val(tmp_path / "co", 8192, tables)
    lut_bytes = tables.target_bytes(tokens)
    assert int(sidecar_bytes.sum()) == int(lut_bytes.sum()) == sum(len(d.encode()) for d in docs)
    # same NLL per token -> the same val_bpb either way
    nll = np.random.default_rng(0).random(len(lut_bytes))
    assert float(nll.sum() / sidecar_bytes.sum()) == float(nll.sum() / lut_bytes.sum())


def test_caseops_needs_a_caseops_tokenizer(tmp_path, sp8192_model, val_docs, capsys):
    rc = main(["data", "build", str(val_docs), "--tokenizer", str(sp8192_model), "--out", str(tmp_path / "x"),
               "--val-docs", "10", "--caseops"])
    assert rc == 2 and "not a CaseOps tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_caseops_recipe_refuses_shards_without_a_sidecar(tmp_path, capsys):
    from train_util import make_real_data, tiny_overrides

    data = make_real_data(tmp_path)
    sets = [a for o in tiny_overrides(**{"data.caseops": True}) for a in ("--set", o)]
    rc = main(["train", "--recipe", "tiny", *sets, "--data", str(data), "--out", str(tmp_path / "run")])
    assert rc == 2 and "fineweb_val_bytes_" in capsys.readouterr().err

"""`pgolf eval` / `pgolf audit` end to end on a tiny run and the real sp1024 val shard head."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.cli import main
from pgolf.config import load_config
from pgolf.data.shards import read_shard, write_shard
from pgolf.data.tokenizer import byte_tables, load_tokenizer
from pgolf.eval.api import eval_and_record
from pgolf.eval.plain import evaluate_plain
from pgolf.model.gpt import GPT
from pgolf.model.io import save_run_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def run_and_data(tmp_path: Path, shared_dir: Path):
    cfg = load_config("tiny", ["model.num_layers=1", "model.model_dim=32", "model.num_heads=2",
                               "model.num_kv_heads=1", "train.seq_len=64", "train.micro_batch_tokens=64",
                               "train.batch_tokens=64", "eval.max_tokens=0", "eval.stride=16"])
    torch.manual_seed(0)
    model = GPT(cfg.model)
    run = tmp_path / "run"
    save_run_model(run, model, cfg)
    data = tmp_path / "data"
    head = np.asarray(read_shard(shared_dir / "fineweb" / "sp1024" / "fineweb_val_000000.bin")[:1500])
    write_shard(data / "fineweb_val_000000.bin", head)
    return run, data, model, head


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_eval_cli_matches_the_library(run_and_data, sp1024_model, capsys):
    run, data, model, head = run_and_data
    assert main(["eval", str(run), "--data", str(data), "--tokenizer", str(sp1024_model), "--method", "plain",
                 "--json"]) == 0
    out = _json(capsys)
    tables = byte_tables(load_tokenizer(sp1024_model))
    ref = evaluate_plain(model, head, tables, 64)
    assert out["tokens"] == len(head) - 1 and out["bytes"] == ref["bytes"] == tables.stream_bytes(head)
    assert abs(out["val_bpb"] - ref["val_bpb"]) < 1e-6
    assert out["method"] == "plain" and out["seconds"] >= 0 and "nll" not in out

    assert main(["eval", str(run), "--data", str(data), "--tokenizer", str(sp1024_model), "--method", "sliding",
                 "--max-tokens", "500", "--set", "eval.stride=32", "--json"]) == 0
    out = _json(capsys)
    assert out["tokens"] == 499 and out["max_tokens"] == 500 and out["window"] == 64


def test_eval_cli_finds_the_tokenizer_in_the_manifest_or_exits_2(run_and_data, sp1024_model, capsys):
    run, data, _, _ = run_and_data
    assert main(["eval", str(run), "--data", str(data), "--json"]) == 2
    assert "tokenizer" in capsys.readouterr().err
    (data / "manifest.json").write_text(json.dumps({"tokenizer": {"path": str(sp1024_model)}}))
    assert main(["eval", str(run), "--data", str(data), "--method", "docs", "--json"]) == 0
    assert _json(capsys)["method"] == "docs"
    # the model is fixed by the run: overriding it is bad input
    assert main(["eval", str(run), "--data", str(data), "--set", "model.num_layers=3"]) == 2
    assert main(["eval", str(tmp := run.parent / "nope"), "--data", str(data)]) == 2
    assert not tmp.exists()


def test_eval_and_record_updates_the_summary(run_and_data, sp1024_model):
    run, data, _, _ = run_and_data
    (run / "summary.json").write_text(json.dumps({"recipe": "tiny", "steps": 7}))
    out = eval_and_record(run, data, method="plain", tokenizer=str(sp1024_model), max_tokens=400)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["recipe"] == "tiny" and summary["steps"] == 7
    assert summary["val_bpb"] == out["val_bpb"] == summary["val_bpb_prequant"]
    assert summary["eval_method"] == "plain" and summary["eval_seconds"] == out["seconds"]
    assert summary["val_loss"] == out["val_loss"] and summary["eval_source"] == "run"


def test_audit_cli_passes_and_reports_each_check(run_and_data, sp1024_model, capsys):
    run, data, _, _ = run_and_data
    code = main(["audit", str(run), "--data", str(data), "--tokenizer", str(sp1024_model), "--method", "sliding",
                 "--max-tokens", "1000", "--points", "1", "--probes", "2", "--set", "eval.doc_isolated=true", "--json"])
    out = _json(capsys)
    assert code == 0 and out["passed"] and out["method"] == "sliding"
    assert set(out["checks"]) == {"causality", "score_before_update", "single_pass", "normalization", "doc_isolation"}
    assert all(c["passed"] for c in out["checks"].values()), out  # docs start at 0 and 523: all apply

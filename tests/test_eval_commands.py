"""`pgolf eval` / `pgolf audit` on run directories and artifacts, with the real sp1024 val shard head."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.cli import main
from pgolf.config import load_config
from pgolf.data.manifest import tokenizer_record, write_manifest
from pgolf.data.shards import read_header, read_shard, write_shard
from pgolf.data.tokenizer import byte_tables, file_sha256, load_tokenizer
from pgolf.model.gpt import GPT
from pgolf.model.weights import save_tensors
from pgolf.pipeline.rundir import RunDir

from eval_util import reference_plain

pytestmark = pytest.mark.usefixtures("one_thread")


def make_run(root: Path, cfg, model, data: Path | None = None, tokenizer: Path | None = None) -> Path:
    rd = RunDir(root / "run")
    rd.path.mkdir(parents=True)
    rd.write_config(cfg)
    save_tensors(rd.weights, model.state_dict())
    if data is not None:
        rd.write_resolved({"data_dir": str(data), "tokenizer": str(tokenizer),
                           "tokenizer_sha256": file_sha256(tokenizer)})
    return rd.path


@pytest.fixture()
def run_and_data(tmp_path: Path, shared_dir: Path, sp1024_model: Path):
    cfg = load_config("tiny", ["model.num_layers=1", "model.model_dim=32", "model.num_heads=2",
                               "model.num_kv_heads=1", "train.seq_len=64", "train.micro_batch_tokens=64",
                               "train.batch_tokens=64", "eval.max_tokens=0", "eval.stride=16"])
    torch.manual_seed(0)
    model = GPT(cfg.model)
    data = tmp_path / "data"
    head = np.asarray(read_shard(shared_dir / "fineweb" / "sp1024" / "fineweb_val_000000.bin")[:1500])
    write_shard(data / "fineweb_val_000000.bin", head)
    return make_run(tmp_path, cfg, model, data, sp1024_model), data, model, head


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_eval_cli_matches_an_independent_computation(run_and_data, sp1024_model, capsys):
    run, data, model, head = run_and_data
    assert main(["eval", str(run), "--data", str(data), "--tokenizer", str(sp1024_model), "--method", "plain",
                 "--json"]) == 0
    out = _json(capsys)
    tables = byte_tables(load_tokenizer(sp1024_model))
    ref = reference_plain(model, head, 64, tables)
    assert out["tokens"] == len(head) - 1 and out["bytes"] == ref["bytes"] == tables.stream_bytes(head)
    assert abs(out["val_bpb"] - ref["val_bpb"]) < 1e-6
    assert out["method"] == "plain" and out["seconds"] >= 0 and out["source"] == "run"

    assert main(["eval", str(run), "--method", "sliding", "--max-tokens", "500", "--set", "eval.stride=32",
                 "--json"]) == 0  # --data and --tokenizer default to the run's own
    out = _json(capsys)
    assert out["tokens"] == 499 and out["window"] == 64 and "first 500" in out["subset"]


def test_eval_needs_data_and_refuses_model_overrides(tmp_path, run_and_data, sp1024_model, capsys):
    _, data, model, _ = run_and_data
    bare = make_run(tmp_path / "bare", load_config("tiny", ["model.num_layers=1", "model.model_dim=32",
                                                            "model.num_heads=2", "model.num_kv_heads=1"]), model)
    assert main(["eval", str(bare)]) == 2
    assert "--data: required" in capsys.readouterr().err
    assert main(["eval", str(bare), "--data", str(data)]) == 2  # no tokenizer anywhere
    assert "no tokenizer given" in capsys.readouterr().err
    write_manifest(data, {"tokenizer": tokenizer_record(sp1024_model, 1024), "splits": {
        "val": {"shards": [{"name": "fineweb_val_000000.bin", "tokens": read_header(data / "fineweb_val_000000.bin")}]}}})
    assert main(["eval", str(bare), "--data", str(data), "--method", "docs", "--json"]) == 0
    assert _json(capsys)["method"] == "docs"
    assert main(["eval", str(bare), "--data", str(data), "--set", "model.num_layers=3"]) == 2
    assert "may only change eval" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope"), "--data", str(data)]) == 2


def test_eval_refuses_another_tokenizer_than_the_runs(run_and_data, tmp_path, capsys, val_docs):
    run, data, _, _ = run_and_data
    # another 1024-piece tokenizer (same vocabulary size, other pieces): the silent mix-up
    other = tmp_path / "other.model"
    assert main(["data", "tokenizer", str(val_docs), "--vocab-size", "1024", "--max-docs", "400",
                 "--out", str(other), "--json"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--tokenizer", str(other)]) == 2
    err = capsys.readouterr().err
    assert str(other) in err and str(run) in err and "sha256" in err


def test_bad_weights_exit_2(run_and_data, capsys):
    run, data, model, _ = run_and_data
    state = model.state_dict()
    bad = dict(state, **{"tok_emb.weight": torch.zeros(10, 32)})
    save_tensors(run / "model.safetensors", bad)
    assert main(["eval", str(run), "--method", "plain"]) == 2
    assert "tok_emb.weight" in capsys.readouterr().err
    nan = {k: v.clone() for k, v in state.items()}
    nan["blocks.0.attn.c_q.weight"][0, 0] = float("nan")
    save_tensors(run / "model.safetensors", nan)
    assert main(["eval", str(run), "--method", "plain"]) == 2
    assert "NaN or inf" in capsys.readouterr().err


def test_eval_record_writes_the_runs_summary(run_and_data, capsys):
    run, _, _, _ = run_and_data
    RunDir(run).update_summary({"recipe": "tiny", "steps": 7})
    assert main(["eval", str(run), "--method", "plain", "--max-tokens", "400", "--record", "--json"]) == 0
    out = _json(capsys)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["recipe"] == "tiny" and summary["steps"] == 7
    assert summary["val_bpb_prequant"] == out["val_bpb"] and summary["val_bpb"] is None  # weights, not an artifact


def test_audit_cli_passes_and_reports_each_check(run_and_data, capsys):
    run, _, _, _ = run_and_data
    code = main(["audit", str(run), "--method", "sliding", "--max-tokens", "1000", "--set", "eval.doc_isolated=true",
                 "--json"])
    out = _json(capsys)
    assert code == 0 and out["passed"] and out["method"] == "sliding" and out["order"] == "documents"
    assert set(out["checks"]) == {"finite", "single_pass", "normalization", "causality", "target_independence"}
    assert all(c["passed"] for c in out["checks"].values()), out
    assert json.loads((run / "audit.json").read_text())["methods"]["sliding"]["seed"] == out["seed"]


def test_an_artifact_keeps_what_scoring_reads_and_its_seed():
    from pgolf.eval.artifact import model_from_bytes
    from pgolf.quant.budget import pack_state
    cfg = load_config("tiny", ["train.seed=5", "optim.matrix_lr=0.03", "quant.small_tensor_numel=128",
                               "eval.method=\"ttt-lora\""])
    d = cfg.artifact_dict()
    assert "optim" not in d and "quant" not in d and d["eval"]["method"] == "ttt-lora" and "model" in d
    torch.manual_seed(0)
    model = GPT(cfg.model)
    packed = pack_state(model.state_dict(), d, cfg.quant, 0, {"seed": 5})
    rebuilt, acfg, meta = model_from_bytes(packed.blob)
    assert acfg.train.seed == 5 and meta["seed"] == 5  # LoRA TTT is seeded: `pgolf eval` scores as the run
    assert acfg.model == cfg.model and acfg.eval == cfg.eval
    no_seed = pack_state(model.state_dict(), d, cfg.quant, 0, {})
    assert model_from_bytes(no_seed.blob)[1].train.seed == load_config("tiny").train.seed

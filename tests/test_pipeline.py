"""End to end: `pgolf run` on a micro config, the artifact roundtrip in a fresh process, packing
choices compared on a trained model (int8 RTN, int6 RTN, int6 GPTQ) and the budget refusal."""
from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

from pgolf.cli import main
from pgolf.config import ARTIFACT_LIMIT as LIMIT_BYTES
from pgolf.config import load_config
from pgolf.data.shards import read_shard, write_shard
from pgolf.data.tokenizer import byte_tables, load_tokenizer
from pgolf.eval.artifact import dequantized_model
from pgolf.model.gpt import GPT
from pgolf.model.weights import build_from_state, load_tensors, save_tensors
from pgolf.pipeline.packing import pack_run
from pgolf.pipeline.rundir import RunDir
from pgolf.quant.budget import quantize_state_dict

from eval_util import reference_plain

VAL_TOKENS = 16_384
SHARED_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers" / "fineweb_1024_bpe.model"
GPTQ_GROUPS = ('quant.groups=[{pattern="blocks.*", bits=6, clip="sdclip", clip_value=12.85, gptq=true},'
               '{pattern="*", bits=8}]')
MICRO = ["model.num_layers=2", "model.model_dim=64", "model.num_heads=2", "model.num_kv_heads=1",
         "model.bigram_buckets=0", "train.seq_len=64", "train.micro_batch_tokens=2048", "train.batch_tokens=2048",
         "train.max_seconds=0", "train.max_steps=120", "train.warmdown_iters=30", "train.warmdown_frac=0",
         "train.val_tokens=8192", f"eval.max_tokens={VAL_TOKENS}", "quant.gptq_batches=8",
         "quant.gptq_seq_len=64", GPTQ_GROUPS]


@pytest.fixture(scope="module")
def micro_data(tmp_path_factory, shared_dir: Path) -> Path:
    """Train shard from the first stand-in docs; val shard = head of the FineWeb val prefix."""
    out = tmp_path_factory.mktemp("data")
    sp = load_tokenizer(shared_dir / "tokenizers" / "fineweb_1024_bpe.model")
    docs = []
    with open(shared_dir / "standin" / "standin_000.jsonl.zst", "rb") as f:
        reader = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
        for line in reader:
            docs.append(json.loads(line)["text"])
            if sum(map(len, docs)) > 1_500_000:
                break
    train = np.concatenate([np.array([1] + sp.encode(d), dtype=np.uint16) for d in docs])
    write_shard(out / "fineweb_train_000000.bin", train)
    val = read_shard(shared_dir / "fineweb" / "sp1024" / "fineweb_val_000000.bin")[: 4 * VAL_TOKENS]
    write_shard(out / "fineweb_val_000000.bin", np.asarray(val))
    return out


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory, micro_data: Path, sp1024_model: Path) -> Path:
    run = tmp_path_factory.mktemp("run") / "micro"
    torch.manual_seed(0)
    args = ["run", "--recipe", "tiny", "--data", str(micro_data), "--tokenizer", str(sp1024_model),
            "--out", str(run), "--no-progress", "--json"]
    for s in MICRO:
        args += ["--set", s]
    assert main(args) == 0
    return run


def test_run_writes_complete_summary(micro_run: Path):
    s = json.loads((micro_run / "summary.json").read_text())
    for key in ("recipe", "seed", "params", "steps", "train_tokens", "train_seconds", "tokens_per_second",
                "peak_memory_bytes", "val_loss", "val_bpb", "val_bpb_prequant", "model_bytes", "code_bytes",
                "artifact_bytes", "eval_method", "eval_seconds"):
        assert s.get(key) is not None, key
    assert s["steps"] == 120 and s["train_tokens"] == 120 * 2048
    assert s["artifact_bytes"] == s["model_bytes"] + s["code_bytes"]
    assert s["model_bytes"] == (micro_run / "artifact.pgolf").stat().st_size
    assert s["eval_tokens"] == VAL_TOKENS - 1
    # Better than the uniform distribution over the vocab on these bytes.
    uniform_bpb = math.log2(1024) * s["eval_tokens"] / s["eval_bytes"]
    assert s["val_bpb"] < uniform_bpb - 0.5
    assert (micro_run / "hessians.safetensors").exists()  # GPTQ calibration inside training
    # The automatic legality audit of the run's eval method is recorded for the submission.
    audit = json.loads((micro_run / "audit.json").read_text())
    assert s["audit_passed"] is True and audit["passed"] is True
    assert set(audit["methods"]["plain"]["checks"]) >= {"causality", "single_pass", "normalization"}


def test_artifact_alone_in_fresh_process_gives_reported_bpb(micro_run: Path, micro_data: Path, tmp_path: Path):
    s = json.loads((micro_run / "summary.json").read_text())
    moved = tmp_path / "only.pgolf"  # nothing of the run directory beside it
    moved.write_bytes((micro_run / "artifact.pgolf").read_bytes())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "pgolf", "eval", str(moved), "--data", str(micro_data),
                          "--tokenizer", str(SHARED_TOKENIZER), "--max-tokens", str(VAL_TOKENS), "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["val_bpb"] == pytest.approx(s["val_bpb"], abs=1e-6)
    assert r["tokens"] == s["eval_tokens"]


def _post_quant_bpb(run: Path, micro_data: Path, sp1024_model: Path, overrides: list[str],
                    hessians: dict | None) -> tuple[float, float]:
    rd = RunDir(run)
    cfg = rd.read_config()
    model = build_from_state(cfg.model, load_tensors(rd.weights), "test")
    qcfg = cfg.replace(overrides)
    tokens = np.asarray(read_shard(micro_data / "fineweb_val_000000.bin"), dtype=np.int64)[:VAL_TOKENS]
    tables = byte_tables(load_tokenizer(sp1024_model))
    pre = reference_plain(model, tokens, 64, tables)["val_bpb"]
    q, _ = quantize_state_dict(model.state_dict(), qcfg.quant, hessians)
    post = reference_plain(dequantized_model(cfg, q, "test", None), tokens, 64, tables)["val_bpb"]
    return pre, post


MIXED = ('quant.groups=[{pattern="blocks.*.attn.*", bits=6, clip="sdclip", clip_value=12.85X},'
         '{pattern="blocks.*.mlp.*", bits=5, clip="sdclip", clip_value=12.85X},{pattern="*", bits=8}]')


def test_int8_roundtrip_close_and_gptq_beats_rtn_mixed(micro_run: Path, micro_data: Path, sp1024_model: Path):
    hessians = load_tensors(micro_run / "hessians.safetensors")
    pre, int8 = _post_quant_bpb(micro_run, micro_data, sp1024_model,
                                ['quant.groups=[{pattern="*", bits=8}]'], None)
    assert abs(int8 - pre) < 0.01  # the baseline export barely moves the model
    # The records' mixed scheme (attention int6, MLP int5, rest int8), same grids, with and without
    # GPTQ's error feedback (Hessians calibrated on training batches inside the run).
    _, rtn = _post_quant_bpb(micro_run, micro_data, sp1024_model, [MIXED.replace("X", "")], None)
    _, gptq = _post_quant_bpb(micro_run, micro_data, sp1024_model, [MIXED.replace("X", ", gptq=true")], hessians)
    assert rtn - pre > 0.005, "mixed int6/int5 RTN should visibly hurt this small model"
    assert gptq - pre < 0.8 * (rtn - pre)  # measured: 0.0089 vs 0.0154


def _noise_run(root: Path) -> Path:
    """A run whose weights are ~17.8M values of noise: int8 of it cannot fit 16,000,000 bytes."""
    cfg = load_config("tiny", ["model.model_dim=768", "model.num_heads=6", "model.num_kv_heads=6",
                               "model.num_layers=4", "model.bigram_buckets=0", "quant.codec=zlib"])
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=g) for k, v in GPT(cfg.model).state_dict().items()}
    assert sum(v.numel() for v in state.values()) > LIMIT_BYTES
    rd = RunDir(root / "noise")
    rd.path.mkdir(parents=True)
    rd.write_config(cfg)
    save_tensors(rd.weights, state)
    return rd.path


def test_pack_refuses_over_budget(tmp_path: Path, capsys):
    run = _noise_run(tmp_path)
    assert main(["pack", str(run), "--json"]) == 1
    err = capsys.readouterr().err
    assert "over budget" in err and "16,000,000" in err
    assert not (run / "artifact.pgolf").exists()


def _snapshot(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_refused_repack_keeps_the_good_artifact_and_its_scores(tmp_path: Path, capsys):
    run = _noise_run(tmp_path)
    int4 = 'quant.groups=[{pattern="*", bits=4}]'
    assert main(["pack", str(run), "--set", int4, "--json"]) == 0  # int4 noise fits
    capsys.readouterr()
    RunDir(run).update_summary({"val_bpb": 9.9, "eval_source": "artifact"})  # as if it had been scored
    before = _snapshot(run)
    assert main(["pack", str(run), "--json"]) == 1  # int8 of the same noise cannot fit
    assert "over budget" in capsys.readouterr().err
    assert _snapshot(run) == before  # the previous artifact and its summary untouched


def test_pack_out_other_leaves_run_untouched_and_refuses_model_overrides(micro_run: Path, tmp_path: Path, capsys):
    before = _snapshot(micro_run)
    other = tmp_path / "other.pgolf"
    assert main(["pack", str(micro_run), "--out", str(other), "--set", "quant.codec=lzma", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert other.is_file() and r["artifact_path"] == str(other) and r["codec"] == "lzma"
    assert r["artifact_bytes"] == r["model_bytes"] + r["code_bytes"] == other.stat().st_size + r["code_bytes"]
    assert _snapshot(micro_run) == before
    assert main(["pack", str(micro_run), "--out", str(other), "--set", "model.num_layers=3"]) == 2
    assert "may only change quant" in capsys.readouterr().err


def test_repack_marks_old_scores_stale_and_submit_refuses_until_rescored(micro_run: Path, tmp_path: Path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(micro_run, run, symlinks=True)
    assert main(["pack", str(run), "--set", "quant.codec=lzma", "--json"]) == 0
    capsys.readouterr()
    s = json.loads((run / "summary.json").read_text())
    assert s["val_bpb"] is None and s["eval_source"] is None  # the score was the previous artifact's
    assert main(["submit", str(run), "--out", str(tmp_path / "rec")]) == 2
    assert "no post-quant score" in capsys.readouterr().err
    assert main(["eval", str(run / "artifact.pgolf"), "--record", "--json"]) == 0
    capsys.readouterr()
    s = json.loads((run / "summary.json").read_text())
    assert s["eval_artifact_sha256"] == s["artifact_sha256"] and s["val_bpb"] is not None


def test_nan_weights_are_refused_by_pack(micro_run: Path, tmp_path: Path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(micro_run, run, symlinks=True)
    state = load_tensors(run / "model.safetensors")
    state["blocks.0.mlp.fc.weight"][3, 3] = float("inf")
    save_tensors(run / "model.safetensors", state)
    assert main(["pack", str(run)]) == 2
    assert "blocks.0.mlp.fc.weight" in capsys.readouterr().err and "NaN or inf" in capsys.readouterr().err + "NaN or inf"


def test_auto_fit_reports_bpb_cost(micro_run: Path, tmp_path: Path):
    size = (micro_run / "artifact.pgolf").stat().st_size
    code = json.loads((micro_run / "summary.json").read_text())["code_bytes"]
    target = code + int(size * 0.97)  # 3% smaller than the plain packing: clip widening / pruning must act
    report = pack_run(micro_run, tmp_path / "fit.pgolf", [f"quant.target_bytes={target}", "quant.auto_fit=true"])
    fit = report["auto_fit"]
    assert fit["actions"] and report["total_bytes"] < target
    assert isinstance(fit["bpb_cost"], float) and -0.01 < fit["bpb_cost"] < 0.5


def test_run_dir_rules_and_early_config_errors(micro_data: Path, sp1024_model: Path, tmp_path: Path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "artifact.pgolf").write_bytes(b"an old artifact")
    base = ["run", "--recipe", "tiny", "--data", str(micro_data), "--tokenizer", str(sp1024_model),
            "--out", str(run), "--no-progress"] + [x for s in MICRO for x in ("--set", s)]
    assert main(base) == 2
    assert "not empty" in capsys.readouterr().err and (run / "artifact.pgolf").read_bytes() == b"an old artifact"
    # eval settings that cannot work fail before any training
    assert main(base + ["--move-aside", "--set", "eval.method=sliding", "--set", "eval.stride=100000"]) == 2
    assert "eval.stride" in capsys.readouterr().err and not (run / "model.safetensors").exists()
    assert (run / "artifact.pgolf").read_bytes() == b"an old artifact"  # refused before anything moved
    assert main(["run", "--recipe", "tiny", "--config-json", "{}", "--out", str(tmp_path / "x")]) == 2
    assert "give one of them" in capsys.readouterr().err
    moved = RunDir(run).prepare(resume=False, move_aside=True)
    assert moved is not None and (moved / "artifact.pgolf").read_bytes() == b"an old artifact"
    assert run.is_dir() and not any(run.iterdir())


def test_smoke_run_output_lines_and_train_log(tmp_path: Path, shared_dir: Path, sp1024_model: Path, capsys):
    run = tmp_path / "smoke"
    assert main(["run", "--recipe", "tiny", "--smoke", "--data", str(shared_dir / "standin" / "standin_003.jsonl.zst"),
                 "--val-data", str(shared_dir / "fineweb" / "val_docs_901.jsonl"), "--tokenizer", str(sp1024_model),
                 "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert lines[0].startswith(f"run {run} (recipe tiny, seed 1337): 8 steps in ") and "(max_steps)" in lines[0]
    assert re.fullmatch(r"val_bpb \d\.\d{4} \(plain, post-quant\) \| pre-quant \d\.\d{4} \(plain\) \| "
                        r"quant gap [+-]\d\.\d{4}", lines[1]), lines[1]
    assert re.fullmatch(r"artifact [\d,]+ bytes = model [\d,]+ \+ code [\d,]+ \(limit 16,000,000\)", lines[2])
    assert "warning: training ended after 8 steps" in out.err and "1 steps" not in out.err + out.out
    assert "step 8/8 |" in out.err and "lr_scale" in out.err and "targets" in out.err
    log = (run / "train.log").read_text().strip().splitlines()
    tail = [line.split(" ", 1)[1] for line in log[-5:]]  # drop the timestamps
    assert tail[:3] == lines[:3] and "legality audit: passed" in tail[-1]
    # RUN/data has a manifest: it can be passed back as --data
    m = json.loads((run / "data" / "manifest.json").read_text())
    assert set(m["splits"]) == {"train", "val"} and m["tokenizer"]["sha256"]
    assert main(["data", "inspect", str(run / "data"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["val"]["bytes"] == 2_504_310


def test_torchrun_two_ranks_match_one_process(micro_data: Path, sp1024_model: Path, tmp_path: Path):
    """The whole pipeline under torchrun (gloo): rank-0 pack between barriers, rank-split eval,
    the audit on every rank. Two ranks do the same math as one process accumulating two micro-batches."""
    sets = [s for s in MICRO if not s.startswith("quant.groups")] + [
        "train.batch_tokens=4096", "train.max_steps=20", "train.warmdown_iters=5"]
    common = ["run", "--recipe", "tiny", "--data", str(micro_data), "--tokenizer", str(sp1024_model),
              "--no-progress", "--json"] + [x for s in sets for x in ("--set", s)]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "summary.json").read_text())

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pgolf", *common, "--out", str(tmp_path / "two")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert one["grad_accum"] == 2 and two["grad_accum"] == 1 and two["world_size"] == 2
    assert two["val_bpb_prequant"] == pytest.approx(one["val_bpb_prequant"], abs=1e-5)
    assert two["val_bpb"] == pytest.approx(one["val_bpb"], abs=1e-5)
    assert two["eval_tokens"] == one["eval_tokens"] and two["audit_passed"] is True

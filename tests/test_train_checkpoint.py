"""Checkpoints: pickle-free state round trips, bitwise resume, SIGTERM -> valid checkpoint -> resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.errors import InputError
from pgolf.model.weights import load_tensors
from pgolf.pipeline.job import train_run as train
from pgolf.pipeline.rundir import CHECKPOINT as CKPT_DIR
from pgolf.train.checkpoint import STATE_FILE, capture_rng, find_checkpoint, flatten_state, restore_rng, unflatten_state
from pgolf.train.checkpoint import TrainingInterrupted
from train_util import make_real_data, read_metrics, tiny_config, tiny_overrides  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_flatten_roundtrip_optimizer_state():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.95))
    p.grad = torch.randn(4, 3)
    opt.step()
    tensors: dict[str, torch.Tensor] = {}
    tree = flatten_state(opt.state_dict(), "opt0", tensors)
    text = json.dumps(tree)  # JSON-able, tensors moved out
    back = unflatten_state(json.loads(text), tensors)
    sd = opt.state_dict()
    assert back["param_groups"][0]["betas"] == (0.9, 0.95)
    assert set(back["state"]) == {0}
    for k, v in sd["state"][0].items():
        assert torch.equal(back["state"][0][k], v), k
    nested = {"pos": 3, "arr": np.arange(5, dtype=np.int64), "t": (1, "x", None), "f": 0.1}
    t2: dict[str, torch.Tensor] = {}
    out = unflatten_state(json.loads(json.dumps(flatten_state(nested, "loader", t2))), t2)
    assert out["pos"] == 3 and out["t"] == (1, "x", None) and out["f"] == 0.1
    assert np.array_equal(out["arr"], nested["arr"])
    with pytest.raises(TypeError):
        flatten_state({"bad": object()}, "x", {})


def test_rng_roundtrip():
    import random

    js, tensors = capture_rng(torch.device("cpu"))
    js = json.loads(json.dumps(js))
    a = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng(js, tensors, torch.device("cpu"))
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


RESUME_EXTRA = {
    "train.max_steps": 8, "train.warmdown_iters": 8, "train.checkpoint_every": 3,
    "optim.ema_decay": 0.9, "optim.grad_clip": 1.0, "data.loader": "shuffled", "data.prefetch": 2,
    "model.recur_start": 0, "model.recur_end": 0, "model.recur_start_frac": 0.5,
    "quant.qat": "late", "quant.qat_lr_threshold": 0.6, "quant.small_tensor_numel": 0,
    "model.bigram_buckets": 64, "model.bigram_dim": 16,
}


def test_resume_is_bitwise_identical(tmp_path):
    data = make_real_data(tmp_path)
    straight = train(tiny_config(**RESUME_EXTRA), data, tmp_path / "a", progress=False)
    assert straight["recurrence_on"] and straight["qat_on"] and straight["averaging"] == "ema"

    with pytest.raises(TrainingInterrupted) as e:
        train(tiny_config(**RESUME_EXTRA), data, tmp_path / "b", progress=False, stop_after=5)
    assert e.value.step == 5
    state = json.loads((tmp_path / "b" / CKPT_DIR / STATE_FILE).read_text())
    loop = state["loop"]
    assert loop["step"] == 5 and not loop["finished"] and loop["recurrence"] and loop["qat_on"]
    assert not (tmp_path / "b" / "model.safetensors").exists()
    with pytest.raises(Exception, match="already holds a checkpoint"):  # a fresh run will not clobber it
        train(tiny_config(**RESUME_EXTRA), data, tmp_path / "b", progress=False)

    resumed = train(tiny_config(**RESUME_EXTRA), data, tmp_path / "b", resume=True, progress=False)
    a = load_tensors(tmp_path / "a" / "model.safetensors")
    b = load_tensors(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["val_bpb_prequant"] == straight["val_bpb_prequant"]
    assert resumed["steps"] == straight["steps"] == 8
    # metrics are continuous: each step once, losses equal to the straight run
    ra, rb = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["step"] for r in rb] == list(range(1, 9))
    assert [r["train_loss"] for r in ra] == [r["train_loss"] for r in rb]
    # resuming a finished run only redoes the export and final evaluation
    again = train(tiny_config(**RESUME_EXTRA), data, tmp_path / "a", resume=True, progress=False)
    assert again["val_bpb_prequant"] == straight["val_bpb_prequant"] and again["warmup_seconds"] == 0
    keys = ("step", "train_loss", "val_bpb")
    assert [[r.get(k) for k in keys] for r in read_metrics(tmp_path / "a")] == [[r.get(k) for k in keys] for r in ra]


def test_resume_without_checkpoint_is_input_error(tmp_path):
    data = make_real_data(tmp_path)
    with pytest.raises(InputError, match="no checkpoint"):
        train(tiny_config(), data, tmp_path / "none", resume=True, progress=False)


def _cli(args: list[str], env_extra: dict | None = None) -> list[str]:
    return [sys.executable, "-m", "pgolf", "train", "--recipe", "tiny", *args]


def test_sigterm_leaves_valid_checkpoint(tmp_path):
    data = make_real_data(tmp_path)
    run = tmp_path / "run"
    sets = [x for o in tiny_overrides(**{"train.max_steps": 100_000, "train.warmdown_iters": 10})
            for x in ("--set", o)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_cli(["--data", str(data), "--out", str(run), "--no-progress", *sets]), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until a few steps are logged
        if len(read_metrics_safe(run)) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err  # interrupted work: exit 1 with a message
    assert "--resume" in err
    ck = find_checkpoint(run / CKPT_DIR)
    assert ck is not None
    state = json.loads((ck / STATE_FILE).read_text())
    step = state["loop"]["step"]
    assert step >= 3 and not state["loop"]["finished"]
    assert load_tensors(ck / "model.safetensors")  # loads without pickle

    sets2 = sets + ["--set", f"train.max_steps={step + 2}"]
    res = subprocess.run(_cli(["--data", str(data), "--out", str(run), "--resume", "--json", "--no-progress",
                               *sets2]), env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["steps"] == step + 2
    assert [r["step"] for r in read_metrics(run)] == list(range(1, step + 3))


def read_metrics_safe(run: Path) -> list[dict]:
    try:
        return read_metrics(run)
    except json.JSONDecodeError:  # a line being written
        return []

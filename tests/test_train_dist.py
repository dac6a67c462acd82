"""Two gloo ranks under torchrun do the same math as one process with gradient accumulation."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pgolf.pipeline.job import train_run as train
from train_util import make_real_data, read_metrics, tiny_config, tiny_overrides  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

EXTRA = {"train.max_steps": 5, "train.batch_tokens": 512, "train.micro_batch_tokens": 256,
         "train.warmdown_iters": 5, "optim.grad_clip": 1.0}


def test_two_process_gloo_matches_grad_accumulation(tmp_path):
    data = make_real_data(tmp_path)
    single = train(tiny_config(**EXTRA), data, tmp_path / "one", progress=False)
    assert single["grad_accum"] == 2

    sets = [x for o in tiny_overrides(**EXTRA) for x in ("--set", o)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pgolf", "train", "--recipe", "tiny", "--data", str(data), "--out", str(tmp_path / "two"),
           "--json", "--no-progress", *sets]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # only rank 0 answers (and writes files)
    assert all(s["world_size"] == 2 and s["grad_accum"] == 1 for s in lines)

    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4, 5]
    for a, b in zip(one, two):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5, (a, b)
    # the rank-split evaluation reduces to the same metric
    assert abs(lines[0]["val_bpb_prequant"] - single["val_bpb_prequant"]) < 1e-5

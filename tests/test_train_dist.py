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


RANKS_LEAVE_TOGETHER = """
import sys, time
from pathlib import Path
from pgolf import runtime
out = Path(sys.argv[1])
with runtime.process_group("cpu") as proc:
    assert runtime.distributed() and proc.world == 2 and proc.owns_group
    if proc.rank == 0:  # the main rank's late work (packing, plotting)
        time.sleep(1.0)
        (out / "rank0-done").write_text("1")
# rank 1 leaves only after rank 0 has finished; nobody is left in a group
(out / f"rank{proc.rank}-left").write_text(str(int((out / "rank0-done").exists())) + str(int(runtime.distributed())))
"""


def test_process_group_ranks_leave_together(tmp_path):
    script = tmp_path / "leave.py"
    script.write_text(RANKS_LEAVE_TOGETHER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "rank0-left").read_text() == (tmp_path / "rank1-left").read_text() == "10"


def test_process_group_single_process_and_errors(monkeypatch):
    from pgolf import runtime
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    with runtime.process_group("cpu") as proc:
        assert (proc.rank, proc.world, proc.owns_group, runtime.distributed()) == (0, 1, False, False)
    with pytest.raises(ValueError, match="boom"), runtime.process_group("cpu"):
        raise ValueError("boom")  # an error skips the barrier and still leaves

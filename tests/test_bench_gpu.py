"""bench_gpu.sh --dry-run: the GPU plan at CPU size, end to end for one recipe, rows appended."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_plan_covers_the_seed_recipes_with_their_tokenizers(shared_dir, tmp_path):
    import argparse

    import bench_gpu

    args = argparse.Namespace(shared=str(shared_dir), out=str(tmp_path), dry_run=False, seconds=60.0,
                              eval_tokens=1 << 20)
    cmds = {r: bench_gpu.plan(r, args) for r in bench_gpu.RECIPES}
    assert set(cmds) == {"baseline", "pr493", "pr1413", "pr1855"}
    assert cmds["baseline"][cmds["baseline"].index("--tokenizer") + 1].endswith("fineweb_1024_bpe.model")
    assert cmds["pr1413"][cmds["pr1413"].index("--tokenizer") + 1].endswith("fineweb_8192_bpe.model")
    assert "caseops" in cmds["pr1855"][cmds["pr1855"].index("--tokenizer") + 1]
    assert "train.max_seconds=60.0" in cmds["pr493"] and "--smoke" not in cmds["pr493"]


def test_dry_run_appends_a_row(shared_dir, tmp_path):
    doc = tmp_path / "bench.md"
    doc.write_text("# benchmarks\n\nearlier text\n")
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "bench_gpu.sh"), "--dry-run", "--recipes", "baseline",
                          "--shared", str(shared_dir), "--out", str(tmp_path / "runs"), "--doc", str(doc)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    text = doc.read_text()
    assert text.startswith("# benchmarks\n\nearlier text\n") and "## GPU plan" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| 20")]
    assert len(rows) == 1 and "| baseline |" in rows[0] and "CPU (--dry-run)" in rows[0]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert int(cells[4].replace(",", "")) == 8  # the smoke's 8 steps
    assert 1.0 < float(cells[9]) < 20.0  # a pre-quant val_bpb

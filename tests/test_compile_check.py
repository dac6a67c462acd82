"""benchmarks/compile_check.py at micro size: every phase of tiny and pr1413 compiles with
fullgraph=True and no graph break, with only the recompiles the phases need (aot_eager: dynamo finds
graph breaks before any backend runs, and it traces the backward too)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compile_check  # noqa: E402

from pgolf.config import load_config  # noqa: E402

MICRO = ["model.num_layers=4", "model.recur_start=1", "model.recur_end=2", "eval.seq_len=64"]


@pytest.mark.parametrize("recipe, extra, phases, recompiles", [
    ("tiny", ["quant.qat=\"late\""], ["train", "qat", "eval"], 0),  # QAT is a buffer: no recompile
    ("pr1413", MICRO, ["train", "recurrence", "eval", "ttt"], 1),
])
def test_no_graph_breaks_and_only_the_needed_recompiles(recipe, extra, phases, recompiles):
    cfg = load_config(recipe, extra, smoke=True)
    out = compile_check.check(cfg, "aot_eager", torch.device("cpu"))
    assert [r["phase"] for r in out["phases"]] == phases
    assert out["graph_breaks"] == 0, out["phases"]
    assert out["recompiles"] == recompiles, out["recompile_reasons"]
    assert len(out["recompile_reasons"]) == recompiles  # each with dynamo's guard failure


def test_a_graph_break_is_reported_with_its_reason(monkeypatch):
    from pgolf.model import gpt

    real = gpt.GPT.logits_from_hidden

    def with_a_break(self, h):
        print("a host call dynamo cannot trace")
        return real(self, h)

    monkeypatch.setattr(gpt.GPT, "logits_from_hidden", with_a_break)
    out = compile_check.check(load_config("tiny", smoke=True), "aot_eager", torch.device("cpu"))
    assert out["graph_breaks"] >= 1
    assert any("print" in r or "builtin" in r.lower() for p in out["phases"] for r in p["break_reasons"])

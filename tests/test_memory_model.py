"""benchmarks/memory_model.py: a first-principles estimate, compared with the records' peak memory."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import memory_model  # noqa: E402

from pgolf.config import load_config  # noqa: E402


@pytest.mark.parametrize("recipe", sorted(memory_model.RECORDS))
def test_estimate_is_within_15_percent_of_the_record(recipe):
    e = memory_model.estimate(load_config(recipe))
    assert e["tokens_per_gpu"] == {"baseline": 65_536, "pr1413": 98_304, "pr1855": 98_304}[recipe]
    assert 0.85 <= e["ratio"] <= 1.15, e
    assert sum(e["bytes"].values()) // 2 ** 20 in (e["total_mib"], e["total_mib"] - 1)


def test_parts_follow_the_config():
    a = memory_model.estimate(load_config("pr1413"), tokens=49_152)
    b = memory_model.estimate(load_config("pr1413"), tokens=98_304)
    assert b["bytes"]["activations"] == 2 * a["bytes"]["activations"]  # linear in tokens
    assert b["bytes"]["weights"] == a["bytes"]["weights"] == 4 * 35_943_512
    no_ema = memory_model.estimate(load_config("pr1413", ["optim.ema_decay=0"]))
    assert no_ema["bytes"]["averaging"] == 0 and b["bytes"]["averaging"] == 4 * 35_943_512
    flat = memory_model.estimate(load_config("pr1413", ["model.recur_start=-1", "model.recur_end=-1"]))
    assert flat["layers_visited"] == 11 and b["layers_visited"] == 15
    assert flat["bytes"]["activations"] * 15 == b["bytes"]["activations"] * 11

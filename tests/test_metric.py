import math

import numpy as np
import pytest
import torch

from pgolf.data.tokenizer import ByteTables
from pgolf.metric import BpbAccumulator


def test_bpb_definition_by_hand():
    acc = BpbAccumulator()
    acc.add(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 0, 4]))
    acc.add(torch.tensor([0.5, 9.0]), torch.tensor([2, 5]), valid=torch.tensor([True, False]))  # padding ignored
    r = acc.result()
    assert r["tokens"] == 4 and r["bytes"] == 7
    assert r["val_loss"] == pytest.approx(6.5 / 4)
    assert r["val_bpb"] == pytest.approx(6.5 / math.log(2) / 7)


def test_float64_accumulation_is_exact_enough():
    # 1e6 float32 NLLs summed: float64 accumulation keeps the sum exact to ~1e-9 relative.
    nll = torch.full((1_000_000,), 2.3, dtype=torch.float32)
    acc = BpbAccumulator()
    for chunk in nll.split(1000):
        acc.add(chunk, torch.ones_like(chunk, dtype=torch.int64))
    assert acc.result()["val_loss"] * 1e6 == pytest.approx(float(np.float32(2.3)) * 1e6, rel=1e-12)


def test_sums_stay_on_the_device_until_result():
    acc = BpbAccumulator()
    acc.add(torch.tensor([1.0]), torch.tensor([3]))
    assert isinstance(acc.nll, torch.Tensor) and acc.nll.dtype == torch.float64 and acc.counts.dtype == torch.int64


def test_no_bytes_is_an_error():
    with pytest.raises(ValueError):
        BpbAccumulator().result()


def test_token_bytes_space_rule():
    # ids: 0 boundary (BOS-like), 1 "▁a" (1 byte + space), 2 byte-fallback (1 byte)
    t = ByteTables(np.array([0, 1, 1], np.int16), np.array([False, True, False]), np.array([True, False, False]))
    # after a boundary no space byte; after a normal token the space counts
    assert t.token_bytes(np.array([0, 2]), np.array([1, 1])).tolist() == [1, 2]
    assert t.stream_bytes(np.array([0, 1, 1, 2])) == 1 + 2 + 1

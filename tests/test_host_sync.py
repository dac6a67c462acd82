"""No host sync inside a training step, none per batch in evaluation.

A TorchDispatchMode records every op that makes the host wait for the device: reading a scalar
(.item(), float(t), bool(t): aten::_local_scalar_dense) and data-dependent shapes (nonzero,
masked_select, unique). On CUDA these stall the pipeline; on CPU the same ops are recorded, so the
check runs here.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pgolf.config import load_config
from train_util import make_real_data, trainer_for

SYNC_OPS = ("aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::masked_select", "aten::unique")


class SyncRecorder(TorchDispatchMode):
    """`host`: tensors that live on the CPU even in a CUDA run (Adam's step counters), whose reads
    cost no device sync."""

    def __init__(self, host: list[torch.Tensor] = ()) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.host = {t.data_ptr() for t in host}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if name.startswith(SYNC_OPS) and not (args and isinstance(args[0], torch.Tensor)
                                              and args[0].data_ptr() in self.host):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def adam_steps(optimizers) -> list[torch.Tensor]:
    """Adam keeps `step` as a CPU tensor unless capturable, on every device."""
    return [s["step"] for o in optimizers if isinstance(o, torch.optim.Adam | torch.optim.AdamW)
            for s in o.state.values() if isinstance(s.get("step"), torch.Tensor)]


def micro(recipe: str, *extra: str):
    # the recipe's switches at CPU size, on the sp1024 micro shards
    return load_config(recipe, ["model.vocab_size=1024", "train.compile=\"off\"", *extra], smoke=True)


def test_the_recorder_sees_item_and_nonzero():
    t = torch.arange(4.0)
    with SyncRecorder() as rec:
        float(t.sum())
        torch.nonzero(t)
        t * 2
    assert rec.calls == ["aten::_local_scalar_dense", "aten::nonzero"]


@pytest.mark.parametrize("recipe", ["baseline", "pr493", "pr1413", "lora-ttt-1xh100", "pr1855"])
def test_a_training_step_never_syncs(tmp_path, recipe):
    cfg = micro(recipe, "optim.grad_clip=0.3", "quant.qat=\"full\"")
    tr = trainer_for(cfg, make_real_data(tmp_path))
    try:
        tr.train_step()  # optimizer state is created on the first step
        tr.model.set_recurrence(True)
        with SyncRecorder(adam_steps(tr.optimizers)) as rec:
            for _ in range(2):
                tr.train_step()
                if tr.averager is not None:
                    tr.averager.update(tr.model, 2)
    finally:
        tr.loader.close()
    assert rec.calls == [], f"{recipe}: host syncs in a training step: {sorted(set(rec.calls))}"


@pytest.mark.parametrize("method", ["plain", "sliding", "docs"])
def test_evaluation_syncs_a_fixed_number_of_times_whatever_the_batches(method):
    from eval_util import base_cfg, tables, tiny_model
    from pgolf.eval.methods import evaluate

    cfg = base_cfg(f"eval.method={method}", "eval.batch_seqs=2")
    model = tiny_model(cfg).eval()
    rng = np.random.default_rng(0)
    counts = []
    for n_tokens in (512, 2048):  # 8 and 32 windows of 32
        toks = rng.integers(4, 64, n_tokens)
        toks[::100] = 1  # documents for the doc-isolated method
        with SyncRecorder() as rec:
            evaluate(model, toks, tables().target_bytes(toks), cfg, "cpu", method)
        counts.append(len(rec.calls))
    assert counts[0] == counts[1], f"{method}: host syncs grow with the number of batches: {counts}"

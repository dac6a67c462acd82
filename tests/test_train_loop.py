"""The training loop on CPU: learning, wall-clock stop, compile warm-up restore, run-dir outputs."""
from __future__ import annotations

import json
import math
import time

import pytest
import torch

from pgolf.model.weights import load_tensors
from pgolf.pipeline.job import train_run as train
from pgolf.pipeline.rundir import SUMMARY_KEYS
from pgolf.train.trainer import grad_accum_steps
from train_util import make_fixed_batch_data, make_real_data, read_metrics, tiny_config, trainer_for  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_overfits_fixed_batch(tmp_path):
    data = make_fixed_batch_data(tmp_path, span=257)
    cfg = tiny_config(**{"train.max_steps": 60, "train.warmdown_iters": 10, "train.log_every": 10})
    s = train(cfg, data, tmp_path / "run", progress=False)
    losses = [r["train_loss"] for r in read_metrics(tmp_path / "run") if r["train_loss"] is not None]
    assert losses[0] > 6.0  # ~ln(1024) = 6.93 at init
    assert losses[-1] < 1.0, losses
    assert s["steps"] == 60 and s["stop_reason"] == "max_steps"


def test_loss_drops_on_real_text_and_outputs(tmp_path):
    data = make_real_data(tmp_path)
    cfg = tiny_config(**{"train.max_steps": 30, "train.batch_tokens": 1024, "train.micro_batch_tokens": 512,
                         "train.warmdown_iters": 10, "train.val_every": 15, "train.log_every": 5})
    run = tmp_path / "run"
    s = train(cfg, data, run, progress=False)
    recs = read_metrics(run)
    losses = [r["train_loss"] for r in recs if r["train_loss"] is not None]
    # single batches vary a lot on real text: compare the first log with the mean of the last three
    assert losses[0] > 6.5 and sum(losses[-3:]) / 3 < losses[0] - 1.0, losses
    assert s["val_loss_prequant"] < 6.3  # uniform over 1024 tokens is 6.93
    # metrics.jsonl: one parseable record per log step, val on val steps and at the end
    assert [r["step"] for r in recs] == [1, 5, 10, 15, 20, 25, 30]
    for r in recs:
        for k in ("step", "train_loss", "lr_scale", "tokens_per_second", "ms_per_step", "elapsed_s",
                  "memory_bytes"):
            assert k in r
    assert [r["step"] for r in recs if "val_bpb" in r] == [15, 30]
    assert recs[-1]["val_bpb"] == s["val_bpb_prequant"]
    # val_bpb is consistent with val_loss and the byte count of the same tokens
    assert 1.0 < s["val_bpb_prequant"] < s["val_loss_prequant"] / math.log(2)
    # summary.json: every agreed key; pack/eval keys left null for the later stages
    summary = json.loads((run / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    for k in ("val_loss", "val_bpb", "model_bytes", "code_bytes", "artifact_bytes", "eval_method", "eval_seconds"):
        assert summary[k] is None
    assert summary["steps"] == 30 and summary["train_tokens"] == 30 * 1024
    assert summary["params"] == sum(t.numel() for t in load_tensors(run / "model.safetensors").values())
    assert summary["recipe"] == "tiny" and summary["seed"] == cfg.train.seed
    assert s["grad_accum"] == 2
    for name in ("config.json", "resolved.json", "env.json", "train.log", "checkpoint/state.json"):
        assert (run / name).is_file(), name
    env = json.loads((run / "env.json").read_text())
    assert env["world_size"] == 1 and env["torch"] == torch.__version__


def test_wall_clock_stop(tmp_path):
    data = make_real_data(tmp_path)
    cfg = tiny_config(**{"train.max_steps": 100_000, "train.max_seconds": 2, "train.warmdown_iters": 50})
    t0 = time.perf_counter()
    s = train(cfg, data, tmp_path / "run", progress=False)
    wall = time.perf_counter() - t0
    recs = [r for r in read_metrics(tmp_path / "run")]
    assert s["stop_reason"] == "time budget" and s["steps"] < 100_000
    # the first step past the cap is the last one: before it the clock was under 2 s
    assert recs[-1]["elapsed_s"] >= 2.0 and recs[-2]["elapsed_s"] < 2.0
    assert s["train_seconds"] == recs[-1]["elapsed_s"]
    assert wall < 30


def test_grad_accum_must_divide():
    cfg = tiny_config(**{"train.batch_tokens": 768, "train.micro_batch_tokens": 256})
    assert grad_accum_steps(cfg, 1) == 3
    try:
        grad_accum_steps(cfg, 2)
    except Exception as e:
        assert "train.batch_tokens" in str(e) and "world size (2)" in str(e)
    else:
        raise AssertionError("expected a ConfigError")


def test_warmup_restores_state(tmp_path):
    data = make_real_data(tmp_path)
    cfg = tiny_config(**{"train.warmup_steps": 3, "data.loader": "shuffled", "data.prefetch": 2})
    tr = trainer_for(cfg, data)
    try:
        before = {k: v.clone() for k, v in tr.model.state_dict().items()}
        loader_before = tr.loader.state_dict()
        first_batch_x = None
        assert tr.warmup() > 0
        for k, v in tr.model.state_dict().items():
            assert torch.equal(v, before[k]), k
        assert all(len(o.state) == 0 for o in tr.optimizers)
        assert tr.loader.state_dict() == loader_before
        first_batch_x = tr.loader.next_batch()[0]
    finally:
        tr.loader.close()
    # the batch after warm-up is the first batch a fresh loader hands out
    tr2 = trainer_for(cfg, data)
    try:
        assert torch.equal(tr2.loader.next_batch()[0], first_batch_x)
    finally:
        tr2.loader.close()


def test_warmup_does_not_change_result(tmp_path):
    data = make_real_data(tmp_path)
    extra = {"train.max_steps": 6, "optim.ema_decay": 0.9}
    train(tiny_config(**extra, **{"train.warmup_steps": 0}), data, tmp_path / "a", progress=False)
    train(tiny_config(**extra, **{"train.warmup_steps": 3}), data, tmp_path / "b", progress=False)
    a = load_tensors(tmp_path / "a" / "model.safetensors")
    b = load_tensors(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("from_init", [True, False])
def test_ema_starts_from_the_initial_weights(tmp_path, from_init):
    d = 0.5
    cfg = tiny_config(**{"train.max_steps": 2, "train.val_every": 0, "optim.ema_decay": d,
                         "optim.ema_from_init": from_init})
    tr = trainer_for(cfg, make_real_data(tmp_path))
    seen = [{n: p.detach().clone() for n, p in tr.model.named_parameters()}]
    step = tr.train_step

    def recording_step():
        loss = step()
        seen.append({n: p.detach().clone() for n, p in tr.model.named_parameters()})
        return loss

    tr.train_step = recording_step
    try:
        tr.loop()
    finally:
        tr.loader.close()
    assert len(seen) == 3
    for n, got in tr.averager.averaged().items():
        w0, w1, w2 = (s[n] for s in seen)
        start = w0 * d + (1 - d) * w1 if from_init else w1  # upstream: ema = init, then ema = d*ema + (1-d)*w
        torch.testing.assert_close(got, start * d + (1 - d) * w2, rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compile_bf16_run(tmp_path):
    data = make_real_data(tmp_path)
    cfg = tiny_config(**{"train.device": "cuda", "train.compile": "on", "train.warmup_steps": 3,
                         "train.max_steps": 12, "train.batch_tokens": 1024, "train.micro_batch_tokens": 512,
                         "model.recur_start": 0, "model.recur_end": 0, "model.recur_start_frac": 0.5,
                         "quant.qat": "late", "quant.small_tensor_numel": 0, "optim.ema_decay": 0.9})
    s = train(cfg, data, tmp_path / "run", progress=False)
    assert s["device"].startswith("cuda") and s["steps"] == 12 and s["warmup_seconds"] > 0
    assert s["recurrence_on"] and math.isfinite(s["val_bpb_prequant"]) and s["val_bpb_prequant"] < 4.0
    assert s["peak_memory_bytes"] > 0


def test_gptq_calibration_saves_hessians(tmp_path):
    from pgolf.model.gpt import GPT
    from pgolf.quant.gptq import hessian_targets

    data = make_real_data(tmp_path)
    cfg = tiny_config(**{"train.max_steps": 3, "quant.gptq_batches": 4, "quant.small_tensor_numel": 0,
                         "quant.groups": '[{pattern="*", bits=8, gptq=true}]'})
    s = train(cfg, data, tmp_path / "run", progress=False)
    hs = load_tensors(tmp_path / "run" / "hessians.safetensors")
    assert set(hs) == set(hessian_targets(GPT(cfg.model), cfg.quant).values()) and len(hs) > 0
    for name, h in hs.items():
        assert h.ndim == 2 and h.shape[0] == h.shape[1]
        assert torch.allclose(h, h.T, atol=1e-6) and bool((torch.diagonal(h) >= 0).all()), name
    assert s["gptq_calib_seconds"] > 0


def test_doc_isolated_training_scores_each_document_alone(tmp_path):
    import numpy as np
    from pgolf.data.shards import write_shard

    data = make_real_data(tmp_path)
    toks = np.random.default_rng(0).integers(2, 1024, 20_000)
    toks[::23] = 1  # short documents: every window spans several
    write_shard(data / "fineweb_train_000000.bin", toks)
    cfg = tiny_config(**{"train.doc_isolated": True, "model.doc_attention": "flex"})
    tr = trainer_for(cfg, data)
    with torch.no_grad():  # zero-init output projections would make attention invisible
        for prm in tr.model.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    seen = []
    fwd = tr.fwd

    def spy(x, y, **kw):
        loss = fwd(x, y, **kw)
        with torch.no_grad():
            seen.append((float(loss), float(tr.model(x, y, doc_isolated=True)), float(tr.model(x, y))))
        return loss

    tr.fwd = spy
    try:
        tr.train_step()
    finally:
        tr.loader.close()
    (loss, isolated, plain), = seen
    assert loss == pytest.approx(isolated, abs=1e-6) and abs(loss - plain) > 1e-5  # the batch spans documents


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_flex_doc_attention_backward_matches_dense():
    from pgolf.config import ModelConfig
    from pgolf.model.gpt import GPT

    base = dict(vocab_size=64, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2)
    torch.manual_seed(0)
    dense = GPT(ModelConfig(**base)).cuda()
    flex = GPT(ModelConfig(**base, doc_attention="flex")).cuda()
    flex.load_state_dict(dense.state_dict())
    idx = torch.randint(2, 64, (2, 256), device="cuda")
    idx[:, ::37] = 1
    la, lb = dense(idx, idx, doc_isolated=True), flex(idx, idx, doc_isolated=True)
    torch.testing.assert_close(lb, la, rtol=1e-4, atol=1e-4)
    la.backward()
    lb.backward()
    for a, b in zip(dense.parameters(), flex.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4)


def test_bf16_embedding_tables_train_and_cpu_keeps_fp32(tmp_path):
    from pgolf.model.weights import cast_embeddings

    cfg = tiny_config(**{"train.embed_dtype": "bf16", "model.bigram_buckets": 64, "model.bigram_dim": 16})
    tr = trainer_for(cfg, make_real_data(tmp_path))
    try:
        assert tr.model.tok_emb.weight.dtype == torch.float32  # bf16 applies on CUDA only
        ids = {id(p) for o in tr.optimizers for g in o.param_groups for p in g["params"]}
        assert sorted(cast_embeddings(tr.model, torch.bfloat16)) == ["bigram.table", "tok_emb"]
        assert id(tr.model.tok_emb.weight) in ids  # the same Parameter, still optimized
        before = tr.model.tok_emb.weight.detach().clone()
        losses = [float(tr.train_step()) for _ in range(3)]
        assert all(math.isfinite(x) for x in losses)
        assert tr.model.tok_emb.weight.dtype == torch.bfloat16 and not torch.equal(before, tr.model.tok_emb.weight)
        state = next(o.state[tr.model.tok_emb.weight] for o in tr.optimizers if tr.model.tok_emb.weight in o.state)
        assert state["exp_avg"].dtype == torch.bfloat16
    finally:
        tr.loader.close()

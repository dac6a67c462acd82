"""Evaluation methods: plans, equivalences between methods, doc isolation, TTT, time budget."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from pgolf.config import ConfigError
from pgolf.errors import WorkError
from pgolf.eval.methods import CPU_EVAL_TOKENS, eval_token_cap, evaluate
from pgolf.eval.phased import phase_bounds
from pgolf.eval.plans import Window, doc_spans, docs_plan, plain_plan, plan_coverage, sliding_plan, split_plan
from pgolf.eval.ttt_lora import attached_lora, script_scoring

from conftest import exit_child
from eval_util import V, base_cfg, reference_plain, run_eval, tables, tiny_model


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(*extra: str):
    return base_cfg("eval.ttt_chunk_tokens=64", "eval.lora_targets=q,v,o,mlp,lm_head", *extra)




def stream(n: int = 300, seed: int = 0, docs: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    toks = rng.integers(4, V, n)
    toks[rng.choice(np.arange(1, n), docs, replace=False)] = 1
    toks[0] = 1
    return toks


def close(a: dict, b: dict, atol: float = 2e-5) -> None:
    assert a["tokens"] == b["tokens"] and a["bytes"] == b["bytes"]
    assert abs(a["val_loss"] - b["val_loss"]) < atol
    if "nll" in a and "nll" in b:
        assert torch.allclose(a["nll"], b["nll"], atol=atol, rtol=0)


# -- plans ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,w,s", [(1, 4, 2), (10, 4, 1), (100, 32, 8), (101, 32, 8), (37, 16, 16), (5, 64, 8),
                                   (1000, 64, 7), (64, 64, 64), (65, 64, 64)])
def test_sliding_plan_scores_every_target_once(n, w, s):
    plan = sliding_plan(n, w, s)
    assert (plan_coverage(plan, n) == 1).all()
    assert plan[0] == Window(0, min(w, n), 0)
    for k, win in enumerate(plan[1:], start=1):
        # challenge.md: starts every s while start + (w - s) < total; later windows score their last s
        assert win.start == k * s and win.start + (w - s) < n
        assert win.score_from == win.start + w - s and win.length == min(w, n - win.start)
    assert plan[-1].end == n


def test_stride_equal_window_is_the_plain_plan():
    assert sliding_plan(300, 32, 32) == plain_plan(300, 32)
    assert (plan_coverage(plain_plan(299, 32), 299) == 1).all()


def test_split_plan_cuts_at_chunks_and_keeps_coverage():
    n, chunk = 500, 64
    parts = split_plan(sliding_plan(n, 48, 8), chunk, n)
    assert len(parts) == math.ceil(n / chunk)
    for k, part in enumerate(parts):
        for w in part:
            assert k * chunk <= w.score_from < w.end <= min((k + 1) * chunk, n)
    assert (plan_coverage([w for p in parts for w in p], n) == 1).all()


def test_doc_spans_and_docs_plan():
    toks = np.array([5, 6, 1, 7, 8, 9, 1, 1, 4, 4])
    spans = doc_spans(toks)
    assert spans == [(0, 2), (2, 6), (6, 7), (7, 9)]
    plan = docs_plan(spans, window=2, stride=1)
    assert (plan_coverage(plan, 9) == 1).all()
    for w in plan:  # no window crosses a document start
        assert any(lo <= w.start and w.end <= hi for lo, hi in spans)


def test_phase_bounds_cut_at_target_fractions():
    spans = [(0, 10), (10, 50), (50, 60), (60, 100)]
    assert phase_bounds(spans, [0.5]) == [(0, 3), (3, 4)]  # target 50 is in doc 2
    assert phase_bounds(spans, [0.05, 0.3]) == [(0, 1), (1, 2), (2, 4)]
    assert phase_bounds(spans, [0.99]) == [(0, 4)]  # cutting after the last doc: one phase
    # document counts (PR #1855's 833 / 1666 / 2500) win over fractions; counts past the end are dropped
    assert phase_bounds(spans, [0.5], (1, 3)) == [(0, 1), (1, 3), (3, 4)]
    assert phase_bounds(spans, [0.5], (2, 4, 9)) == [(0, 2), (2, 4)]
    # fractions count targets along the queue: longest first, target 50 of 100 is in the second doc
    queued = [spans[i] for i in (1, 3, 0, 2)]
    assert phase_bounds(queued, [0.5]) == [(0, 2), (2, 4)]


def test_phase_queue_longest_first_ties_in_stream_order():
    from pgolf.eval.phased import phase_queue

    spans = [(0, 10), (10, 50), (50, 60), (60, 100), (100, 101)]
    assert phase_queue(spans, tiny_cfg()) == [0, 1, 2, 3, 4]
    assert phase_queue(spans, tiny_cfg("eval.phased_order=longest")) == [1, 3, 0, 2, 4]


# -- equivalences --------------------------------------------------------------------------------

def test_plain_method_matches_evaluate_plain():
    cfg = tiny_cfg()
    m, toks, tb = tiny_model(cfg), stream(), tables()
    ref = reference_plain(m, toks, 32)
    out = run_eval(m, toks, cfg, "plain")
    close(out, ref)
    assert out["method"] == "plain" and out["seconds"] >= 0 and not torch.isnan(out["nll"]).any()
    # the per-target scores are the reported totals
    assert abs(out["nll"].double().sum().item() / out["tokens"] - out["val_loss"]) < 1e-9
    # bytes agree with an independent computation from the tables
    assert out["bytes"] == tb.stream_bytes(toks)


def test_sliding_with_window_covering_the_stream_equals_plain():
    cfg = tiny_cfg("eval.seq_len=512", "eval.stride=16")
    m, toks, tb = tiny_model(cfg), stream(200), tables()
    close(run_eval(m, toks, cfg, "sliding"), run_eval(m, toks, cfg, "plain"))
    close(run_eval(m, toks, cfg, "sliding"), reference_plain(m, toks, 512))


def test_sliding_with_stride_equal_window_equals_plain():
    cfg = tiny_cfg("eval.stride=32")
    m, toks, tb = tiny_model(cfg), stream(), tables()
    close(run_eval(m, toks, cfg, "sliding"), reference_plain(m, toks, 32))


def test_sliding_scores_with_more_context_than_plain():
    cfg = tiny_cfg()
    m, toks, tb = tiny_model(cfg), stream(), tables()
    plain, slide = run_eval(m, toks, cfg, "plain"), run_eval(m, toks, cfg, "sliding")
    # the first window is shared; later targets see different context, so some scores differ
    assert torch.allclose(plain["nll"][:32], slide["nll"][:32], atol=1e-5)
    assert not torch.allclose(plain["nll"], slide["nll"], atol=1e-4)


@pytest.mark.parametrize("method", ["docs", "plain", "sliding"])
def test_doc_isolated_two_documents_equal_each_alone(method):
    # docs slides inside each document (64 < doc length); plain/sliding windows hold both docs
    window = 64 if method == "docs" else 512
    cfg = tiny_cfg("eval.doc_isolated=true", f"eval.seq_len={window}", "eval.stride=16")
    m, tb = tiny_model(cfg), tables()
    rng = np.random.default_rng(3)
    a = np.concatenate(([1], rng.integers(4, V, 40)))
    b = np.concatenate(([1], rng.integers(4, V, 70)))
    both = run_eval(m, np.concatenate((a, b)), cfg, method)["nll"].double()
    alone_a = run_eval(m, a, cfg, method)["nll"].double()
    alone_b = run_eval(m, b, cfg, method)["nll"].double()
    assert torch.allclose(both[: len(a) - 1], alone_a, atol=2e-5)
    assert torch.allclose(both[len(a):], alone_b, atol=2e-5)
    bos_nll = both[len(a) - 1]  # doc a predicting b's BOS: the only extra term
    assert abs(both.sum() - (alone_a.sum() + alone_b.sum() + bos_nll)) < 1e-4


def test_docs_method_equals_doc_isolated_plain():
    cfg = tiny_cfg("eval.doc_isolated=true", "eval.seq_len=512")
    m, toks, tb = tiny_model(cfg), stream(), tables()
    close(run_eval(m, toks, cfg, "docs"), run_eval(m, toks, cfg, "plain"))


def test_ttt_sgd_with_zero_lr_equals_sliding():
    cfg = tiny_cfg("eval.ttt_lr=0", "eval.ttt_epochs=2")
    m, toks, tb = tiny_model(cfg), stream(), tables()
    out = run_eval(m, toks, cfg, "ttt-sgd")
    assert out["chunks"] == math.ceil(299 / 64)
    close(out, run_eval(m, toks, cfg, "sliding"))


def docs_stream(lengths: list[int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([np.concatenate(([1], rng.integers(4, V, n - 1))) for n in lengths])


def test_ttt_lora_with_zero_lr_equals_docs():
    # stride = lora_chunk, window a multiple of it, docs a multiple of it (the sliding plan's short
    # tail window would otherwise see less context): both give each target the same context
    cfg = tiny_cfg("eval.lora_lr=0", "eval.stride=8")
    m, tb = tiny_model(cfg), tables()
    toks = docs_stream([80, 16, 120, 48, 57])
    assert [hi - lo for lo, hi in doc_spans(toks)] == [80, 16, 120, 48, 56]  # long documents slide too
    close(run_eval(m, toks, cfg, "ttt-lora"), run_eval(m, toks, cfg, "docs"))


def test_phased_with_zero_lr_equals_docs():
    cfg = tiny_cfg("eval.lora_lr=0", "eval.ttt_lr=0", "eval.phased_points=[0.2,0.7]")
    m, toks, tb = tiny_model(cfg), docs_stream([80, 16, 120, 48, 57]), tables()
    out = run_eval(m, toks, cfg, "phased")
    assert out["phases"] == 3
    close(out, run_eval(m, toks, cfg, "docs"))


# -- TTT actually adapts, and never touches the caller's model -------------------------------------

def repeated_stream(n: int, period: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pattern = rng.integers(4, V, period)
    toks = np.resize(pattern, n)
    toks[::160] = 1  # a few documents, so phased TTT has phases
    return toks


@pytest.mark.parametrize("method,extra", [
    ("ttt-sgd", ["eval.ttt_lr=0.3", "eval.ttt_epochs=2", "eval.ttt_chunk_tokens=96"]),
    ("ttt-lora", ["eval.lora_lr=0.03", "eval.lora_chunk=16"]),
    ("phased", ["eval.lora_lr=0.03", "eval.lora_chunk=16", "eval.ttt_lr=0.3", "eval.phased_points=[0.3]"]),
])
def test_ttt_learns_a_repeated_stream_and_leaves_the_model_alone(method, extra):
    # a 48-token pattern repeated: context beyond the 32-token window can only help through training
    cfg = tiny_cfg("eval.stride=32", *extra)
    m, tb = tiny_model(cfg), tables()
    toks = repeated_stream(480, 48)
    before = copy.deepcopy(m.state_dict())
    base = run_eval(m, toks, cfg, "docs")
    ttt = run_eval(m, toks, cfg, method)
    assert ttt["val_loss"] < base["val_loss"] - 0.05
    if method == "phased":  # the global SGD between phases changed the scores of later documents
        lora = run_eval(m, toks, cfg, "ttt-lora")
        assert ttt["phases"] == 2 and abs(lora["val_loss"] - ttt["val_loss"]) > 1e-3
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(type(b.attn.c_q).__name__ == "CastedLinear" for b in m.blocks)


def test_lora_adapters_start_as_identity_and_are_removed():
    cfg = tiny_cfg()
    m = tiny_model(cfg)
    x = torch.as_tensor(stream(40)[None].repeat(3, 0))
    ref = m(x)
    with attached_lora(m, ["q", "k", "v", "o", "mlp"], rows=3, rank=4) as lora:
        assert len(lora.modules) == 5 * cfg.model.num_layers
        assert torch.equal(m(x), ref)
        with torch.no_grad():
            lora.modules[0].B[1].normal_()
        out = m(x)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[2], ref[2])  # rows do not mix
        assert not torch.allclose(out[1], ref[1])
    assert type(m.blocks[0].attn.c_q).__name__ == "CastedLinear"
    assert torch.equal(m(x), ref)


# -- budget and config checks ----------------------------------------------------------------------

def test_time_limit_warns_or_fails():
    cfg = tiny_cfg("eval.time_limit=1e-9")
    m, toks, tb = tiny_model(cfg), stream(100), tables()
    out = run_eval(m, toks, cfg, "plain")
    assert "eval.time_limit" in out["warning"]
    cfg = tiny_cfg("eval.time_limit=1e-9", "eval.enforce_time_limit=true")
    with pytest.raises(WorkError, match="time_limit"):
        run_eval(m, toks, cfg, "plain")
    assert "warning" not in run_eval(m, toks, tiny_cfg(), "plain")


def test_eval_token_cap_cpu_default_and_explicit():
    cpu = torch.device("cpu")
    assert eval_token_cap(tiny_cfg("eval.max_tokens=0"), cpu)[0] == CPU_EVAL_TOKENS
    cap, note = eval_token_cap(tiny_cfg("eval.max_tokens=101"), cpu)
    assert cap == 101 and "first 101" in note
    assert eval_token_cap(tiny_cfg("eval.max_tokens=0"), torch.device("meta"))[0] == 0  # GPU: the full split


@pytest.mark.parametrize("override,field", [("eval.lora_targets=q,zz", "eval.lora_targets"),
                                            ("eval.phased_points=[1.5]", "eval.phased_points")])
def test_bad_eval_config_names_the_field_at_load(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        tiny_cfg(override)


@pytest.mark.parametrize("override,field,method", [("eval.stride=64", "eval.stride", "sliding"),
                                                   ("eval.lora_chunk=64", "eval.lora_chunk", "ttt-lora")])
def test_bad_method_settings_name_the_field(override, field, method):
    cfg = tiny_cfg(override)  # valid on its own; the method finds it too large for the window
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        run_eval(tiny_model(cfg), stream(50), cfg, method)


# -- distributed: ranks split the work, reductions are exact ---------------------------------------

DIST_METHODS = ("sliding", "docs", "ttt-sgd", "ttt-lora", "phased")
DIST_EXTRA = ("eval.ttt_lr=0.2", "eval.lora_lr=0.02", "eval.phased_points=[0.4]")


def _dist_worker(rank: int, world: int, init: str, out_dir: str) -> None:
    import json

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        cfg = tiny_cfg(*DIST_EXTRA)
        m, toks, tb = tiny_model(cfg), stream(), tables()
        res = {}
        for method in DIST_METHODS:
            r = run_eval(m, toks, cfg, method)
            res[method] = {k: r[k] for k in ("val_loss", "tokens", "bytes")}
        if rank == 0:
            with open(f"{out_dir}/dist.json", "w") as f:
                json.dump(res, f)
    finally:
        dist.destroy_process_group()
    exit_child()


def test_two_ranks_match_one(tmp_path):
    import json

    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, f"file://{tmp_path}/pg", str(tmp_path)), nprocs=2, join=True)
    got = json.loads((tmp_path / "dist.json").read_text())
    cfg = tiny_cfg(*DIST_EXTRA)
    m, toks, tb = tiny_model(cfg), stream(), tables()
    for method in DIST_METHODS:
        ref = run_eval(m, toks, cfg, method)
        assert got[method]["tokens"] == ref["tokens"] and got[method]["bytes"] == ref["bytes"], method
        assert abs(got[method]["val_loss"] - ref["val_loss"]) < 1e-4, method


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["sliding", "docs", "ttt-sgd", "ttt-lora", "phased"])
def test_cuda_matches_cpu(method):
    # fp32 on both sides (train.dtype=fp32 turns bf16 autocast off) so the scores must agree closely
    cfg = tiny_cfg("train.dtype=fp32", *DIST_EXTRA)
    m, toks, tb = tiny_model(cfg), stream(), tables()
    cpu = run_eval(m, toks, cfg, method)
    gpu = run_eval(copy.deepcopy(m), toks, cfg, method, device="cuda")
    assert gpu["tokens"] == cpu["tokens"] and gpu["bytes"] == cpu["bytes"]
    assert abs(gpu["val_loss"] - cpu["val_loss"]) < 1e-3
    bf16 = run_eval(copy.deepcopy(m), toks, tiny_cfg(*DIST_EXTRA), method, device="cuda")
    assert abs(bf16["val_loss"] - cpu["val_loss"]) < 0.05


def test_lora_adam_settings_reach_the_optimizer(monkeypatch):
    import pgolf.eval.ttt_lora as tl

    made = []
    real = torch.optim.AdamW

    def spy(params, **kw):
        made.append(kw)
        return real(params, **kw)

    monkeypatch.setattr(tl.torch.optim, "AdamW", spy)
    cfg = tiny_cfg("eval.lora_beta1=0", "eval.lora_beta2=0.99", "eval.lora_eps=1e-10", "eval.lora_wd=0.5")
    run_eval(tiny_model(cfg), stream(), cfg, "ttt-lora")
    assert made and all(k == {"lr": cfg.eval.lora_lr, "betas": (0.0, 0.99), "eps": 1e-10, "weight_decay": 0.5}
                        for k in made)


def test_record_lora_init_and_scale():
    from pgolf.eval.ttt_lora import attached_lora, script_scoring

    cfg = tiny_cfg()
    m = tiny_model(cfg)
    with attached_lora(m, ("q", "v"), rows=2, rank=4, seed=0, init="record") as lora:
        ad = lora.modules[0]
        assert ad.scale == 0.25 and 0.005 < float(ad.A.detach().std()) < 0.02 and 0.0005 < float(ad.B.detach().std()) < 0.002
        assert torch.equal(ad.A[0], ad.A[1]) and torch.equal(ad.B[0], ad.B[1])  # every row starts alike
        x = torch.randn(2, 5, ad.A.size(2))
        want = torch.bmm(torch.bmm(x, ad.A.transpose(1, 2)), ad.B.transpose(1, 2)) / 4  # x A^T B^T / rank
        torch.testing.assert_close(ad.delta(x), want)


def test_lora_without_context_scores_a_chunk_from_its_own_tokens_only():
    cfg_ctx = tiny_cfg("eval.lora_chunk=8", "eval.lora_lr=0")  # lr 0: the adapters never change
    cfg_alone = tiny_cfg("eval.lora_chunk=8", "eval.lora_lr=0", "eval.lora_context=false")
    m = tiny_model(cfg_ctx)
    toks = stream(200, docs=2)
    other = toks.copy()
    doc = np.flatnonzero(toks == 1)
    lo, hi = int(doc[0]), int(doc[1])
    other[lo + 3] = (other[lo + 3] + 1 - 4) % (V - 4) + 4  # a token in the first chunk of doc 1
    for cfg, changes_later in ((cfg_ctx, True), (cfg_alone, False)):
        a, b = run_eval(m, toks, cfg, "ttt-lora")["nll"], run_eval(m, other, cfg, "ttt-lora")["nll"]
        later = slice(lo + 8, hi - 1)  # the document's later chunks
        assert bool((a[later] - b[later]).abs().max() > 1e-6) == changes_later


def test_short_documents_are_scored_by_the_base_model():
    cfg = tiny_cfg("eval.lora_init=record", "eval.lora_min_doc=1000000", "eval.lora_chunk=8", "eval.seq_len=512")
    m = tiny_model(cfg)
    toks = stream()
    ttt = run_eval(m, toks, cfg, "ttt-lora")
    docs = run_eval(m, toks, cfg, "docs")
    close(ttt, docs)  # no adapter (the record init is not the identity) and no step
    adapted = run_eval(m, toks, tiny_cfg("eval.lora_init=record", "eval.lora_chunk=8", "eval.seq_len=512"), "ttt-lora")
    assert abs(adapted["val_loss"] - docs["val_loss"]) > 1e-6


@torch.no_grad()
def stored_lora_script_reference(model, toks, chunk: int, min_doc: int) -> dict:
    """swapp1990's TTT scoring loop written out as the stored script does it (lr 0: no step changes
    the model): documents from each BOS, those under 5 tokens left out, short ones in one forward,
    long ones in context-free chunks with one-target chunks skipped; the next BOS is no target."""
    t = torch.as_tensor(np.asarray(toks, dtype=np.int64))
    nbytes = tables().target_bytes(toks)
    bos = np.flatnonzero(toks == 1).tolist()
    total, n, nb = 0.0, 0, 0
    for d, ds in enumerate(bos):
        de = bos[d + 1] if d + 1 < len(bos) else len(toks)
        dl = de - ds
        if dl < 5:
            continue
        pieces = [(0, dl - 1)] if dl < min_doc else [(c, min(c + chunk, dl - 1)) for c in range(0, dl - 1, chunk)]
        for c0, c1 in pieces:
            if dl >= min_doc and c1 - c0 < 2:
                continue
            nll = model(t[None, ds + c0: ds + c1], t[None, ds + c0 + 1: ds + c1 + 1], reduction="none")
            total += float(nll.double().sum())
            n += c1 - c0
            nb += int(nbytes[ds + c0: ds + c1].sum())
    return {"val_loss": total / n, "tokens": n, "bytes": nb}


def test_stored_lora_script_scoring_matches_its_loop():
    # lr 0 and the identity init: every chunk is the base model on the chunk alone, as in the script
    cfg = tiny_cfg("eval.lora_lr=0", "eval.lora_context=false", "eval.lora_chunk=16", "eval.lora_min_doc=10",
                   "eval.lora_script_score=true")
    m = tiny_model(cfg)
    # tokens before the first BOS, a 3-token document, short ones, 34 and 50 tokens (a last chunk of
    # one target), and the stream's last document with no closing BOS
    toks = np.concatenate([[5, 6, 7], docs_stream([3, 7, 34, 40, 4, 9, 50], seed=3)])
    out = evaluate(m, toks, tables().target_bytes(toks), cfg, "cpu", "ttt-lora", with_record=True)
    got = script_scoring(out["record"], toks, tables().target_bytes(toks), cfg)
    ref = stored_lora_script_reference(m, toks, 16, 10)
    assert got["tokens"] == ref["tokens"] and got["bytes"] == ref["bytes"]
    assert abs(got["val_loss"] - ref["val_loss"]) < 2e-5
    assert got["val_bpb"] == pytest.approx(got["val_loss"] * got["tokens"] / math.log(2) / got["bytes"], rel=1e-12)
    assert out["tokens"] == len(toks) - 1 > got["tokens"]  # the score itself keeps every target


def test_kept_distributions_are_a_toolkit_diagnostic(monkeypatch):
    """Every toolkit evaluation keeps a few distributions (the audit reads them, the normalization
    warning checks them); the counted script (DETAIL off) keeps none and scores the same."""
    from pgolf.eval import methods
    from pgolf.eval.methods import KEEP
    cfg = tiny_cfg()
    m, toks = tiny_model(cfg), stream()
    nbytes = tables().target_bytes(toks)
    with_kept = evaluate(m, toks, nbytes, cfg, "cpu", "plain", with_record=True)
    rows = with_kept["record"].kept
    assert rows.shape == (KEEP, V) and torch.allclose(rows.double().exp().sum(1), torch.ones(KEEP, dtype=torch.float64))
    monkeypatch.setattr(methods, "DETAIL", False)
    without = evaluate(m, toks, nbytes, cfg, "cpu", "plain", with_record=True)
    assert without["record"].kept.shape == (0, V) and without["record"].kept_positions.numel() == 0
    assert without["val_bpb"] == with_kept["val_bpb"] and "warning_normalization" not in without

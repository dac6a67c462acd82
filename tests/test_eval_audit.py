"""The legality audit: passes for every real method, catches each planted violation."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import pgolf.model.embed as embed
from pgolf.eval.api import METHODS, eval_window
from pgolf.eval.audit import audit, audit_model, check_score_before_update, check_single_pass
from pgolf.eval.sliding import (ScoreLog, Scorer, Window, as_stream, evaluate_plan, score_plan, sliding_plan,
                                split_plan)
from pgolf.eval.ttt_sgd import make_sgd, train_range

from eval_util import V, base_cfg, tables, tiny_model


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(*extra: str):
    return base_cfg("eval.ttt_chunk_tokens=96", "eval.ttt_lr=0.05", "eval.doc_isolated=true",
                    "eval.phased_points=[0.4]", *extra)




def stream(n: int = 240, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    toks = rng.integers(4, V, n)
    toks[[0, 30, 75, 130, 190]] = 1
    return toks


def failed(report: dict) -> set[str]:
    return {k for k, c in report["checks"].items() if c["passed"] is False}


@pytest.mark.parametrize("method", METHODS)
def test_audit_passes_for_every_real_method(method):
    cfg = tiny_cfg()
    report = audit_model(tiny_model(cfg), stream(), tables(), cfg, method, points=2, probes=4)
    assert report["passed"], report
    checks = report["checks"]
    assert checks["causality"]["passed"] and checks["normalization"]["passed"]
    assert checks["doc_isolation"]["passed"] is True  # every method here runs doc-isolated
    if method.startswith("ttt") or method == "phased":
        assert checks["score_before_update"]["updates"] > 0


def test_audit_skips_doc_isolation_for_a_method_that_does_not_claim_it():
    cfg = tiny_cfg("eval.doc_isolated=false")
    report = audit_model(tiny_model(cfg), stream(), tables(), cfg, "sliding", points=1, probes=2)
    assert report["passed"] and report["checks"]["doc_isolation"]["passed"] is None


# -- planted violations -----------------------------------------------------------------------------

def _chunked(model, cfg, toks, log, body) -> dict:
    """A TTT skeleton over chunks of the sliding plan; `body(m, opt, scorer, c, plan, lo, hi)` runs a chunk."""
    stream_t = as_stream(toks, "cpu")
    scorer = Scorer(stream_t, tables(), log)
    n, chunk = len(toks) - 1, cfg.eval.ttt_chunk_tokens
    plans = split_plan(sliding_plan(n, eval_window(cfg), cfg.eval.stride), chunk, n)
    m = copy.deepcopy(model)
    opt = make_sgd(m, cfg.eval)
    for c, plan in enumerate(plans):
        body(m, opt, scorer, c, plan, c * chunk, min((c + 1) * chunk, n), stream_t)
    return scorer.result()


def test_audit_catches_ttt_that_trains_before_scoring():
    cfg = tiny_cfg("eval.ttt_lr=0.5")
    model = tiny_model(cfg)

    def body(m, opt, scorer, c, plan, lo, hi, st):
        train_range(m, opt, st, lo, hi, 32, cfg.eval, cfg.eval.ttt_lr, log=scorer.log)  # illegal order
        score_plan(m, scorer, plan, 4)

    report = audit(lambda t, log: _chunked(model, cfg, t, log, body), stream(), V, points=2, probes=2)
    assert not report["passed"]
    assert {"score_before_update", "causality"} <= failed(report)


def test_audit_catches_ttt_that_reports_only_its_last_epoch():
    cfg = tiny_cfg("eval.ttt_lr=0.5")
    model = tiny_model(cfg)

    def run(toks, log):
        final = Scorer(as_stream(toks, "cpu"), tables(), log)

        def body(m, opt, scorer, c, plan, lo, hi, st):
            score_plan(m, scorer, plan, 4)  # the legal first pass...
            train_range(m, opt, st, lo, hi, 32, cfg.eval, cfg.eval.ttt_lr, log=scorer.log)
            score_plan(m, final, plan, 4)  # ...but the re-score after training is what is reported

        _chunked(model, cfg, toks, log, body)
        return final.result()

    report = audit(run, stream(), V, points=2, probes=2)
    assert {"single_pass", "score_before_update"} <= failed(report)


@pytest.mark.parametrize("bug", ["double", "drop_tail"])
def test_audit_catches_a_sliding_eval_that_double_scores_or_drops_the_tail(bug):
    cfg = tiny_cfg()
    model, tb = tiny_model(cfg), tables()

    def buggy_plan(n):
        plan = sliding_plan(n, 32, 8)
        if bug == "double":  # every later window scores stride + 1 targets
            return [plan[0]] + [Window(w.start, w.length, w.score_from - 1) for w in plan[1:]]
        return plan[:-1]  # the classic early bug: the tail window is lost

    def run(toks, log):
        return evaluate_plan(model, toks, tb, buggy_plan(len(toks) - 1), 4, log=log)

    report = audit(run, stream(), V, points=1, probes=2, plan=buggy_plan(239))
    assert "single_pass" in failed(report)
    assert "targets" in report["checks"]["single_pass"]["details"]


def test_audit_catches_a_smeargate_leaking_across_bos(monkeypatch):
    cfg = tiny_cfg()
    model, tb = tiny_model(cfg), tables()

    def leaky_mask(idx, bos_id):  # forgets the BOS cut: the previous doc's last token leaks in
        keep = torch.ones_like(idx, dtype=torch.bool)
        keep[:, 0] = False
        return keep

    monkeypatch.setattr(embed, "previous_token_mask", leaky_mask)
    report = audit_model(model, stream(), tb, cfg, "sliding", points=1, probes=2)
    # still causal and normalized, but documents are no longer isolated
    assert failed(report) == {"doc_isolation"}


def test_audit_catches_a_cache_keyed_on_the_target():
    cfg = tiny_cfg()
    model, tb = tiny_model(cfg), tables()

    class CachedScorer(Scorer):
        def add(self, logits, pos, states=None):  # boosts whatever the true next token is
            boost = torch.nn.functional.one_hot(self.stream[pos + 1], logits.size(-1)).float() * 3.0
            return super().add(logits + boost, pos, states)

    def run(toks, log):
        scorer = CachedScorer(as_stream(toks, "cpu"), tb, log)
        score_plan(model, scorer, sliding_plan(len(toks) - 1, 32, 8), 4)
        return scorer.result()

    report = audit(run, stream(), V, points=2, probes=4)
    assert "normalization" in failed(report)
    assert "changes with the target" in report["checks"]["normalization"]["details"]


def test_audit_catches_an_unnormalized_score():
    cfg = tiny_cfg()
    model, tb = tiny_model(cfg), tables()

    def run(toks, log):  # reports NLLs half as large as the distribution it recorded implies
        scorer = Scorer(as_stream(toks, "cpu"), tb, log)
        score_plan(model, scorer, sliding_plan(len(toks) - 1, 32, 8), 4)
        out = scorer.result()
        out["nll"] = out["nll"] * 0.5
        out["val_loss"] *= 0.5
        return out

    report = audit(run, stream(), V, points=1, probes=4)
    assert "normalization" in failed(report)


def test_log_replay_rules_directly():
    log = ScoreLog()
    log.score(np.arange(0, 10))
    log.update(np.arange(0, 10))
    log.score(np.arange(10, 20))
    assert check_score_before_update(log, 20)["passed"]
    log.score(np.array([5]))  # re-scored after an update that used it
    assert not check_score_before_update(log, 20)["passed"]
    per_doc = ScoreLog()
    per_doc.score(np.arange(0, 4), "doc:0")
    per_doc.update(np.arange(0, 4), "doc:0")
    per_doc.score(np.arange(10, 14), "doc:10")  # another document's state never saw doc 0's update
    per_doc.score(np.arange(4, 8), "doc:0")
    assert check_score_before_update(per_doc, 20)["passed"]
    result = {"nll": torch.ones(20), "val_loss": 1.0, "tokens": 20}
    assert not check_single_pass(log, result, 20)["passed"]  # target 5 twice

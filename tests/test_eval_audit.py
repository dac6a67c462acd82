"""The black-box legality audit: every real method passes; every cheat of tests/audit_cheats.py, written
outside pgolf against the public harness, fails, through the API and through `pgolf audit`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pgolf.eval import methods
from pgolf.eval.audit import MIN_SUBSTREAM, audit
from pgolf.eval.context import Method
from pgolf.eval.methods import METHODS

from audit_cheats import CHEATS, LONG
from eval_util import V, base_cfg, run_eval, tables, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
N = 12_000  # longer than LONG (8,192), shorter than MIN_SUBSTREAM: the audited sub-stream is the whole stream


def cfg_for(*extra: str):
    return base_cfg("eval.ttt_chunk_tokens=2048", "eval.ttt_lr=0.05", "eval.phased_points=[0.4]",
                    "eval.lora_batch_docs=32", "eval.batch_seqs=128", "eval.ttt_batch_seqs=32", "eval.stride=16",
                    *extra)


def stream(n: int = N, seed: int = 0, doc_len: int = 160) -> np.ndarray:
    rng = np.random.default_rng(seed)
    toks = rng.integers(4, V, n)
    starts = np.unique(np.concatenate(([0], rng.integers(1, n - 2, n // doc_len))))
    toks[starts] = 1
    return toks


@pytest.fixture(scope="module")
def model():
    return tiny_model(cfg_for(), scale=0.3)  # peaked distributions, so cheating pays, as it would in earnest


def run_audit(model, method, cfg=None, **kw):
    cfg = cfg or cfg_for()
    toks = stream()
    return audit(model, toks, tables().target_bytes(toks), cfg, "cpu", method, **kw)


def failed(report: dict) -> set[str]:
    return {k for k, c in report["checks"].items() if c["passed"] is False}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_real_method_passes(model, name):
    report = run_audit(model, name)
    assert report["passed"], {k: c["details"] for k, c in report["checks"].items() if not c["passed"]}
    checks = report["checks"]
    assert checks["causality"]["checked"] >= 4 and checks["target_independence"]["checked"] >= 4
    assert checks["normalization"]["passed"] and checks["single_pass"]["passed"] and checks["finite"]["passed"]
    assert report["order"] == METHODS[name].order(cfg_for())


def test_lora_ttt_with_the_stored_scripts_settings_passes(model):
    cfg = cfg_for("eval.lora_init=record", "eval.lora_context=false", "eval.lora_min_doc=32")
    report = run_audit(model, "ttt-lora", cfg)
    assert report["passed"], {k: c["details"] for k, c in report["checks"].items() if not c["passed"]}


@pytest.mark.parametrize("sgd", ["pgolf", "record"])
def test_phased_longest_first_with_document_phases_passes(model, sgd):
    cfg = cfg_for("eval.phased_order=longest", "eval.phased_docs=[2, 5]", f"eval.phased_sgd={sgd}",
                  "eval.ttt_chunk_tokens=256")
    report = run_audit(model, "phased", cfg)
    assert report["passed"], {k: c["details"] for k, c in report["checks"].items() if not c["passed"]}
    assert report["order"] == "queue" and report["checks"]["causality"]["checked"] >= 4


def test_doc_isolated_plain_passes_the_isolation_probes(model):
    report = run_audit(model, "plain", cfg_for("eval.doc_isolated=true", "eval.seq_len=512"))
    assert report["passed"] and report["order"] == "documents"


EXPECTED = {
    "boost_true_logit": {"target_independence"},
    "clip_nll": {"normalization"},
    "unnormalized": {"normalization"},
    "nan_somewhere": {"finite"},
    "best_of_two_windows": {"target_independence"},
    "only_on_long_streams": {"target_independence"},
    "except_at_fixed_points": {"target_independence"},
    "peeks_at_next_token": {"causality"},
    "trains_then_scores": {"causality"},
    "scores_twice": {"single_pass"},
    "caches_two_documents_back": {"causality"},
}


@pytest.mark.parametrize("name", list(CHEATS))
def test_every_cheat_fails(model, name):
    for seed in (None, 7):  # a fresh seed, and a fixed one
        report = run_audit(model, CHEATS[name], seed=seed)
        assert not report["passed"], name
        assert EXPECTED[name] <= failed(report), (name, failed(report))


def test_a_cheat_looks_better_than_honest(model):
    """The cheats are worth catching: pgolf eval would report them lower than the honest method."""
    cfg, toks = cfg_for(), stream()
    honest = run_eval(model, toks, cfg, "sliding")["val_bpb"]
    for name in ("boost_true_logit", "best_of_two_windows", "only_on_long_streams", "trains_then_scores"):
        assert run_eval(model, toks, cfg, CHEATS[name])["val_bpb"] < honest - 0.01, name


def test_nothing_differs_between_eval_and_audit(model):
    """The method sees the same kind of harness in both: a recording method proves it."""
    seen = []

    def spy(ctx):
        seen.append((type(ctx.scorer).__name__, ctx.scorer._keep.numel() > 0, sorted(vars(ctx).keys())))
        return METHODS["sliding"].run(ctx)

    m = Method("spy", spy, METHODS["sliding"].order, "records what it receives")
    cfg, toks = cfg_for(), stream()
    run_eval(model, toks, cfg, m)
    n_eval = len(seen)
    audit(model, toks, tables().target_bytes(toks), cfg, "cpu", m)
    assert n_eval == 1 and len(seen) > 2 and all(s == seen[0] for s in seen)


def test_seed_replays_and_is_recorded(model):
    a = run_audit(model, "sliding", seed=12345)
    b = run_audit(model, "sliding", seed=12345)
    assert a["seed"] == b["seed"] == 12345 and a["substreams"] == b["substreams"]
    c = run_audit(model, "sliding")
    assert isinstance(c["seed"], int) and c["seed"] != 12345


def test_cost_is_bounded_by_the_budget(model):
    cfg = cfg_for()
    toks = stream(4 * MIN_SUBSTREAM)
    report = audit(model, toks, tables().target_bytes(toks), cfg, "cpu", "plain", budget=0.1)
    assert report["audit_tokens"] <= max(0.1 * len(toks), 5 * MIN_SUBSTREAM)
    assert len(report["substreams"]) == 1 and report["substreams"][0][1] - report["substreams"][0][0] == MIN_SUBSTREAM
    thorough = audit(model, toks, tables().target_bytes(toks), cfg, "cpu", "plain", thorough=True)
    assert thorough["substreams"] == [[0, len(toks)]]


def test_cli_audit_fails_a_cheat_and_eval_reports_its_score(model, tmp_path, monkeypatch, capsys, shared_dir):
    """Through the CLI: a cheat registered under a method name gets PASS nowhere, exit 1."""
    from pgolf.cli import main

    from train_util import tiny_config

    run = _packed_micro_run(tmp_path)
    capsys.readouterr()
    monkeypatch.setitem(METHODS, "sliding", Method("sliding", CHEATS["boost_true_logit"].run,
                                                   METHODS["sliding"].order, "a cheat in disguise"))
    assert main(["audit", str(run / "artifact.pgolf"), "--method", "sliding", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["passed"] and "target_independence" in failed(out)
    assert json.loads((run / "audit.json").read_text())["passed"] is False
    monkeypatch.undo()
    assert main(["audit", str(run / "artifact.pgolf"), "--method", "sliding", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"]


def _packed_micro_run(tmp_path):
    from pgolf.cli import main

    from train_util import make_real_data, tiny_overrides

    data = make_real_data(tmp_path, val_tokens=20_000)
    run = tmp_path / "run"
    args = ["run", "--recipe", "tiny", "--data", str(data), "--out", str(run), "--no-progress", "--json"]
    for o in tiny_overrides(**{"eval.max_tokens": 12_000, "train.max_steps": 4}):
        args += ["--set", o]
    assert main(args) == 0
    return run

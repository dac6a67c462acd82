"""Legality audit of an evaluation method (challenge.md "Legality conditions").

A method is audited as a black box `run(tokens, log) -> result` (result["nll"]: per-target NLLs,
target i = token i+1) that writes a `ScoreLog`. Checks:
- causality: with every token from target t on replaced, the scores of targets < t are unchanged;
- score_before_update: replaying the log, every update used only already scored targets, and every
  score came from a state never updated with that target or a later one;
- single_pass: each target scored exactly once (log, and plan when given); the reported totals are
  the sum of those scores;
- normalization: at probed targets the recorded distribution is a full softmax (logsumexp 0, probs
  sum to 1), the NLL is -log p(target), and the distribution does not change when the target does;
- doc_isolation (doc-isolated methods): perturbing one document never changes the next one's scores.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from pgolf.config import Config
from pgolf.data.tokenizer import BOS_ID, ByteTables
from pgolf.eval.docs import doc_spans, docs_plan
from pgolf.eval.sliding import MODEL_STATE, ScoreLog, Window, plan_coverage, plain_plan, sliding_plan, split_plan

RunFn = Callable[[np.ndarray, ScoreLog], dict]
NORM_TOL = 1e-4


def _nll(result: dict) -> np.ndarray:
    return result["nll"].double().numpy()


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b| treating NaN == NaN as equal and NaN vs number as infinitely different."""
    if a.size == 0:
        return 0.0
    both = np.isnan(a) & np.isnan(b)
    one = np.isnan(a) ^ np.isnan(b)
    if one.any():
        return float("inf")
    d = np.abs(np.where(both, 0.0, a - b))
    return float(np.nanmax(d)) if d.size else 0.0


def perturb_from(tokens: np.ndarray, t: int, vocab_size: int, rng: np.random.Generator) -> np.ndarray:
    """Tokens with every target >= t (tokens t+1 ...) replaced at random; token t+1 surely differs."""
    out = np.array(tokens, dtype=np.int64, copy=True)
    out[t + 1:] = rng.integers(0, vocab_size, len(out) - t - 1)
    out[t + 1] = (tokens[t + 1] + 1 + rng.integers(0, vocab_size - 1)) % vocab_size
    return out


def check_single_pass(log: ScoreLog, result: dict, n_targets: int, plan: list[Window] | None = None) -> dict:
    counts = np.zeros(n_targets, dtype=np.int64)
    for kind, pos, _ in log.events:
        if kind == "score":
            counts += np.bincount(pos, minlength=n_targets)[:n_targets]
    problems = []
    twice, never = np.flatnonzero(counts > 1), np.flatnonzero(counts == 0)
    if twice.size:
        problems.append(f"{twice.size} targets scored more than once (first: {int(twice[0])})")
    if never.size:
        problems.append(f"{never.size} targets never scored (first: {int(never[0])})")
    if plan is not None:
        cov = plan_coverage(plan, n_targets)
        if not (cov == 1).all():
            bad = np.flatnonzero(cov != 1)
            problems.append(f"plan covers {bad.size} targets other than once (first: {int(bad[0])}, "
                            f"count {int(cov[bad[0]])})")
    nll = _nll(result)
    if result.get("tokens") != n_targets:
        problems.append(f"reported tokens {result.get('tokens')} != {n_targets} targets")
    if not np.isfinite(nll).all():
        problems.append(f"{int((~np.isfinite(nll)).sum())} targets have no finite per-target score")
    else:
        total = float(nll.sum())
        reported = float(result["val_loss"]) * int(result.get("tokens") or 0)
        if abs(total - reported) > 1e-6 * max(1.0, abs(total)):
            problems.append(f"reported loss sum {reported:.6f} != sum of per-target scores {total:.6f}")
    return {"passed": not problems, "details": "; ".join(problems) or f"all {n_targets} targets scored once"}


def check_score_before_update(log: ScoreLog, n_targets: int) -> dict:
    scored = np.zeros(n_targets, dtype=bool)
    last_update: dict[str, int] = {}
    problems, n_updates = [], 0
    for kind, pos, state in log.events:
        if pos.size == 0:
            continue
        if kind == "update":
            n_updates += 1
            used = pos[(pos >= 0) & (pos < n_targets)]
            unscored = used[~scored[used]]
            if unscored.size and len(problems) < 5:
                problems.append(f"update of '{state}' used {unscored.size} targets not yet scored "
                                f"(first: {int(unscored[0])})")
            last_update[state] = max(last_update.get(state, -1), int(pos.max()))
        else:
            limit = last_update.get(MODEL_STATE, -1)
            if state != MODEL_STATE:
                limit = max(limit, last_update.get(state, -1))
            if int(pos.min()) <= limit and len(problems) < 5:
                problems.append(f"'{state}' scored target {int(pos.min())} after an update that used target {limit}")
            scored[pos] = True
    return {"passed": not problems, "updates": n_updates,
            "details": "; ".join(problems) or f"{n_updates} updates, each after its targets were scored"}


def check_normalization(log: ScoreLog, tokens: np.ndarray, nll: np.ndarray,
                        pairs: list[tuple[int, ScoreLog, np.ndarray, np.ndarray]], atol: float) -> dict:
    problems = []
    missing = [int(p) for p in log.probe if int(p) not in log.dists]
    if missing:
        problems.append(f"no distribution recorded at {len(missing)} probed targets (first: {missing[0]})")
    worst_lse = worst_nll = 0.0
    for p, lp in log.dists.items():
        lp = lp.double()
        worst_lse = max(worst_lse, abs(float(torch.logsumexp(lp, 0))), abs(float(lp.exp().sum()) - 1.0))
        worst_nll = max(worst_nll, abs(nll[p] + float(lp[int(tokens[p + 1])])))
    if worst_lse > NORM_TOL:
        problems.append(f"scored distribution not normalized (|logsumexp| or |sum p - 1| up to {worst_lse:.3g})")
    if worst_nll > NORM_TOL * max(1.0, float(np.nanmax(np.abs(nll))) if nll.size else 1.0):
        problems.append(f"reported NLL differs from -log p(target) by up to {worst_nll:.3g}")
    worst_dep = 0.0
    for t, plog, ptokens, pnll in pairs:
        if t not in log.dists or t not in plog.dists:
            continue
        worst_dep = max(worst_dep, float((log.dists[t].double() - plog.dists[t].double()).abs().max()))
        if abs(pnll[t] + float(plog.dists[t].double()[int(ptokens[t + 1])])) > NORM_TOL * max(1.0, abs(pnll[t])):
            problems.append(f"perturbed run: NLL at {t} is not -log p(target)")
    if worst_dep > atol:
        problems.append(f"distribution at a target changes with the target itself (by up to {worst_dep:.3g})")
    return {"passed": not problems, "probes": len(log.dists),
            "details": "; ".join(problems) or f"{len(log.dists)} probed distributions normalized and target-independent"}


def pick_points(n_targets: int, points: int) -> list[int]:
    """Evenly spread targets in [1, n_targets - 1] where the future is perturbed."""
    if n_targets < 2:
        return []
    return sorted({max(1, min(n_targets - 1, int(n_targets * (k + 1) / (points + 1)))) for k in range(points)})


def audit(run: RunFn, tokens: np.ndarray, vocab_size: int, *, points: int | list[int] = 3, probes: int = 8,
          seed: int = 0, plan: list[Window] | None = None, doc_limit: int | None = None,
          bos_id: int = BOS_ID, atol: float = 1e-4) -> dict:
    """Run every check on `run`; returns {"passed", "checks": {name: {"passed", "details", ...}}}.

    doc_limit: the method keeps documents independent for targets < doc_limit (None = it does not
    claim doc isolation, and that check is skipped).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    n_targets = len(tokens) - 1
    rng = np.random.default_rng(seed)
    ts = pick_points(n_targets, points) if isinstance(points, int) else sorted(points)
    probe = set(ts) | set(rng.integers(0, n_targets, min(probes, n_targets)).tolist())
    log = ScoreLog(probe=np.array(sorted(probe), dtype=np.int64))
    result = run(tokens, log)
    nll = _nll(result)
    checks: dict[str, dict] = {}

    causal, pairs = [], []
    for t in ts:
        ptokens = perturb_from(tokens, t, vocab_size, rng)
        plog = ScoreLog(probe=np.array([t], dtype=np.int64))
        pnll = _nll(run(ptokens, plog))
        causal.append((t, _max_diff(nll[:t], pnll[:t])))
        pairs.append((t, plog, ptokens, pnll))
    bad = [(t, d) for t, d in causal if d > atol]
    checks["causality"] = {
        "passed": not bad, "points": ts, "max_change": max((d for _, d in causal), default=0.0),
        "details": (f"scores before target {bad[0][0]} changed by {bad[0][1]:.3g} when later tokens changed"
                    if bad else f"scores before {len(ts)} perturbation points unchanged")}
    checks["score_before_update"] = check_score_before_update(log, n_targets)
    checks["single_pass"] = check_single_pass(log, result, n_targets, plan)
    checks["normalization"] = check_normalization(log, tokens, nll, pairs, atol)
    checks["doc_isolation"] = check_doc_isolation(run, tokens, nll, vocab_size, doc_limit, bos_id, rng, atol)
    passed = all(c["passed"] is not False for c in checks.values())
    return {"passed": passed, "checks": checks, "targets": n_targets}


def check_doc_isolation(run: RunFn, tokens: np.ndarray, nll: np.ndarray, vocab_size: int, doc_limit: int | None,
                        bos_id: int, rng: np.random.Generator, atol: float, pairs: int = 2) -> dict:
    if doc_limit is None:
        return {"passed": None, "details": "skipped: the method does not claim document isolation"}
    spans = doc_spans(tokens, bos_id)
    cand = [k for k in range(1, len(spans)) if spans[k][1] <= doc_limit and spans[k - 1][1] - spans[k - 1][0] >= 2]
    if not cand:
        return {"passed": None, "details": f"skipped: no two documents within the first {doc_limit} targets"}
    chosen = sorted({cand[0], cand[len(cand) // 2]})[:pairs]
    worst, where = 0.0, -1
    ids = np.array([i for i in range(vocab_size) if i != bos_id])
    for k in chosen:
        (plo, phi), (lo, hi) = spans[k - 1], spans[k]
        ptokens = np.array(tokens, copy=True)
        ptokens[plo + 1: phi] = rng.choice(ids, phi - plo - 1)
        d = _max_diff(nll[lo:hi], _nll(run(ptokens, ScoreLog()))[lo:hi])
        if d > worst:
            worst, where = d, k
    ok = worst <= atol
    return {"passed": ok, "docs_checked": len(chosen), "max_change": worst,
            "details": (f"document {where}'s scores changed by {worst:.3g} when the previous document changed"
                        if not ok else f"{len(chosen)} documents unaffected by their predecessors")}


# ---------------------------------------------------------------------------------------------
# auditing the real methods

def method_plan(method: str, tokens: np.ndarray, cfg: Config) -> list[Window] | None:
    """The scoring plan of a plan-based method (None for the per-document TTT methods)."""
    from pgolf.eval.api import eval_window

    n, w, e = len(tokens) - 1, eval_window(cfg), cfg.eval
    if method == "plain":
        return plain_plan(n, w)
    if method == "sliding":
        return sliding_plan(n, w, e.stride)
    if method == "docs":
        return docs_plan(doc_spans(tokens, cfg.model.bos_id), w, e.stride)
    if method == "ttt-sgd":
        return [x for c in split_plan(sliding_plan(n, w, min(e.stride, w)), e.ttt_chunk_tokens, n) for x in c]
    return None


def method_doc_limit(method: str, tokens: np.ndarray, cfg: Config) -> int | None:
    """Targets below which a method keeps documents independent (None: not doc-isolated)."""
    n = len(tokens) - 1
    if method in ("docs", "ttt-lora"):
        return n
    if method in ("plain", "sliding"):
        return n if cfg.eval.doc_isolated else None
    if method == "ttt-sgd":
        return min(cfg.eval.ttt_chunk_tokens, n) if cfg.eval.doc_isolated else None
    if method == "phased":
        from pgolf.eval.phased import phase_bounds

        spans = doc_spans(tokens, cfg.model.bos_id)
        phases = phase_bounds(spans, cfg.eval.phased_points)
        return spans[phases[0][1] - 1][1] if phases else None
    return None


def audit_model(model: torch.nn.Module, tokens: np.ndarray, tables: ByteTables, cfg: Config, method: str,
                device: torch.device | str = "cpu", points: int = 3, probes: int = 8, seed: int = 0,
                atol: float = 1e-4) -> dict:
    """Audit one of pgolf's methods on `model` over `tokens` (cut to cfg.eval.max_tokens)."""
    from pgolf.eval.api import check_eval_config, evaluate

    check_eval_config(cfg, method)
    if cfg.eval.max_tokens:
        tokens = tokens[: cfg.eval.max_tokens]
    tokens = np.asarray(tokens, dtype=np.int64)

    def run(toks: np.ndarray, log: ScoreLog) -> dict:
        return evaluate(model, toks, tables, cfg, device=device, method=method, log=log)

    report = audit(run, tokens, cfg.model.vocab_size, points=points, probes=probes, seed=seed,
                   plan=method_plan(method, tokens, cfg), doc_limit=method_doc_limit(method, tokens, cfg),
                   bos_id=cfg.model.bos_id, atol=atol)
    report["method"] = method
    return report

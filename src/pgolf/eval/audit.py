"""A black-box legality audit (challenge.md "Legality conditions").

The audit runs a method's real evaluation path, `methods.evaluate` with the same arguments as
`pgolf eval`, and reads what the harness-owned Scorer recorded; the method receives nothing that
differs between an audited and a real run, and is never told where the audit will look.

- finite: every reported NLL and every kept distribution is finite (NaN or inf fails);
- single_pass: on the full run, every target scored exactly once;
- normalization: at random positions of every run, the distribution that produced the NLL sums to
  1 and the NLL equals -log p(target);
- causality: on random sub-streams (or the whole stream with `thorough`), the method is run again
  with the future replaced, and nothing it was not allowed to see may change. What that means follows
  the method's declared order: "stream" (tokens after t replaced: every target < t unchanged),
  "documents" (one document's tail and the three documents before it replaced, lengths kept: every
  other target unchanged, so documents are isolated several documents back) or "queue" (a document's
  tail replaced: every target of documents scored earlier in the method's queue unchanged);
- target_independence: at each perturbation point the distribution is unchanged although the target
  token itself changed (catches logits that look at the answer, clipped or best-of scores).

Perturbation points and sub-streams come from a fresh random seed per audit (recorded, so a failure
can be replayed with `seed`). Cost: the real run is the evaluation itself; the perturbation runs
process at most `budget` (default 10%) of the evaluated tokens, but at least one sub-stream of
min(N, MIN_SUBSTREAM) tokens with its perturbed copies. A method that misbehaves only on streams
longer than the audited sub-streams needs `thorough` (full-length runs). The audit assumes methods
do not introspect the harness (private attributes, stack frames).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch

from pgolf.config import Config
from pgolf.eval.context import Method
from pgolf.eval.methods import check as check_method
from pgolf.eval.methods import evaluate
from pgolf.eval.plans import doc_spans

MIN_SUBSTREAM = 16_384
PERTURBATIONS = 4  # perturbed copies per sub-stream
NORM_PROBES = 16  # random kept positions per run for the normalization check
DOCS_BACK = 3  # documents before the probed one that an isolation probe replaces


@dataclass
class _Run:
    nll: np.ndarray
    counts: np.ndarray
    kept: dict[int, np.ndarray]  # target -> log-probs
    result: dict


def _run(model, tokens, nbytes, cfg, device, method: Method, keep) -> _Run:
    out = evaluate(model, tokens, nbytes, cfg, device, method, keep=keep, with_record=True)
    rec = out.pop("record")
    kept = {int(p): rec.kept[i].double().numpy() for i, p in enumerate(rec.kept_positions.tolist())}
    return _Run(rec.nll.double().numpy(), rec.counts.numpy(), kept, out)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b|; NaN on either side counts as infinitely different."""
    if a.size == 0:
        return 0.0
    d = np.abs(a - b)
    return float("inf") if np.isnan(d).any() else float(d.max())


class _Checks:
    def __init__(self) -> None:
        self.problems: dict[str, list[str]] = {}
        self.counts: dict[str, int] = {}

    def note(self, name: str, ok: bool, problem: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        self.problems.setdefault(name, [])
        if not ok and len(self.problems[name]) < 5:
            self.problems[name].append(problem)

    def report(self, details: dict[str, str]) -> dict:
        out = {}
        for name, probs in self.problems.items():
            out[name] = {"passed": not probs, "checked": self.counts[name],
                         "details": "; ".join(probs) if probs else details.get(name, "ok")}
        return out


def _check_distributions(run: _Run, tokens: np.ndarray, checks: _Checks, where: str, atol: float) -> None:
    for p, lp in run.kept.items():
        if np.isnan(lp).all():
            checks.note("normalization", False, f"{where}: target {p} has no recorded distribution (never scored)")
            continue
        finite = bool(np.isfinite(lp).all())
        checks.note("finite", finite, f"{where}: distribution at target {p} has NaN or inf")
        if not finite:
            continue
        total = float(np.exp(lp).sum())
        checks.note("normalization", abs(total - 1.0) <= atol,
                    f"{where}: probabilities at target {p} sum to {total:.6g}, not 1")
        claimed, actual = run.nll[p], -lp[int(tokens[p + 1])]
        checks.note("normalization", bool(abs(claimed - actual) <= atol * max(1.0, abs(actual))),
                    f"{where}: NLL at target {p} is {claimed:.6g} but -log p(target) is {actual:.6g}")


def _perturb(tokens: np.ndarray, lo: int, hi: int, vocab: int, rng: np.random.Generator,
             avoid: int | None = None) -> np.ndarray:
    """Tokens lo..hi-1 replaced at random, token lo surely changed; with `avoid` (the BOS id) no
    replacement is that token, so a document's tail changes without moving any document boundary."""
    out = np.array(tokens, dtype=np.int64, copy=True)
    if hi <= lo:
        return out
    ids = np.arange(vocab) if avoid is None else np.delete(np.arange(vocab), avoid)
    new = rng.choice(ids, hi - lo)
    first = ids[ids != tokens[lo]]
    new[0] = rng.choice(first)
    out[lo:hi] = new
    return out


def _substreams(tokens: np.ndarray, length: int, count: int, rng: np.random.Generator, bos: int) -> list[tuple[int, int]]:
    """`count` ranges [a, b) of about `length` tokens at random places, starting at a BOS when possible."""
    n = len(tokens)
    if length >= n:
        return [(0, n)]
    starts = np.flatnonzero(tokens[: n - length] == bos)
    out = []
    for _ in range(count):
        a = int(rng.choice(starts)) if starts.size else int(rng.integers(0, n - length))
        out.append((a, a + length))
    return out


def _probe_stream(sub: np.ndarray, rng: np.random.Generator, vocab: int, **_):
    """Everything after target t replaced (token t+1 chosen later; the length stays, it is public):
    targets < t must not move."""
    n_targets = len(sub) - 1
    t = int(rng.integers(1, max(n_targets - 1, 2)))
    pert = _perturb(sub, t + 1, len(sub), vocab, rng)
    must_keep = np.zeros(n_targets, dtype=bool)
    must_keep[:t] = True
    return pert, t, must_keep


def _eligible_docs(spans: list[tuple[int, int]], first: int = 0) -> list[int]:
    return [k for k in range(first, len(spans)) if spans[k][1] - spans[k][0] >= 3]


def _probe_documents(sub: np.ndarray, rng: np.random.Generator, vocab: int, bos: int, **_):
    """One document's tail and the DOCS_BACK documents before it replaced (no boundary moves): every
    other target must not move."""
    spans = doc_spans(sub, bos)
    cand = _eligible_docs(spans, first=min(DOCS_BACK, max(len(spans) - 1, 0)))
    if not cand:
        return None
    k = int(rng.choice(cand))
    lo, hi = spans[k]
    j = int(rng.integers(lo + 1, hi - 1))  # target j: its token j+1 changes, targets lo..j-1 must not
    pert = _perturb(sub, j + 1, hi, vocab, rng, avoid=bos)
    changed = np.zeros(len(sub) - 1, dtype=bool)
    changed[j:hi] = True
    for back in range(max(0, k - DOCS_BACK), k):
        blo, bhi = spans[back]
        pert = _perturb(pert, blo + 1, bhi, vocab, rng, avoid=bos) if bhi - blo >= 2 else pert
        changed[blo:bhi] = True
    return pert, j, ~changed


def _probe_queue(sub: np.ndarray, rng: np.random.Generator, vocab: int, bos: int, queue, cfg, **_):
    """A document's tail replaced (no boundary moves): documents scored earlier in the method's queue,
    and the document's own earlier targets, must not move."""
    spans = doc_spans(sub, bos)
    order = list(queue(spans, cfg))
    cand = _eligible_docs(spans)
    if not cand:
        return None
    k = int(rng.choice(cand))
    lo, hi = spans[k]
    j = int(rng.integers(lo + 1, hi - 1))
    pert = _perturb(sub, j + 1, hi, vocab, rng, avoid=bos)
    must_keep = np.zeros(len(sub) - 1, dtype=bool)
    must_keep[lo:j] = True
    for d in order[: order.index(k)]:
        must_keep[spans[d][0]:spans[d][1]] = True
    return pert, j, must_keep


def _adversarial_target(pert: np.ndarray, t: int, lp: np.ndarray | None, original: int, bos: int | None
                        ) -> np.ndarray:
    """Token t+1 becomes the least likely token under the unperturbed distribution at t (not the
    original one, not BOS where boundaries must stay): a distribution that depends on its own target
    (a boosted answer, a best-of choice) then almost surely shows it."""
    out = pert.copy()
    if lp is None or not np.isfinite(lp).all():
        return out
    for v in np.argsort(lp, kind="stable"):
        if v != original and (bos is None or v != bos):
            out[t + 1] = int(v)
            break
    return out


PROBES = {"stream": _probe_stream, "documents": _probe_documents, "queue": _probe_queue}


def audit(model: torch.nn.Module, tokens: np.ndarray, nbytes: np.ndarray, cfg: Config,
          device: torch.device | str = "cpu", method: str | Method | None = None, *, seed: int | None = None,
          budget: float = 0.1, thorough: bool = False, atol: float = 1e-4, real: dict | None = None) -> dict:
    """Audit `method` (default cfg.eval.method) on `tokens`; returns the report (see the module doc).

    `real`: the result of the evaluation being audited, made with `evaluate(..., keep=...,
    with_record=True)` (then it is not run again); `nbytes`: the bytes of every target."""
    m = method if isinstance(method, Method) else check_method(cfg, method)
    tokens = np.asarray(tokens, dtype=np.int64)
    nbytes = np.asarray(nbytes)
    seed = secrets.randbits(32) if seed is None else int(seed)
    rng = np.random.default_rng(seed)
    n_targets = len(tokens) - 1
    vocab, bos = cfg.model.vocab_size, cfg.model.bos_id
    order = m.order(cfg)
    checks = _Checks()

    # 1. the real run: what `pgolf eval` reports
    if real is None:
        keep = rng.choice(n_targets, size=min(NORM_PROBES, n_targets), replace=False)
        real = evaluate(model, tokens, nbytes, cfg, device, m, keep=keep, with_record=True)
    rec = real["record"]
    full = _Run(rec.nll.double().numpy(), rec.counts.numpy(),
                {int(p): rec.kept[i].double().numpy() for i, p in enumerate(rec.kept_positions.tolist())}, real)
    bad = ~np.isfinite(full.nll)
    checks.note("finite", not bad.any(), f"{int(bad.sum()):,} targets have a NaN/inf or no score (first: "
                                         f"{int(np.flatnonzero(bad)[0]) if bad.any() else -1})")
    twice, never = np.flatnonzero(full.counts > 1), np.flatnonzero(full.counts == 0)
    checks.note("single_pass", not twice.size and not never.size,
                f"{twice.size:,} targets scored more than once, {never.size:,} never (first: "
                f"{int(twice[0]) if twice.size else int(never[0]) if never.size else -1})")
    reported = float(real["val_loss"]) * int(real["tokens"])
    total = float(np.nansum(full.nll))
    checks.note("single_pass", int(real["tokens"]) == n_targets and abs(total - reported) <= 1e-6 * max(1.0, total),
                f"reported {real['tokens']:,} targets / loss sum {reported:.6f}, the record has {n_targets:,} / {total:.6f}")
    _check_distributions(full, tokens, checks, "full run", atol)

    # 2. perturbation runs on sub-streams
    length = len(tokens) if thorough else min(len(tokens), MIN_SUBSTREAM)
    count = 1 if thorough else max(1, int(budget * len(tokens) // ((1 + PERTURBATIONS) * length)))
    subs = _substreams(tokens, length, count, rng, bos)
    keep_bos = bos if order != "stream" else None
    cost = 0
    for a, b in subs:
        sub, sub_bytes = tokens[a:b], nbytes[a:b - 1]
        if len(sub) < 8:
            continue
        probes = [p for p in (PROBES[order](sub, rng, vocab, bos=bos, queue=m.queue, cfg=cfg)
                              for _ in range(PERTURBATIONS)) if p is not None]
        if not probes:
            continue
        n_sub = len(sub) - 1
        norm = rng.choice(n_sub, size=min(NORM_PROBES, n_sub), replace=False).tolist()
        base = _run(model, sub, sub_bytes, cfg, device, m, norm + [t for _, t, _ in probes])
        _check_distributions(base, sub, checks, f"sub-stream [{a}, {b})", atol)
        cost += len(sub)
        for pert, t, must_keep in probes:
            pert = _adversarial_target(pert, t, base.kept.get(t), int(sub[t + 1]), keep_bos)
            other = _run(model, pert, sub_bytes, cfg, device, m, [t])
            cost += len(pert)
            where = f"sub-stream [{a}, {b}) perturbed at target {t}"
            _check_distributions(other, pert, checks, where, atol)
            mine = base.nll[must_keep]
            d = _max_diff(mine, other.nll[must_keep])
            moved = np.flatnonzero(~np.isclose(mine, other.nll[must_keep], rtol=0, atol=atol))
            first = int(np.flatnonzero(must_keep)[moved[0]]) + a if moved.size else -1
            checks.note("causality", d <= atol,
                        f"{where}: a score it may not depend on changed by {d:.3g} (stream target {first})")
            lp0, lp1 = base.kept.get(t), other.kept.get(t)
            dd = float("inf") if lp0 is None or lp1 is None else _max_diff(lp0, lp1)
            checks.note("target_independence", dd <= atol,
                        f"{where}: the distribution at the perturbed target changed by {dd:.3g} with the target token")
    details = {
        "finite": f"all {n_targets:,} scores and every kept distribution finite",
        "single_pass": f"all {n_targets:,} targets scored exactly once",
        "normalization": "kept distributions sum to 1 and give the reported NLL",
        "causality": f"no score moved when the future changed ({order} order)",
        "target_independence": "distributions at perturbation points ignore the target token",
    }
    report = checks.report(details)
    for key in details:
        report.setdefault(key, {"passed": None, "checked": 0, "details": "skipped: nothing to probe (stream too short)"})
    return {"method": m.name, "passed": all(c["passed"] is not False for c in report.values()), "checks": report,
            "seed": seed, "order": order, "targets": n_targets, "substreams": [list(s) for s in subs],
            "audit_tokens": cost, "budget": budget, "thorough": thorough, "atol": atol}

"""Statistics over seeds: mean/std tables, nats <-> bpb, and the record significance tests.

The challenge asks a new record to beat the previous one by >= 0.005 nats/token with p < 0.01.
Scores are reported in bits per byte, so the threshold is converted with the runs' own
tokens/bytes ratio: bpb = nats_per_token / ln 2 * tokens / bytes.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

from scipy import stats as st

from pgolf.errors import InputError

RECORD_THRESHOLD_NATS = 0.005  # nats/token a record must gain over the previous one
SIGNIFICANCE_LEVEL = 0.01


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    xs = [float(v) for v in values]
    if not xs:
        raise InputError("statistics: no values (expected at least one run)")
    m = math.fsum(xs) / len(xs)
    if len(xs) == 1:
        return m, 0.0
    var = math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var)


def nats_to_bpb(nats_per_token: float, tokens: float, nbytes: float) -> float:
    """Bits per byte for a per-token loss in nats, given the scored tokens and their bytes."""
    if tokens <= 0 or nbytes <= 0:
        raise InputError(f"nats_to_bpb: tokens and bytes must be > 0, got {tokens} and {nbytes}")
    return nats_per_token / math.log(2) * tokens / nbytes


def bpb_to_nats(bpb: float, tokens: float, nbytes: float) -> float:
    """Inverse of `nats_to_bpb`."""
    if tokens <= 0 or nbytes <= 0:
        raise InputError(f"bpb_to_nats: tokens and bytes must be > 0, got {tokens} and {nbytes}")
    return bpb * math.log(2) * nbytes / tokens


def tokens_per_byte(summary: dict, where: str = "summary") -> float:
    """Scored tokens per byte of one run.

    Uses the eval's token and byte counts when the summary has them; otherwise recovers the
    ratio exactly from val_bpb and val_loss (val_bpb = val_loss / ln 2 * tokens / bytes).
    """
    for tk, bk in (("eval_tokens", "eval_bytes"), ("tokens", "bytes"), ("val_tokens", "val_bytes")):
        t, b = summary.get(tk), summary.get(bk)
        if isinstance(t, (int, float)) and isinstance(b, (int, float)) and t > 0 and b > 0:
            return float(t) / float(b)
    loss, bpb = summary.get("val_loss"), summary.get("val_bpb")
    if isinstance(loss, (int, float)) and isinstance(bpb, (int, float)) and loss > 0:
        return float(bpb) * math.log(2) / float(loss)
    raise InputError(f"{where}: needs eval tokens/bytes or val_loss and val_bpb to relate nats to bpb")


def mean_tokens_per_byte(summaries: Iterable[dict]) -> float:
    ratios = [tokens_per_byte(s, f"run {i}") for i, s in enumerate(summaries)]
    if not ratios:
        raise InputError("statistics: no runs given")
    return math.fsum(ratios) / len(ratios)


def threshold_bpb(tpb: float, threshold_nats: float = RECORD_THRESHOLD_NATS) -> float:
    """The record threshold in bpb for runs with `tpb` tokens per byte."""
    return nats_to_bpb(threshold_nats, tpb, 1.0)


def _check_runs(values: Sequence[float], what: str, minimum: int = 2) -> list[float]:
    xs = [float(v) for v in values]
    if len(xs) < minimum:
        raise InputError(f"{what}: a t-test needs at least {minimum} runs, got {len(xs)}")
    if any(not math.isfinite(x) for x in xs):
        raise InputError(f"{what}: val_bpb values must be finite, got {xs}")
    return xs


def one_sample_test(bpbs: Sequence[float], reference_bpb: float, tpb: float,
                    threshold_nats: float = RECORD_THRESHOLD_NATS, alpha: float = SIGNIFICANCE_LEVEL) -> dict:
    """One-sided one-sample t-test, H1: mean(bpbs) < reference_bpb - threshold (in bpb)."""
    xs = _check_runs(bpbs, "one-sample test")
    thr = threshold_bpb(tpb, threshold_nats)
    target = float(reference_bpb) - thr
    res = st.ttest_1samp(xs, target, alternative="less")
    t, p = float(res.statistic), float(res.pvalue)
    mean, std = mean_std(xs)
    return {"test": "one-sample t (one-sided, H1: mean < reference - threshold)",
            "n": len(xs), "mean": mean, "std": std, "reference_bpb": float(reference_bpb),
            "threshold_nats": threshold_nats, "threshold_bpb": thr, "target_bpb": target,
            "t_statistic": t, "p_value": p, "significant": bool(math.isfinite(p) and p < alpha)}


def welch_test(ours: Sequence[float], theirs: Sequence[float], tpb: float | None = None,
               threshold_nats: float = RECORD_THRESHOLD_NATS, alpha: float = SIGNIFICANCE_LEVEL) -> dict:
    """Welch's t-test (unequal variances), one-sided, H1: mean(ours) < mean(theirs).

    With `tpb` the record threshold is also reported (and `beats_threshold` says whether the
    mean gain reaches it); the p value itself is the plain Welch test of the two samples.
    """
    a = _check_runs(ours, "Welch test (ours)")
    b = _check_runs(theirs, "Welch test (reference runs)")
    res = st.ttest_ind(a, b, equal_var=False, alternative="less")
    t, p = float(res.statistic), float(res.pvalue)
    ma, sa = mean_std(a)
    mb, sb = mean_std(b)
    out = {"test": "Welch t (one-sided, H1: ours lower)", "n": len(a), "n_reference": len(b),
           "mean": ma, "std": sa, "reference_mean": mb, "reference_std": sb, "delta_bpb": ma - mb,
           "t_statistic": t, "p_value": p, "significant": bool(math.isfinite(p) and p < alpha)}
    if tpb is not None:
        thr = threshold_bpb(tpb, threshold_nats)
        out.update(threshold_nats=threshold_nats, threshold_bpb=thr, beats_threshold=bool(mb - ma >= thr))
    return out


SEED_COLUMNS = ("seed", "val_loss", "val_bpb", "val_bpb_prequant", "artifact_bytes", "steps",
                "train_seconds", "eval_seconds")


def seed_table(summaries: Sequence[dict]) -> dict:
    """Per-seed rows plus mean/std of val_loss and val_bpb over the runs."""
    rows = [{k: s.get(k) for k in SEED_COLUMNS} for s in summaries]
    out: dict = {"rows": rows, "n": len(rows)}
    for key in ("val_loss", "val_bpb", "val_bpb_prequant"):
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if vals:
            m, s = mean_std(vals)
            out[f"{key}_mean"], out[f"{key}_std"] = m, s
    return out

"""pgolf.submit.stats against scipy and against hand computations."""
import math
import statistics

import pytest
from scipy import stats as st

from pgolf.errors import InputError
from pgolf.submit import stats

OURS = [1.0810, 1.0795, 1.0822]
THEIRS = [1.0861, 1.0849, 1.0877, 1.0858]


def test_mean_std_sample():
    m, s = stats.mean_std(OURS)
    assert m == pytest.approx(statistics.mean(OURS), abs=1e-15)
    assert s == pytest.approx(statistics.stdev(OURS), abs=1e-15)  # ddof=1
    assert stats.mean_std([2.5]) == (2.5, 0.0)
    with pytest.raises(InputError):
        stats.mean_std([])


def test_one_sample_matches_scipy_and_hand():
    tpb = 0.41
    ref = 1.0900
    r = stats.one_sample_test(OURS, ref, tpb)
    thr = 0.005 / math.log(2) * tpb
    assert r["threshold_bpb"] == pytest.approx(thr, rel=1e-12)
    target = ref - thr
    exp = st.ttest_1samp(OURS, target, alternative="less")
    assert r["t_statistic"] == pytest.approx(exp.statistic, rel=1e-12)
    assert r["p_value"] == pytest.approx(exp.pvalue, rel=1e-12)
    # hand: t = (mean - mu0) / (s / sqrt(n))
    n = len(OURS)
    t_hand = (statistics.mean(OURS) - target) / (statistics.stdev(OURS) / math.sqrt(n))
    assert r["t_statistic"] == pytest.approx(t_hand, rel=1e-12)
    assert r["t_statistic"] < 0
    assert r["significant"] == (exp.pvalue < 0.01)


def test_one_sample_p_value_by_hand_two_runs():
    # n = 2 -> df = 1, Student t is Cauchy: P(T < t) = 1/2 + atan(t)/pi
    xs, target_ref = [1.00, 1.02], 1.05
    r = stats.one_sample_test(xs, target_ref, tpb=1.0, threshold_nats=0.0)
    t = (1.01 - 1.05) / (statistics.stdev(xs) / math.sqrt(2))
    assert r["t_statistic"] == pytest.approx(t, rel=1e-12)
    assert r["p_value"] == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-10)


def test_welch_matches_scipy_and_hand():
    r = stats.welch_test(OURS, THEIRS, tpb=0.41)
    exp = st.ttest_ind(OURS, THEIRS, equal_var=False, alternative="less")
    assert r["t_statistic"] == pytest.approx(exp.statistic, rel=1e-12)
    assert r["p_value"] == pytest.approx(exp.pvalue, rel=1e-12)
    va, vb = statistics.variance(OURS) / 3, statistics.variance(THEIRS) / 4
    t_hand = (statistics.mean(OURS) - statistics.mean(THEIRS)) / math.sqrt(va + vb)
    assert r["t_statistic"] == pytest.approx(t_hand, rel=1e-12)
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)  # Welch-Satterthwaite
    assert r["p_value"] == pytest.approx(st.t.cdf(t_hand, df), rel=1e-10)
    assert r["delta_bpb"] == pytest.approx(statistics.mean(OURS) - statistics.mean(THEIRS))
    assert r["beats_threshold"] == (statistics.mean(THEIRS) - statistics.mean(OURS) >= r["threshold_bpb"])
    # reversed roles: ours is not lower, p must be large
    assert stats.welch_test(THEIRS, OURS)["p_value"] > 0.5


def test_tests_need_two_runs():
    with pytest.raises(InputError, match="at least 2"):
        stats.one_sample_test([1.0], 1.1, 0.4)
    with pytest.raises(InputError, match="at least 2"):
        stats.welch_test([1.0, 1.1], [1.2], 0.4)


def test_nats_bpb_conversion():
    assert stats.nats_to_bpb(1.0, tokens=100, nbytes=250) == pytest.approx(0.4 / math.log(2), rel=1e-15)
    for nats in (0.0, 0.005, 2.7):
        b = stats.nats_to_bpb(nats, 37, 151)
        assert stats.bpb_to_nats(b, 37, 151) == pytest.approx(nats, abs=1e-15)
    with pytest.raises(InputError):
        stats.nats_to_bpb(1.0, 0, 10)


def test_threshold_matches_challenge_figures():
    # challenge.md: 0.005 nats ~ 0.00296 bpb at sp1024 and ~ 0.00194 bpb at sp8192 (~151.08M val bytes)
    val_bytes = 151.08e6
    assert stats.threshold_bpb(62_021_632 / val_bytes) == pytest.approx(0.00296, abs=5e-6)
    assert stats.threshold_bpb(40_540_160 / val_bytes) == pytest.approx(0.00194, abs=5e-6)


def test_tokens_per_byte_sources_agree():
    tokens, nbytes, nll = 1000, 2437, 2.91
    bpb = stats.nats_to_bpb(nll, tokens, nbytes)
    with_counts = {"eval_tokens": tokens, "eval_bytes": nbytes, "val_loss": 9.9, "val_bpb": 9.9}
    assert stats.tokens_per_byte(with_counts) == tokens / nbytes  # counts win over the ratio
    assert stats.tokens_per_byte({"tokens": tokens, "bytes": nbytes}) == tokens / nbytes
    # without counts the ratio comes back exactly from loss and bpb
    assert stats.tokens_per_byte({"val_loss": nll, "val_bpb": bpb}) == pytest.approx(tokens / nbytes, rel=1e-12)
    with pytest.raises(InputError):
        stats.tokens_per_byte({"val_bpb": 1.0}, "RUN/summary.json")


def test_seed_table():
    sums = [{"seed": s, "val_bpb": b, "val_loss": b * 2.0, "steps": 10} for s, b in zip((1, 2, 3), OURS)]
    t = stats.seed_table(sums)
    assert [r["seed"] for r in t["rows"]] == [1, 2, 3]
    assert t["val_bpb_mean"] == pytest.approx(statistics.mean(OURS))
    assert t["val_bpb_std"] == pytest.approx(statistics.stdev(OURS))
    assert t["val_loss_mean"] == pytest.approx(2 * statistics.mean(OURS))
    assert "val_bpb_prequant_mean" not in t

"""`pgolf submit`: the record folder and submission.json against the runs it was built from."""
import functools
import json
import statistics

import pytest
from scipy import stats as st

from pgolf.cli import main as cli_main
from pgolf.config import load_config
from pgolf.errors import InputError, WorkError
from pgolf.submit import bundle, record

BPBS = {1: 1.2210, 2: 1.2195, 3: 1.2231}


def make_run(d, seed, bpb, overrides=(), model_bytes=None, train_s=590.0, audit=True):
    d.mkdir(parents=True, exist_ok=True)
    cfg = load_config("tiny", [f"train.seed={seed}", f"data.path=/data/{seed}", *overrides])
    (d / "config.json").write_text(cfg.to_json())
    mb = model_bytes if model_bytes is not None else 15_000_000 + 1000 * seed
    s = {"recipe": "tiny", "seed": seed, "val_bpb": bpb, "val_loss": bpb * 1.68, "val_bpb_prequant": bpb - 0.008,
         "steps": 5000 + seed, "train_seconds": train_s, "eval_seconds": 300.0 + seed, "model_bytes": mb,
         "code_bytes": 30_000, "artifact_bytes": mb + 30_000, "eval_tokens": 1_000_000, "eval_bytes": 2_436_000,
         "eval_method": "sliding", "eval_subset": "full validation split", "torch_version": "2.9.1"}
    (d / "summary.json").write_text(json.dumps(s))
    (d / "train.log").write_text(f"step 1 loss 7.0 seed {seed}\n")
    (d / "env.json").write_text(json.dumps({"device_name": "NVIDIA H100 80GB HBM3", "world_size": 8}))
    if audit is not None:
        (d / "audit.json").write_text(json.dumps({"passed": audit}))
    return d


@pytest.fixture
def small_bundle(monkeypatch):
    """Bundle from the full pipeline when its modules are all present, else from a small entry."""
    try:
        bundle.module_closure()
    except WorkError:
        monkeypatch.setattr(record, "bundle_code", functools.partial(bundle.bundle_code, entry="pgolf.submit.bundle"))
        monkeypatch.setattr(record, "requirements", lambda: bundle.requirements(bundle.module_closure("pgolf.eval.plain")))


def test_submission_consistent_with_runs(tmp_path, capsys, small_bundle):
    runs = [make_run(tmp_path / f"r{s}", s, b) for s, b in BPBS.items()]
    refs = [make_run(tmp_path / f"ref{i}", 10 + i, b) for i, b in enumerate([1.2290, 1.2301, 1.2279])]
    out = tmp_path / "records" / "2026-05-01_Tiny"
    argv = ["submit", *map(str, runs[::-1]), "--out", str(out), "--name", "Tiny test", "--author", "A. Golfer",
            "--github-id", "golfer", "--blurb", "tiny recipe", "--compress", "lzma", "--reference-bpb", "1.2300",
            "--reference-runs", *map(str, refs), "--base-pr", "1413", "--json"]
    assert cli_main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    sub = json.loads((out / "submission.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "submission.json", "requirements.txt", "train_gpt.py",
         "train_seed1.log", "train_seed2.log", "train_seed3.log"])
    assert not [p for p in tmp_path.joinpath("records").iterdir() if p.name.startswith(".")]  # no temp left
    for key in ("author", "github_id", "name", "blurb", "date", "track", "val_loss", "val_bpb", "val_bpb_std",
                "seeds", "seed_results", "bytes_total", "bytes_code", "hardware", "pytorch_version",
                "compliance", "base_pr", "t_statistic"):
        assert key in sub, key
    assert sub["track"] == "10min_16mb" and sub["author"] == "A. Golfer" and sub["base_pr"] == 1413
    assert sub["seeds"] == [1, 2, 3]
    assert sub["val_bpb"] == pytest.approx(statistics.mean(BPBS.values()), abs=1e-12)
    assert sub["val_bpb_std"] == pytest.approx(statistics.stdev(BPBS.values()), abs=1e-12)
    assert sub["val_loss"] == pytest.approx(1.68 * statistics.mean(BPBS.values()))
    code = (out / "train_gpt.py").read_bytes()
    assert sub["bytes_code"] == len(code) and code.startswith(b"# train_gpt.py (pgolf, lzma")
    assert sub["bytes_total"] == 15_003_000 + len(code)  # largest model + this folder's code
    for seed, b in BPBS.items():
        r = sub["seed_results"][str(seed)]
        assert r["val_bpb"] == b and r["steps"] == 5000 + seed and r["artifact_bytes"] == 15_030_000 + 1000 * seed
        assert r["step_avg_ms"] == pytest.approx(590_000 / (5000 + seed)) and r["eval_time_s"] == 300.0 + seed
        assert (out / f"train_seed{seed}.log").read_text() == f"step 1 loss 7.0 seed {seed}\n"
    assert sub["compliance"] == {"train_under_600s": True, "eval_under_600s": True, "artifact_under_16mb": True,
                                 "audit_passed": True, "full_validation": True}
    assert sub["hardware"] == "8x NVIDIA H100 80GB HBM3" and sub["pytorch_version"] == "2.9.1"
    # the one-sample test is the headline statistic; Welch against the reference runs is reported too
    tpb = 1_000_000 / 2_436_000
    exp = st.ttest_1samp(list(BPBS.values()), 1.2300 - 0.005 / 0.6931471805599453 * tpb, alternative="less")
    assert sub["t_statistic"] == pytest.approx(exp.statistic, rel=1e-9)
    welch = st.ttest_ind(list(BPBS.values()), [1.2290, 1.2301, 1.2279], equal_var=False, alternative="less")
    assert sub["significance"]["welch"]["p_value"] == pytest.approx(welch.pvalue, rel=1e-9)
    readme = (out / "README.md").read_text()
    assert "| 2 | " in readme and "1.22100" in readme and f"{sub['val_bpb']:.5f}" in readme
    assert "`model.num_layers = 4`" in readme and "## Compliance" in readme and "t = " in readme
    reqs = (out / "requirements.txt").read_text().split()
    assert any(r.startswith("torch==") for r in reqs) and all("==" in r for r in reqs)
    assert res["out"] == str(out) and res["warnings"] == []


def test_submit_refuses_mixed_recipes_and_bad_folders(tmp_path, capsys, small_bundle):
    a = make_run(tmp_path / "a", 1, 1.22)
    b = make_run(tmp_path / "b", 2, 1.23, overrides=["model.num_layers=3"])
    with pytest.raises(InputError, match="model.num_layers"):
        record.write_record([str(a), str(b)], tmp_path / "out")
    c = make_run(tmp_path / "c", 1, 1.21)
    with pytest.raises(InputError, match="repeat a seed"):
        record.write_record([str(a), str(c)], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    d = make_run(tmp_path / "d", 2, 1.20)
    (d / "train.log").unlink()
    with pytest.raises(InputError, match="train.log"):
        record.write_record([str(a), str(d)], tmp_path / "out")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep")
    assert cli_main(["submit", str(a), "--out", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err and (busy / "x").exists()


def test_submit_flags_compliance_problems(tmp_path, small_bundle):
    a = make_run(tmp_path / "a", 1, 1.22, model_bytes=15_990_000, train_s=612.0, audit=False)
    b = make_run(tmp_path / "b", 2, 1.23, audit=None)
    res = record.write_record([str(a), str(b)], tmp_path / "rec", compress="none")
    c = res["compliance"]
    assert c["train_under_600s"] is False and c["audit_passed"] is False
    assert c["artifact_under_16mb"] is False  # 15,990,000 + an uncompressed train_gpt.py
    assert res["t_statistic"] is None and res["val_bpb_std"] == pytest.approx(statistics.stdev([1.22, 1.23]))
    assert any("3" in w for w in res["warnings"]) and any("train_under_600s" in w for w in res["warnings"])
    # --force replaces the folder atomically
    res2 = record.write_record([str(b)], tmp_path / "rec", compress="none", force=True)
    assert res2["seeds"] == [2] and json.loads((tmp_path / "rec" / "submission.json").read_text())["seeds"] == [2]

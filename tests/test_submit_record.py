"""`pgolf submit`: the record folder and submission.json against the runs it was built from."""
import hashlib
import json
import statistics

import pytest
from scipy import stats as st

from pgolf.cli import main as cli_main
from pgolf.config import load_config
from pgolf.errors import InputError
from pgolf.pipeline.rundir import load_run
from pgolf.submit import bundle, record

BPBS = {1: 1.2210, 2: 1.2195, 3: 1.2231}


def make_run(d, seed, bpb, overrides=(), model_bytes=None, train_s=590.0, audit=True):
    d.mkdir(parents=True, exist_ok=True)
    cfg = load_config("tiny", [f"train.seed={seed}", f"data.path=/data/{seed}", *overrides])
    (d / "config.json").write_text(cfg.to_json())
    mb = model_bytes if model_bytes is not None else 15_000_000 + 1000 * seed
    blob = f"artifact of seed {seed}".encode()
    (d / "artifact.pgolf").write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    s = {"recipe": "tiny", "seed": seed, "val_bpb": bpb, "val_loss": bpb * 1.68, "val_bpb_prequant": bpb - 0.008,
         "steps": 5000 + seed, "train_seconds": train_s, "eval_seconds": 300.0 + seed, "model_bytes": mb,
         "code_bytes": 30_000, "artifact_bytes": mb + 30_000, "eval_tokens": 1_000_000, "eval_bytes": 2_436_000,
         "eval_method": "sliding", "eval_subset": "the full validation split", "eval_full_split": True,
         "torch_version": "2.9.1",
         "eval_source": "artifact", "artifact_sha256": sha, "eval_artifact_sha256": sha}
    (d / "summary.json").write_text(json.dumps(s))
    (d / "train.log").write_text(f"step 1 loss 7.0 seed {seed}\n")
    (d / "env.json").write_text(json.dumps({"device_name": "NVIDIA H100 80GB HBM3", "world_size": 8,
                                            "device": "cuda:0"}))
    if audit is not None:
        (d / "audit.json").write_text(json.dumps({"passed": audit}))
    return d


def test_submission_consistent_with_runs(tmp_path, capsys):
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
    assert sub["bytes_code"] == len(code) and code.startswith(b"#coding:latin1\nL=")
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


def test_submit_refuses_mixed_recipes_and_bad_folders(tmp_path, capsys):
    a = make_run(tmp_path / "a", 1, 1.22)
    b = make_run(tmp_path / "b", 2, 1.23, overrides=["model.num_layers=3"])
    with pytest.raises(InputError, match="model.num_layers"):
        record.write_record([load_run(a), load_run(b)], tmp_path / "out")
    c = make_run(tmp_path / "c", 1, 1.21)
    with pytest.raises(InputError, match="repeat a seed"):
        record.write_record([load_run(a), load_run(c)], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    d = make_run(tmp_path / "d", 2, 1.20)
    (d / "train.log").unlink()
    with pytest.raises(InputError, match="train.log"):
        record.write_record([load_run(a), load_run(d)], tmp_path / "out")
    e = make_run(tmp_path / "e", 2, 1.20)
    (e / "artifact.pgolf").write_bytes(b"repacked since it was scored")
    with pytest.raises(InputError, match="describes another artifact"):
        record.write_record([load_run(a), load_run(e)], tmp_path / "out")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep")
    assert cli_main(["submit", str(a), "--out", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err and (busy / "x").exists()


def test_submit_flags_compliance_problems(tmp_path):
    a = make_run(tmp_path / "a", 1, 1.22, model_bytes=15_990_000, train_s=612.0, audit=False)
    b = make_run(tmp_path / "b", 2, 1.23, audit=None)
    res = record.write_record([load_run(a), load_run(b)], tmp_path / "rec", compress="none")
    c = res["compliance"]
    assert c["train_under_600s"] is False and c["audit_passed"] is False
    assert c["artifact_under_16mb"] is False  # 15,990,000 + an uncompressed train_gpt.py
    assert res["t_statistic"] is None and res["val_bpb_std"] == pytest.approx(statistics.stdev([1.22, 1.23]))
    assert any("3" in w for w in res["warnings"]) and any("train_under_600s" in w for w in res["warnings"])
    # --force replaces the folder atomically
    res2 = record.write_record([load_run(b)], tmp_path / "rec", compress="none", force=True)
    assert res2["seeds"] == [2] and json.loads((tmp_path / "rec" / "submission.json").read_text())["seeds"] == [2]
    readme = (tmp_path / "rec" / "README.md").read_text()
    assert "(1 seed: no spread to report)" in readme and "± 0.00000" not in readme and "| std |" not in readme
    assert any(w.startswith("only 1 seed:") for w in res2["warnings"])


def test_requirements_and_reproduce_line_follow_the_bundle_and_hardware(tmp_path):
    cpu = make_run(tmp_path / "cpu", 1, 1.3)
    (cpu / "env.json").write_text(json.dumps({"device": "cpu", "device_name": "Xeon", "world_size": 1}))
    record.write_record([load_run(cpu)], tmp_path / "rec_cpu")
    readme = (tmp_path / "rec_cpu" / "README.md").read_text()
    assert "python train_gpt.py --data DATA_DIR --tokenizer TOKENIZER --set train.seed=1" in readme
    assert "torchrun" not in readme
    assert "leaves out what the score does not need" in readme
    reqs = (tmp_path / "rec_cpu" / "requirements.txt").read_text().split()
    info = bundle.bundle_info(load_config("tiny"))
    assert sorted(r.split("==")[0].lower() for r in reqs) == sorted(bundle.distribution_names(info.third_party))
    assert not {"matplotlib", "tqdm", "huggingface-hub", "huggingface_hub", "safetensors"} & \
        {r.split("==")[0].lower() for r in reqs}
    assert (tmp_path / "rec_cpu" / "train_gpt.py").read_bytes() == info.data()
    gpu = make_run(tmp_path / "gpu", 1, 1.3)
    record.write_record([load_run(gpu)], tmp_path / "rec_gpu")
    assert "torchrun --standalone --nproc_per_node=8 train_gpt.py" in (tmp_path / "rec_gpu" / "README.md").read_text()

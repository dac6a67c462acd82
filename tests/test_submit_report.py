"""`pgolf compare` and the sweep tooling on hand-written run directories."""
import json
import shlex

import pytest

from pgolf.cli import main as cli_main
from pgolf.config import load_config
from pgolf.atomic import read_jsonl
from pgolf.pipeline.reports import SWEEP_FILE, collect_dir
from pgolf.pipeline.rundir import load_run
from pgolf.submit import sweep
from pgolf.submit.report import compare_runs


def make_run(d, seed, bpb, recipe="tiny", steps=100, train_s=50.0, prequant=None, metrics=True):
    d.mkdir(parents=True, exist_ok=True)
    cfg = load_config(recipe, [f"train.seed={seed}"])
    (d / "config.json").write_text(cfg.to_json())
    s = {"recipe": recipe, "seed": seed, "val_bpb": bpb, "val_loss": bpb * 1.7, "steps": steps,
         "train_seconds": train_s, "eval_seconds": 12.5, "val_bpb_prequant": prequant if prequant else bpb - 0.01,
         "artifact_bytes": 1_000_000 + seed, "model_bytes": 990_000 + seed, "code_bytes": 10_000,
         "eval_tokens": 1000, "eval_bytes": 2400}
    (d / "summary.json").write_text(json.dumps(s))
    if metrics:
        rows = [{"step": i * 10, "train_loss": 7.0 - 0.05 * i - 0.01 * seed} for i in range(1, 11)]
        rows += [{"step": 50, "val_bpb": bpb + 0.2}, {"step": 100, "val_bpb": bpb + 0.01}]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{\"step\": 1")  # torn tail
    (d / "train.log").write_text(f"seed {seed} log\n")
    return d


def test_compare_table_and_png(tmp_path, capsys):
    a = make_run(tmp_path / "a", 1, 1.25, steps=200, train_s=40.0)
    b = make_run(tmp_path / "b", 2, 1.20, prequant=1.19)
    png = tmp_path / "plots" / "cmp.png"
    assert cli_main(["compare", str(a), str(b), "--out", str(png), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    r0, r1 = out["runs"]
    assert (r0["seed"], r1["seed"]) == (1, 2)
    assert r0["step_ms"] == pytest.approx(200.0)  # 40 s / 200 steps
    assert r1["quant_gap"] == pytest.approx(0.01)
    assert r0["artifact_bytes"] == 1_000_001
    assert "1.25000" in out["table"] and "1.20000" in out["table"] and "ms/step" in out["table"]
    assert (r0["label"], r1["label"]) == (load_run(a).label, load_run(b).label)
    assert out["differing_fields"] == ["train.seed"] and r1["config"] == {"train.seed": 2}
    assert cli_main(["compare", str(a), str(b)]) == 0  # human output: the table with a run and a seed column
    text = capsys.readouterr().out
    header = text.splitlines()[0].split()
    assert header[:3] == ["run", "recipe", "seed"] and header[-1] == "train.seed"
    assert "prequant" in text and " a " in f" {text.splitlines()[1]} "


def test_metrics_reader_and_bad_runs(tmp_path, capsys):
    a = make_run(tmp_path / "a", 1, 1.25)
    assert len(read_jsonl(a / "metrics.jsonl")) == 12  # torn last line skipped
    assert len(load_run(a).metrics) == 12
    (tmp_path / "empty").mkdir()
    assert cli_main(["compare", str(tmp_path / "empty")]) == 2
    assert "summary.json not found" in capsys.readouterr().err
    (a / "metrics.jsonl").write_text("{bad\n{\"step\": 1}\n")
    with pytest.raises(Exception, match="invalid JSON line"):
        compare_runs([load_run(a)])


def test_emit_torchrun(tmp_path, capsys):
    out = tmp_path / "sw"
    argv = ["sweep", "--recipe", "tiny", "--set", "train.max_steps=5", "--toggle", "model.num_layers=2",
            "--seeds", "3,7", "--data", "/d/shards", "--out", str(out), "--emit-torchrun", "8", "--json"]
    assert cli_main(argv) == 0
    cmds = json.loads(capsys.readouterr().out)["commands"]
    assert len(cmds) == 4 and not out.exists()  # printed, nothing run
    for cmd, (arm, seed) in zip(cmds, [("", 3), ("", 7), ("toggle/", 3), ("toggle/", 7)]):
        args = shlex.split(cmd)
        assert args[:6] == ["torchrun", "--standalone", "--nproc_per_node=8", "-m", "pgolf.cli", "run"]
        assert args[args.index("--out") + 1] == str(out / f"{arm}seed_{seed}")
        assert args[args.index("--data") + 1] == "/d/shards"
        sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        assert sets[0] == "train.max_steps=5" and sets[-1] == f"train.seed={seed}"
        assert ("model.num_layers=2" in sets) == (arm == "toggle/")
    # bad input: exit 2 with a message
    assert cli_main(["sweep", "--recipe", "tiny", "--seeds", "1,x", "--out", str(out), "--emit-torchrun", "2"]) == 2
    assert cli_main(["sweep", "--recipe", "tiny", "--seeds", "1", "--out", str(out), "--emit-torchrun", "2",
                     "--set", "train.seed=4"]) == 2
    assert cli_main(["sweep", "--recipe", "tiny", "--seeds", "1", "--out", str(out), "--emit-torchrun", "2",
                     "--set", "model.nope=4"]) == 2
    assert "model.nope" in capsys.readouterr().err


def test_sweep_collects_existing_runs(tmp_path, capsys):
    out = tmp_path / "sw"
    base, tog = [1.30, 1.31, 1.29], [1.20, 1.22, 1.21]
    for s, b, t in zip((1, 2, 3), base, tog):
        make_run(out / f"seed_{s}", s, b)
        make_run(out / "toggle" / f"seed_{s}", s, t)
    # every seed already has a summary: nothing runs, sweep.json is written from the summaries
    assert cli_main(["sweep", "--recipe", "tiny", "--toggle", "model.num_layers=2", "--seeds", "1,2,3",
                     "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    on_disk = json.loads((out / SWEEP_FILE).read_text())
    assert on_disk["base"]["val_bpb_mean"] == pytest.approx(res["base"]["val_bpb_mean"])
    assert len(res["reused"]) == 6 and res["failed"] == []
    assert res["base"]["val_bpb_mean"] == pytest.approx(1.30)
    assert res["toggle"]["val_bpb_std"] == pytest.approx(0.01)
    assert [r["seed"] for r in res["toggle"]["rows"]] == [1, 2, 3]
    w = res["toggle_vs_base"]
    assert w["delta_bpb"] == pytest.approx(-0.09) and w["significant"] is True
    assert res["tokens_per_byte"] == pytest.approx(1000 / 2400)
    specs = sweep.plan_sweep([1, 2, 3], out, [], ["model.num_layers=2"])
    assert collect_dir(out, specs)["toggle_vs_base"]["t_statistic"] == pytest.approx(w["t_statistic"])

"""`pgolf train` through pgolf.cli.main: exit codes, --data handling, challenge env names."""
from __future__ import annotations

import json

import pytest

from pgolf.cli import main
from pgolf.compat import ENV_FIELDS, apply_env_compat
from train_util import make_real_data, tiny_overrides  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _sets(**extra) -> list[str]:
    return [x for o in tiny_overrides(**extra) for x in ("--set", o)]


def test_bad_config_value_exits_2(tmp_path, capsys):
    data = make_real_data(tmp_path)
    code = main(["train", "--recipe", "tiny", "--data", str(data), "--out", str(tmp_path / "r"),
                 *_sets(**{"train.device": "tpu"})])
    assert code == 2
    assert "train.device" in capsys.readouterr().err
    code = main(["train", "--recipe", "tiny", "--data", str(data), "--out", str(tmp_path / "r"),
                 "--set", "train.max_steps=abc"])
    assert code == 2
    assert "train.max_steps" in capsys.readouterr().err


def test_missing_data_exits_2(tmp_path, capsys):
    code = main(["train", "--recipe", "tiny", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert code == 2
    assert "data directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    code = main(["train", "--recipe", "tiny", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    assert code == 2
    assert "no fineweb_train_" in capsys.readouterr().err
    code = main(["train", "--recipe", "tiny", "--out", str(tmp_path / "r")])  # no --data, no data.path
    assert code == 2
    assert "--data" in capsys.readouterr().err


def test_env_compat_mapping(capsys):
    env = {"ITERATIONS": "7", "MAX_WALLCLOCK_SECONDS": "0", "SEED": "3", "MATRIX_LR": "0.02", "UNRELATED": "1"}
    out = apply_env_compat(["train.seed=9"], env)
    assert out == ["train.max_steps=7", "train.max_seconds=0", "optim.matrix_lr=0.02", "train.seed=9"]
    err = capsys.readouterr().err
    assert "ITERATIONS=7 -> train.max_steps" in err and "SEED" not in err  # explicit --set wins
    assert set(ENV_FIELDS.values()) <= {f"{s}.{k}" for s in ("train", "model", "optim")
                                        for k in __import__("pgolf.config", fromlist=["x"]).Config().to_dict()[s]}


def test_cli_train_json_with_env(tmp_path, capsys, monkeypatch):
    data = make_real_data(tmp_path)
    monkeypatch.setenv("ITERATIONS", "3")
    code = main(["train", "--recipe", "tiny", "--data", str(data), "--out", str(tmp_path / "r"), "--json",
                 "--no-progress", *[x for o in tiny_overrides() if not o.startswith("train.max_steps")
                                     for x in ("--set", o)]])
    assert code == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    assert summary["steps"] == 3 and "ITERATIONS=3" in cap.err
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["steps"] == 3

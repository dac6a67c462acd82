import json

import pytest

from pgolf.cli import main
from pgolf.config import Config, ConfigError, load_config, recipe_dict


def test_recipe_extends_and_roundtrip():
    cfg = load_config("tiny")
    assert cfg.name == "tiny"
    assert cfg.model.num_layers == 4  # set by tiny
    assert cfg.model.activation == "relu2"  # inherited from baseline
    assert cfg.quant.groups[0].bits == 8
    again = Config.from_dict(json.loads(cfg.to_json()))
    assert again == cfg


def test_overrides_types_and_lists():
    cfg = load_config("baseline", ["model.num_layers=11", "optim.matrix_lr=0.025", "model.ln_scale=true",
                                   "eval.lora_targets=[\"q\",\"v\",\"lm_head\"]", "train.batch_tokens=786_432",
                                   "train.micro_batch_tokens=98304"])
    assert cfg.model.num_layers == 11 and cfg.model.ln_scale is True
    assert cfg.optim.matrix_lr == pytest.approx(0.025)
    assert cfg.eval.lora_targets == ["q", "v", "lm_head"]
    assert cfg.train.batch_tokens == 786_432


@pytest.mark.parametrize("override, field", [
    ("model.num_heads=7", "model.num_heads"),
    ("model.activation=gelu", "model.activation"),
    ("model.num_layers=abc", "model.num_layers"),
    ("model.nonsense=1", "model.nonsense"),
    ("train.micro_batch_tokens=1000", "train.micro_batch_tokens"),
    ("eval.method=magic", "eval.method"),
    ("quant.groups=[{pattern=\"*\", bits=9}]", "quant.groups[0].bits"),
    ("model.recur_start=5", "model.recur_start"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        load_config("baseline", [override])


def test_cli_bad_config_exits_2(capsys):
    assert main(["model", "--recipe", "baseline", "--set", "model.num_kv_heads=3"]) == 2
    assert "model.num_kv_heads" in capsys.readouterr().err
    assert main(["model", "--recipe", "no-such-recipe"]) == 2


def test_extends_cycle_is_refused(tmp_path):
    (tmp_path / "a.toml").write_text(f'extends = "{tmp_path / "b.toml"}"\n')
    (tmp_path / "b.toml").write_text(f'extends = "{tmp_path / "a.toml"}"\n')
    with pytest.raises(ConfigError, match="cycle"):
        recipe_dict(str(tmp_path / "a.toml"))


def test_model_command_param_counts(capsys):
    assert main(["model", "--recipe", "baseline", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 17_059_912

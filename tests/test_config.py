import json

import pytest

from pgolf.cli import main
import dataclasses

from pgolf.config import (ARTIFACT_LIMIT, SECTIONS, Config, ConfigError, EvalConfig, ModelConfig, choices,
                          field_docs, load_config, recipe_dict, recipe_names)


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
    assert cfg.eval.lora_targets == ("q", "v", "lm_head")
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
    ("train.seed=-1", "train.seed"),
    ("train.seed=73786976294838206464", "train.seed"),
    ("quant.target_bytes=16000001", "quant.target_bytes"),
    ('eval.lora_targets=["q","x"]', r"eval.lora_targets[1]"),
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


def test_config_is_frozen_and_replace_makes_a_new_one():
    cfg = load_config("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.num_layers = 3
    other = cfg.replace(["model.num_layers=3"])
    assert other.model.num_layers == 3 and cfg.model.num_layers == 4


def test_every_field_has_a_doc_and_choices_come_from_the_types():
    for name, section in SECTIONS.items():
        docs = field_docs(section)
        assert docs and all(docs.values()), f"{name}: a field without a doc"
    assert choices(EvalConfig, "method") == ("plain", "sliding", "docs", "ttt-sgd", "ttt-lora", "phased")
    assert choices(ModelConfig, "activation") == ("relu2", "leaky_relu2", "swiglu")
    with pytest.raises(ConfigError, match="expected one of plain | sliding"):
        load_config("tiny", ["eval.method=magic"])
    assert EvalConfig().method in choices(EvalConfig, "method")
    assert load_config("tiny").quant.target_bytes == ARTIFACT_LIMIT == 16_000_000


@pytest.mark.parametrize("recipe", recipe_names())
def test_smoke_keeps_switches_and_shrinks_shapes(recipe):
    full, smoke = load_config(recipe), load_config(recipe, smoke=True)
    assert smoke.model.model_dim == 64 and smoke.train.seq_len == 128 and smoke.train.max_steps == 8
    assert smoke.eval.max_tokens == 8192 and smoke.train.max_seconds == 0
    for f in ("num_layers", "vocab_size", "activation", "xsa_last_n", "recur_start", "recur_end",
              "parallel_from", "smear_gate", "skip_gates", "ln_scale", "tie_embeddings"):
        assert getattr(smoke.model, f) == getattr(full.model, f), f
    assert smoke.eval.method == full.eval.method and smoke.quant.groups == full.quant.groups
    explicit = load_config(recipe, ["train.max_steps=3"], smoke=True)
    assert explicit.train.max_steps == 3  # --set still wins over --smoke


def test_config_command_lists_fields_with_docs(capsys):
    assert main(["config", "--recipe", "pr1413", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["model"]["vocab_size"] == 8192
    assert out["fields"]["model"]["xsa_last_n"]["value"] == -1 and out["fields"]["model"]["xsa_last_n"]["doc"]

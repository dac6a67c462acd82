"""Parameter-group rules, optimizer construction, and a toy problem that Muon + AdamW solve."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pgolf.config import OptimConfig
from pgolf.optim.groups import build_optimizers, classify_params, describe_groups
from pgolf.optim.muon import Muon


class Attn(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.c_q = nn.Linear(d, d, bias=False)
        self.out_gate = nn.Parameter(torch.zeros(4, 12))  # small bare 2-D control tensor


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.attn = Attn(d)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))  # 2-D control
        self.gate = nn.Linear(d, 2 * d, bias=True)  # a SwiGLU-style Linear named "gate": still a matrix
        self.custom = nn.Parameter(torch.randn(d, d) * 0.1)  # bare non-control matrix in a block


class Toy(nn.Module):
    def __init__(self, d: int = 16, vocab: int = 32, tied: bool = False):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.bigram_table = nn.Embedding(8, 4)
        self.bigram_proj = nn.Linear(4, d, bias=False)  # small projection outside the blocks
        self.big_proj = nn.Linear(64, 64, bias=False)  # large projection outside the blocks
        self.blocks = nn.ModuleList(Block(d) for _ in range(2))
        self.skip_weights = nn.Parameter(torch.ones(1, d))
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.tok_emb.weight
        self.frozen = nn.Parameter(torch.zeros(3), requires_grad=False)


def _names(model: nn.Module) -> dict[str, set[str]]:
    return {k: {n for n, _ in v} for k, v in classify_params(model).items()}


def test_group_rules_untied():
    kinds = _names(Toy())
    assert kinds["embed"] == {"tok_emb.weight", "bigram_table.weight"}
    assert kinds["head"] == {"lm_head.weight"}
    assert kinds["matrix"] == {f"blocks.{i}.{n}" for i in range(2)
                               for n in ("attn.c_q.weight", "gate.weight", "custom")} | {"big_proj.weight"}
    assert kinds["scalar"] == {"bigram_proj.weight", "skip_weights"} | {
        f"blocks.{i}.{n}" for i in range(2) for n in ("attn.out_gate", "attn_scale", "resid_mix", "gate.bias")}


def test_tied_head_goes_with_embedding():
    for model in (Toy(tied=True),):
        kinds = _names(model)
        assert kinds["head"] == set()
        assert "tok_emb.weight" in kinds["embed"]
    # Registering the head first must not change the outcome: the tensor is an Embedding's weight.
    m = nn.Module()
    m.lm_head = nn.Linear(8, 32, bias=False)
    m.tok_emb = nn.Embedding(32, 8)
    m.lm_head.weight = m.tok_emb.weight
    assert {k: len(v) for k, v in classify_params(m).items()} == {"embed": 1, "head": 0, "scalar": 0, "matrix": 0}


@pytest.mark.parametrize("tied", [False, True])
def test_every_param_in_exactly_one_group(tied):
    model = Toy(tied=tied)
    cfg = OptimConfig(matrix_lr=0.02, embed_lr=0.03, head_lr=0.008, scalar_lr=0.025, muon_wd=0.085, embed_wd=0.085,
                      scalar_wd=0.02)
    opts = build_optimizers(model, cfg)
    ids = [id(p) for o in opts for g in o.param_groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) == len(trainable) and set(ids) == trainable
    adam, muon = opts
    assert isinstance(adam, torch.optim.AdamW) and isinstance(muon, Muon)
    groups = {g["name"]: g for o in opts for g in o.param_groups}
    assert set(groups) == ({"embed", "scalar", "matrix"} if tied else {"embed", "head", "scalar", "matrix"})
    expect = {"embed": (0.03, 0.085), "head": (0.008, 0.0), "scalar": (0.025, 0.02), "matrix": (0.02, 0.085)}
    for name, g in groups.items():
        assert (g["lr"], g["weight_decay"]) == expect[name]
        assert g["base_lr"] == g["lr"]
        assert len(g["names"]) == len(g["params"])
    assert adam.defaults["betas"] == (cfg.adam_beta1, cfg.adam_beta2) and adam.defaults["eps"] == cfg.adam_eps
    assert muon.param_groups[0]["momentum"] == cfg.muon_momentum


def test_muon_options_from_config_and_describe():
    cfg = OptimConfig(muon_nesterov=False, muon_ns_steps=4, muon_ns_coeffs="polar_express", muon_eq_r=True)
    opts = build_optimizers(Toy(), cfg)
    g = opts[1].param_groups[0]
    assert (g["nesterov"], g["ns_steps"], g["ns_coeffs"], g["eq_r"]) == (False, 4, "polar_express", True)
    table = describe_groups(opts).splitlines()
    assert table[0].split() == ["optimizer", "group", "tensors", "params", "lr", "wd"]
    rows = {line.split()[1]: line.split() for line in table[1:]}
    assert rows["matrix"][0] == "Muon" and rows["matrix"][2] == "7"
    assert rows["embed"][3] == f"{32 * 16 + 8 * 4:,}"


def test_model_without_matrices_gets_only_adam():
    m = nn.Module()
    m.tok_emb = nn.Embedding(10, 4)
    m.scale = nn.Parameter(torch.ones(4))
    opts = build_optimizers(m, OptimConfig())
    assert len(opts) == 1 and isinstance(opts[0], torch.optim.AdamW)


def test_muon_and_adam_reduce_regression_loss():
    torch.manual_seed(0)
    d, vocab, n = 32, 16, 256
    tokens = torch.randint(0, vocab, (n,))
    target = torch.randn(vocab, d)[tokens] @ torch.randn(d, d) * 0.5

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_emb = nn.Embedding(vocab, d)
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, 2 * d, bias=False), nn.ReLU(),
                                                      nn.Linear(2 * d, d, bias=False)) for _ in range(2))
            self.out_scale = nn.Parameter(torch.ones(d))

        def forward(self, t):
            x = self.tok_emb(t)
            for b in self.blocks:
                x = x + b(x)
            return x * self.out_scale

    net = Net()
    opts = build_optimizers(net, OptimConfig(matrix_lr=0.02, embed_lr=0.05, scalar_lr=0.02))
    assert [type(o) for o in opts] == [torch.optim.AdamW, Muon]
    losses = []
    for _ in range(60):
        loss = nn.functional.mse_loss(net(tokens), target)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_frozen_parameters_stay_at_init_and_join_no_optimizer(tmp_path):
    from pgolf.config import ConfigError, load_config
    from pgolf.model.gpt import GPT
    from pgolf.optim.groups import freeze_params
    from train_util import make_real_data, tiny_config, trainer_for

    cfg = tiny_config(**{"model.smear_gate": "v1", "optim.frozen": ["smear.gate", "blocks.0.attn_scale"],
                         "train.max_steps": 3, "train.val_every": 0})
    tr = trainer_for(cfg, make_real_data(tmp_path))
    try:
        before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
        in_opt = {id(p) for o in tr.optimizers for g in o.param_groups for p in g["params"]}
        tr.loop()
    finally:
        tr.loader.close()
    for n, p in tr.model.named_parameters():
        frozen = n in ("smear.gate", "blocks.0.attn_scale")
        assert (id(p) not in in_opt) == frozen and p.requires_grad != frozen, n
        assert torch.equal(p, before[n]) == frozen, n  # everything else trained
    with pytest.raises(ConfigError, match="optim.frozen: 'smear.gaet'"):
        freeze_params(GPT(load_config("tiny").model), ("smear.gaet",))

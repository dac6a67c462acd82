"""Which parameter goes to which optimizer, decided by rule from module types, names and shapes.

Rules, first match wins (a tied lm_head is the embedding's tensor, so it is counted once as embed):
  embed   weight of any nn.Embedding (token table, BigramHash / value-embedding tables)  AdamW embed_lr, embed_wd
  head    weight of a module named lm_head                                              AdamW head_lr, no WD
  matrix  ndim >= 2, not a control tensor, and inside the blocks ("blocks." in the name)
          or elsewhere with both sides >= 64 (e.g. the BigramHash projection)           Muon matrix_lr, muon_wd
  scalar  everything else: vectors, biases, gains, mixes, gates, skip weights, small
          projections outside the blocks                                                AdamW scalar_lr, scalar_wd
Parameters matching optim.frozen (freeze_params) have requires_grad off and join no group.
A control tensor is a bare parameter (not owned by an nn.Linear) whose own name contains one of
CONTROL_PATTERNS, e.g. blocks.0.resid_mix (2, d) or blocks.0.attn.out_gate (heads, 12). Linear
weights are never control tensors, so a SwiGLU "mlp.gate" Linear still goes to Muon.
Each group carries "name" (embed/head/scalar/matrix), "base_lr" (schedules multiply it) and
"names" (parameter names, for logging).
"""
from __future__ import annotations

import fnmatch

import torch
import torch.nn as nn

from pgolf.config import ConfigError, OptimConfig
from pgolf.optim.muon import Muon

CONTROL_PATTERNS = ("scale", "mix", "gain", "skip", "gate", "lambda")
OUTSIDE_MATRIX_MIN_DIM = 64  # matrices outside the blocks this small are cheaper and safer with Adam
KINDS = ("embed", "head", "scalar", "matrix")


def _owners(model: nn.Module) -> dict[int, tuple[str, nn.Module, str]]:
    """id(param) -> (module name, module, attribute name) of its first owner that decides the kind."""
    out: dict[int, tuple[str, nn.Module, str]] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for attr, p in mod.named_parameters(recurse=False):
            prev = out.get(id(p))
            # Embedding ownership wins so a tied head (same tensor) stays with the embedding.
            if prev is None or (isinstance(mod, nn.Embedding) and not isinstance(prev[1], nn.Embedding)):
                out[id(p)] = (mod_name, mod, attr)
    return out


def _min_side(p: torch.Tensor) -> int:
    return min(p.shape[0], p[0].numel()) if p.ndim >= 2 else 0


def param_kind(name: str, p: torch.Tensor, owner: nn.Module, owner_name: str, attr: str) -> str:
    """The optimizer group ("embed" | "head" | "matrix" | "scalar") for one parameter."""
    if isinstance(owner, nn.Embedding):
        return "embed"
    if owner_name.split(".")[-1] == "lm_head" and attr == "weight":
        return "head"
    if p.ndim < 2:
        return "scalar"
    control = not isinstance(owner, nn.Linear) and any(pat in attr.lower() for pat in CONTROL_PATTERNS)
    if control:
        return "scalar"
    in_blocks = name.startswith("blocks.") or ".blocks." in name
    if in_blocks or _min_side(p) >= OUTSIDE_MATRIX_MIN_DIM:
        return "matrix"
    return "scalar"


def classify_params(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable parameters by kind, in named_parameters order (each tensor exactly once)."""
    owners = _owners(model)
    out: dict[str, list[tuple[str, nn.Parameter]]] = {k: [] for k in KINDS}
    for name, p in model.named_parameters():  # deduplicates tied tensors
        if not p.requires_grad:
            continue
        owner_name, owner, attr = owners[id(p)]
        out[param_kind(name, p, owner, owner_name, attr)].append((name, p))
    return out


def freeze_params(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Parameters whose names match a glob stop training (requires_grad off); their names."""
    names = [n for n, p in model.named_parameters() if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ConfigError(f"optim.frozen: '{pat}' matches no parameter of this model")
    for n in names:
        model.get_parameter(n).requires_grad_(False)
    return names


def build_optimizers(model: nn.Module, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """[AdamW over embed/head/scalar groups, Muon over matrices]; empty ones are left out."""
    kinds = classify_params(model)
    lr_wd = {"embed": (cfg.embed_lr, cfg.embed_wd), "head": (cfg.head_lr, 0.0), "scalar": (cfg.scalar_lr, cfg.scalar_wd)}
    adam_groups = [
        dict(params=[p for _, p in kinds[k]], names=[n for n, _ in kinds[k]], name=k, lr=lr, base_lr=lr, weight_decay=wd)
        for k, (lr, wd) in lr_wd.items() if kinds[k]
    ]
    optimizers: list[torch.optim.Optimizer] = []
    if adam_groups:
        fused = all(p.is_cuda for g in adam_groups for p in g["params"])
        optimizers.append(torch.optim.AdamW(adam_groups, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                                            fused=fused))
    if kinds["matrix"]:
        on_cuda = all(p.is_cuda for _, p in kinds["matrix"])  # bf16 momentum: the records' GPU path only
        optimizers.append(Muon(
            [dict(params=[p for _, p in kinds["matrix"]], names=[n for n, _ in kinds["matrix"]], name="matrix",
                  base_lr=cfg.matrix_lr)],
            lr=cfg.matrix_lr, momentum=cfg.muon_momentum, nesterov=cfg.muon_nesterov, ns_steps=cfg.muon_ns_steps,
            ns_coeffs=cfg.muon_ns_coeffs, eq_r=cfg.muon_eq_r, weight_decay=cfg.muon_wd, ns_safety=cfg.muon_ns_safety,
            momentum_dtype=torch.bfloat16 if cfg.muon_momentum_dtype == "bf16" and on_cuda else None))

    seen = [id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert len(seen) == len(set(seen)) and set(seen) == set(trainable), "every parameter in exactly one group"
    return optimizers


def describe_groups(optimizers: list[torch.optim.Optimizer]) -> str:
    """A small text table (optimizer, group, tensors, params, lr, wd) for the run log."""
    rows = [("optimizer", "group", "tensors", "params", "lr", "wd")]
    for opt in optimizers:
        for g in opt.param_groups:
            rows.append((type(opt).__name__, str(g.get("name", "?")), str(len(g["params"])),
                         f"{sum(p.numel() for p in g['params']):,}", f"{g['lr']:.4g}", f"{g.get('weight_decay', 0.0):.4g}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

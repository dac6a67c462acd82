"""Model weights without pickle: safetensors files, and a model rebuilt from a state dict.

A state dict is checked before use: every tensor the model has, with its shape, no unknown names,
and only finite values. The layer schedule the weights were trained for (depth recurrence on or
off) travels with them as metadata.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from pgolf.atomic import atomic_write_bytes
from pgolf.config import ModelConfig
from pgolf.errors import InputError
from pgolf.model.gpt import GPT

RECURRENCE_KEY = "recurrence_active"


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """safetensors written atomically, with ordinary file permissions."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(flat, metadata={k: str(v) for k, v in (metadata or {}).items()}))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        return st_load(path.read_bytes())
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise InputError(f"{path}: not a valid safetensors file ({e})") from None


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file ({} when it has none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise InputError(f"{path}: not a valid safetensors file ({e})") from None


def recurrence_flag(meta: dict) -> bool | None:
    """The saved recurrence state from weights or artifact metadata (None if not recorded)."""
    v = meta.get(RECURRENCE_KEY)
    return None if v is None else str(v) in ("1", "True", "true")


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights, detached, on the CPU."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    """InputError naming the first tensor with a NaN or inf."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InputError(f"{where}: tensor '{name}' has NaN or inf values (a diverged run?)")


def check_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """The state must hold exactly the model's tensors, with the same shapes, and be finite."""
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        raise InputError(f"{where}: weights do not match the config (missing {missing[:4]}, unexpected {unexpected[:4]})")
    for name, t in want.items():
        if tuple(state[name].shape) != tuple(t.shape):
            raise InputError(f"{where}: tensor '{name}' has shape {list(state[name].shape)}, "
                             f"the config's model needs {list(t.shape)}")
    check_finite(state, where)


def build_from_state(cfg: ModelConfig, state: dict[str, torch.Tensor], where: str,
                     recurrence: bool | None = None) -> GPT:
    """A model with these weights (fp32 masters). Recurrence as recorded; else on whenever the config
    schedules it to start before the end of training."""
    model = GPT(cfg)
    check_state(model, state, where)
    if recurrence is None:
        recurrence = cfg.recurrent and cfg.recur_start_frac < 1.0
    model.set_recurrence(recurrence)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model


def cast_embeddings(model: torch.nn.Module, dtype: torch.dtype) -> list[str]:
    """Store every nn.Embedding table in `dtype` (in place, same Parameter objects), as the records
    keep tok_emb and BigramHash tables in bf16 on the GPU; names of the tables cast."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Embedding):
            m.weight.data = m.weight.data.to(dtype)
            names.append(name)
    return names

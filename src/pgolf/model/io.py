"""Saving and loading model weights without pickle.

A run directory holds `config.json` (the resolved Config) and `model.safetensors` (the final,
pre-quantization weights; averaged weights when EMA/SWA is on). An artifact (`*.pgolf`) holds
quantized weights and the config in one container (pgolf.quant.container). `load_model` accepts
either and never unpickles.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pgolf.atomic import atomic_path, atomic_write_text
from pgolf.config import Config
from pgolf.errors import InputError
from pgolf.model.gpt import GPT

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ARTIFACT_SUFFIX = ".pgolf"
RECURRENCE_KEY = "recurrence_active"


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """safetensors written atomically (temp file + rename)."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file ({} when it has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise InputError(f"{path}: not a valid safetensors file ({e})") from None


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except Exception as e:
        raise InputError(f"{path}: not a valid safetensors file ({e})") from None


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters (and persistent buffers) with tied aliases removed."""
    return {k: v for k, v in model.state_dict().items()}


def save_run_model(run_dir: str | os.PathLike, model: GPT, cfg: Config,
                   state: dict[str, torch.Tensor] | None = None) -> Path:
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / CONFIG_FILE, cfg.to_json())
    # The layer schedule the weights were trained for travels with them (depth recurrence on/off).
    save_tensors(run_dir / WEIGHTS_FILE, state if state is not None else model_state(model),
                 metadata={RECURRENCE_KEY: int(model.recurrence_active)})
    return run_dir / WEIGHTS_FILE


def recurrence_flag(meta: dict) -> bool | None:
    """The saved recurrence state from weights metadata or artifact meta (None if not recorded)."""
    v = meta.get(RECURRENCE_KEY)
    return None if v is None else str(v) in ("1", "True", "true")


def load_config_file(path: str | os.PathLike) -> Config:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config.json not found (is this a pgolf run directory?)")
    try:
        return Config.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON ({e})") from None


def build_from_state(cfg: Config, state: dict[str, torch.Tensor], where: str,
                     recurrence: bool | None = None) -> GPT:
    """A model with these weights. Recurrence as recorded, else as the config schedules it
    (on whenever it was set to start before the end of training)."""
    model = GPT(cfg.model)
    if recurrence is None:
        recurrence = cfg.model.recur_start >= 0 and cfg.model.recur_start_frac < 1.0
    model.set_recurrence(recurrence)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"{where}: weights do not match the config "
                         f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    return model


def load_model(path: str | os.PathLike) -> tuple[GPT, Config, dict]:
    """Load from a run directory (pre-quant weights) or an artifact (dequantized weights).

    Returns (model in fp32 on CPU, config, info) where info says what was loaded.
    """
    path = Path(path)
    if path.is_dir():
        cfg = load_config_file(path / CONFIG_FILE)
        weights = path / WEIGHTS_FILE
        state = load_tensors(weights)
        rec = recurrence_flag(load_metadata(weights))
        return build_from_state(cfg, state, str(path), rec), cfg, {"source": "run", "path": str(path)}
    if path.is_file():
        from pgolf.quant.container import read_artifact  # container never unpickles

        tensors, config_dict, meta = read_artifact(path)
        try:
            cfg = Config.from_dict(config_dict)
        except Exception as e:
            raise InputError(f"{path}: artifact config is invalid ({e})") from None
        state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
        model = build_from_state(cfg, state, str(path), recurrence_flag(meta))
        return model, cfg, {"source": "artifact", "path": str(path), "meta": meta}
    raise InputError(f"{path}: neither a run directory nor an artifact file")

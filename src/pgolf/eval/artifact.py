"""A model from an artifact: the container's config and tensors alone rebuild what is scored."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from pgolf.config import Config
from pgolf.errors import ConfigError, InputError
from pgolf.model.gpt import GPT
from pgolf.model.weights import build_from_state, recurrence_flag
from pgolf.quant.container import MAGIC, Artifact, dequantize_all, parse_artifact

TOKENIZER_SHA_KEY = "tokenizer_sha256"


def config_of(art: Artifact, where: str) -> Config:
    """The artifact's config with its run's seed (metadata), which seeded methods (LoRA TTT) score with."""
    try:
        cfg = Config.from_dict(art.config)
        seed = art.meta.get("seed")
        return cfg.replace([f"train.seed={seed}"]) if type(seed) is int else cfg
    except ConfigError as e:
        raise InputError(f"{where}: artifact config is invalid ({e})") from None


def model_from_bytes(blob: bytes, where: str = "artifact") -> tuple[GPT, Config, dict]:
    """(fp32 model on the CPU, config, meta + sha256/bytes) from artifact bytes; never unpickles."""
    art = parse_artifact(blob, where)
    cfg = config_of(art, where)
    model = build_from_state(cfg.model, dequantize_all(art.tensors), where, recurrence_flag(art.meta))
    return model, cfg, dict(art.meta, sha256=art.sha256, bytes=art.bytes)


def load_artifact(path: str | os.PathLike) -> tuple[GPT, Config, dict]:
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read artifact ({e.strerror or e})") from None
    return model_from_bytes(blob, str(path))


def load_artifact_for(cfg: Config, path: str | os.PathLike) -> tuple[GPT, dict]:
    """The model in an artifact written for `cfg` (the record script's own recipe: nothing to parse
    but the tensors); (model, meta)."""
    path = Path(path)
    q = cfg.quant
    art = parse_artifact(path.read_bytes(), str(path), lqer=q.lqer_rank > 0, reorder=q.codec == "pergroup",
                         lowbit=q.packs_low_bits)
    model = build_from_state(cfg.model, dequantize_all(art.tensors), str(path), recurrence_flag(art.meta))
    return model, dict(art.meta, sha256=art.sha256, bytes=art.bytes)


def is_artifact(path: str | os.PathLike) -> bool:
    """True when the file starts with the artifact magic."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def dequantized_model(cfg: Config, quantized: dict, where: str, recurrence: bool | None) -> GPT:
    """The model the exported tensors rebuild (for measuring a packing choice before writing it)."""
    state = dequantize_all(quantized)
    return build_from_state(cfg.model, {k: v.to(torch.float32) if v.is_floating_point() else v
                                        for k, v in state.items()}, where, recurrence)

"""Shared helpers for the trainer tests: tiny configs and small shard dirs made in tmp_path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pgolf.config import Config, load_config
from pgolf.data.shards import read_shard, write_shard

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKENIZER = SHARED / "data" / "tokenizers" / "fineweb_1024_bpe.model"
VAL_SHARD = SHARED / "data" / "fineweb" / "sp1024" / "fineweb_val_000000.bin"


def require_shared() -> None:
    if not (TOKENIZER.is_file() and VAL_SHARD.is_file()):
        pytest.skip(f"shared offline data not found under {SHARED} (tokenizer + sp1024 val shard needed)")


def tiny_overrides(**extra) -> list[str]:
    """d=64, 2 layers, seq 64, vocab 1024, step-based schedule on CPU."""
    base = {
        "model.num_layers": 2, "model.model_dim": 64, "model.num_heads": 2, "model.num_kv_heads": 1,
        "train.seq_len": 64, "train.micro_batch_tokens": 256, "train.batch_tokens": 256,
        "model.bigram_buckets": 0, "train.warmdown_frac": 0.0,  # independent of how tiny.toml is tuned
        "train.max_steps": 8, "train.max_seconds": 0, "train.warmup_steps": 0, "train.warmdown_iters": 4,
        "train.val_every": 0, "train.val_tokens": 2048, "train.log_every": 1, "train.device": "cpu",
        "train.compile": "off", "eval.max_tokens": 2048, "data.prefetch": 0,
        "data.tokenizer": str(TOKENIZER),
    }
    base.update(extra)
    out = []
    for k, v in base.items():
        if isinstance(v, str) and not v.startswith("["):
            v = f'"{v}"'
        elif isinstance(v, bool):
            v = str(v).lower()
        out.append(f"{k}={v}")
    return out


def tiny_config(**extra) -> Config:
    return load_config("tiny", tiny_overrides(**extra))


def make_real_data(root: Path, train_tokens: int = 120_000, val_tokens: int = 8_192) -> Path:
    """Real sp1024 FineWeb tokens: the head of the shared val shard as TRAIN, its tail as VAL."""
    require_shared()
    toks = np.asarray(read_shard(VAL_SHARD), dtype=np.int64)
    d = root / "data"
    write_shard(d / "fineweb_train_000000.bin", toks[:train_tokens])
    write_shard(d / "fineweb_val_000000.bin", toks[-val_tokens:])
    return d


def make_fixed_batch_data(root: Path, span: int, seed: int = 0) -> Path:
    """A train shard that is one random span repeated: the sequential loader yields the same batch
    every step (span = micro_batch_tokens + 1)."""
    require_shared()
    rng = np.random.default_rng(seed)
    pattern = rng.integers(2, 1024, size=span)
    d = root / "fixed"
    write_shard(d / "fineweb_train_000000.bin", np.tile(pattern, 64))
    toks = np.asarray(read_shard(VAL_SHARD), dtype=np.int64)
    write_shard(d / "fineweb_val_000000.bin", toks[:4096])
    return d


def read_metrics(run: Path) -> list[dict]:
    from pgolf.atomic import read_jsonl

    return read_jsonl(Path(run) / "metrics.jsonl")


def trainer_for(cfg: Config, data_dir: Path):
    """A Trainer on a shard dir, as `pgolf train` builds one (no outputs written)."""
    from pgolf import runtime
    from pgolf.data.tokenizer import byte_tables, load_tokenizer
    from pgolf.data.shards import list_shards
    from pgolf.pipeline.job import train_data
    from pgolf.train.trainer import Trainer

    proc = runtime.setup("cpu")
    data, _, _ = train_data(cfg, Path(data_dir), byte_tables(load_tokenizer(TOKENIZER)), proc.device,
                            list_shards(data_dir, "train"))
    return Trainer(cfg, data, None, proc, progress=False)

"""Typed configuration tree, TOML recipes and dotted overrides.

A run is described by one `Config`: data, model, optim, train, quant, eval. Recipes are TOML files
(``src/pgolf/recipes/NAME.toml``) that set fields; ``extends = "other"`` inherits another recipe.
``--set model.num_layers=11`` overrides a field. Every value is validated with an error that names
the field, and the whole tree round-trips through JSON (stored in run dirs and artifacts).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_DIR = Path(__file__).parent / "recipes"


class ConfigError(ValueError):
    """Bad configuration; the message names the field."""


@dataclass
class DataConfig:
    path: str = ""  # shard dir with fineweb_{train,val}_*.bin (empty: given on the command line)
    tokenizer: str = ""  # SentencePiece .model; needed for val_bpb byte tables
    loader: str = "sequential"  # sequential (baseline stream) | shuffled (per-rank random sequences)
    prefetch: int = 2  # batches prepared ahead in a background thread (0 = none)


@dataclass
class ModelConfig:
    vocab_size: int = 1024
    num_layers: int = 9
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: float = 2.0
    activation: str = "relu2"  # relu2 | leaky_relu2 | swiglu
    leaky_slope: float = 0.5
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005
    logit_softcap: float = 30.0  # 0 disables
    rope_base: float = 10000.0
    rope_dims: int = 0  # rotary dims per head; 0 = all head dims (partial RoPE: e.g. 16 of 64)
    rope_train_len: int = 0  # NTK scaling: when >0 and eval length exceeds it, stretch the base
    qk_gain_init: float = 1.5
    xsa_last_n: int = 0  # exclusive self-attention on the last N layers; -1 = all layers
    ln_scale: bool = False  # scale each block's norm output by 1/sqrt(layer_index + 1)
    unet_skips: bool = True
    skip_gates: bool = False  # sigmoid-gated skips: x = lerp(w * skip, x, sigmoid(g))
    smear_gate: str = "none"  # none | v1 | v2 (previous-token blend, masked at BOS)
    bigram_buckets: int = 0  # BigramHash buckets (0 = off)
    bigram_dim: int = 128
    bigram_scale_init: float = 0.05
    ortho_init: bool = False
    value_embed_layers: int = 0  # value embeddings added to V in the last N layers (0 = off)
    value_embed_dim: int = 128
    recur_start: int = -1  # depth recurrence: re-run blocks [recur_start, recur_end] (inclusive)
    recur_end: int = -1
    recur_repeats: int = 1  # extra passes over the range
    recur_start_frac: float = 0.5  # fraction of the time budget after which recurrence switches on
    parallel_from: int = -1  # parallel residual lanes from this layer on (-1 = off)
    attn_out_gate: bool = False  # per-head sigmoid gate on attention output (zero-init)
    bos_id: int = 1

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.mlp_mult * self.model_dim))


@dataclass
class OptimConfig:
    matrix_lr: float = 0.04  # Muon
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    muon_nesterov: bool = True
    muon_ns_steps: int = 5
    muon_ns_coeffs: str = "fixed"  # fixed (3.4445,-4.7750,2.0315) | polar_express
    muon_eq_r: bool = False  # MuonEq-R: row-normalize the update before Newton-Schulz
    muon_wd: float = 0.0
    embed_lr: float = 0.05  # tied embedding (Adam)
    head_lr: float = 0.008  # untied lm_head (Adam)
    scalar_lr: float = 0.04  # scalars / control tensors / small params (Adam)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    embed_wd: float = 0.0  # AdamW decoupled WD on embeddings
    scalar_wd: float = 0.0
    grad_clip: float = 0.0  # global norm; 0 = off
    ema_decay: float = 0.0  # EMA of weights every step (0 = off); exported when on
    swa_every: int = 0  # SWA: average a snapshot every N steps (0 = off)
    swa_start_frac: float = 0.6  # ...once this fraction of the time budget has passed


@dataclass
class TrainConfig:
    seed: int = 1337
    seq_len: int = 1024
    batch_tokens: int = 524_288  # global tokens per optimizer step
    micro_batch_tokens: int = 65_536  # tokens per forward on one rank; accumulation fills the rest
    max_seconds: float = 600.0  # wall-clock training cap (validation and warm-up excluded); 0 = none
    max_steps: int = 20_000
    warmup_steps: int = 20  # compile warm-up steps; weights and optimizer state restored afterwards
    warmdown_iters: int = 1200  # linear LR warmdown over the last N steps (estimated by wall-clock)
    warmdown_frac: float = 0.0  # when > 0: warmdown over this fraction of the time budget instead
    min_lr_frac: float = 0.0  # LR floor as a fraction of the peak
    val_every: int = 1000  # steps between validations (0 = only at the end)
    val_tokens: int = 0  # cap on validation tokens during training (0 = all)
    log_every: int = 50
    checkpoint_every: int = 0  # steps between checkpoints (0 = only at the end / on signal)
    device: str = "auto"  # auto | cpu | cuda
    compile: str = "auto"  # auto (on for CUDA) | on | off
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    gptq_reserve_seconds: float = 0.0  # time kept back inside max_seconds for GPTQ calibration


@dataclass
class QuantGroup:
    pattern: str = "*"  # fnmatch on the parameter name
    bits: int = 8  # 2..8 int, 16 = fp16 passthrough, 32 = fp32 passthrough
    clip: str = "percentile"  # percentile | mse | sdclip
    clip_value: float = 99.99984  # percentile, or k for sdclip
    gptq: bool = False
    min_scale: float = -1.0  # per-row scale floor: -1 = 1/qmax (baseline, PR #493), 0 = tiny, >0 = value


@dataclass
class QuantConfig:
    groups: list[QuantGroup] = field(default_factory=lambda: [QuantGroup()])
    small_tensor_numel: int = 65_536  # tensors with at most this many elements stay float
    small_dtype: str = "fp16"  # fp16 | fp32 for small float tensors
    control_patterns: list[str] = field(
        default_factory=lambda: ["*scale*", "*mix*", "*gain*", "*skip*", "*gate*", "*lambda*"]
    )  # kept fp32
    codec: str = "zlib"  # zlib | zstd | lzma | brotli | auto (smallest)
    byte_shuffle: bool = False
    gptq_calib: str = "train"  # train | self (autoregressive samples)
    gptq_batches: int = 64
    gptq_seq_len: int = 2048
    gptq_temperature: float = 0.8
    gptq_damp: float = 0.01
    gptq_block: int = 128
    qat: str = "off"  # off | full | late
    qat_lr_threshold: float = 0.15  # late QAT switches on once the LR scale drops below this
    lqer_rank: int = 0
    lqer_bits: int = 4
    lqer_top: int = 0  # how many tensors get a correction (largest errors first)
    target_bytes: int = 16_000_000
    code_compress: str = "lzma"  # none | lzma | brotli: wrapper of the counted train_gpt.py (code bytes)
    auto_fit: bool = False  # raise clip / prune +-1 values until the artifact fits


@dataclass
class EvalConfig:
    method: str = "plain"  # plain | sliding | docs | ttt-sgd | ttt-lora | phased
    seq_len: int = 0  # 0 = train.seq_len
    stride: int = 64  # sliding window stride
    batch_seqs: int = 32
    doc_isolated: bool = False
    max_tokens: int = 0  # evaluate only the first N val tokens (0 = all); reported in the output
    time_limit: float = 600.0
    enforce_time_limit: bool = False  # fail instead of warn when over the limit
    ttt_chunk_tokens: int = 32_768
    ttt_lr: float = 0.005
    ttt_momentum: float = 0.9
    ttt_epochs: int = 3
    ttt_grad_clip: float = 1.0
    ttt_batch_seqs: int = 32
    ttt_freeze_blocks: int = 0
    lora_rank: int = 8
    lora_targets: list[str] = field(default_factory=lambda: ["q", "v"])
    lora_chunk: int = 256
    lora_lr: float = 0.05
    lora_optimizer: str = "adam"
    lora_batch_docs: int = 64
    phased_points: list[float] = field(default_factory=lambda: [0.5])  # fractions of docs
    audit_tokens: int = 8192  # `pgolf run` audits its eval method on this many val tokens (0 = skip)


@dataclass
class Config:
    name: str = "custom"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        cfg = _build(cls, d, "")
        validate(cfg)
        return cfg


# ---------------------------------------------------------------------------------------------
# building from dicts, with errors that name the field

def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, str) and item_tp is not dict and not dataclasses.is_dataclass(item_tp):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _build(cls: type, d: dict, prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in d.items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"unknown config field '{where}' (known here: {known})")
        kwargs[key] = _coerce(value, hints[key], where)
    return cls(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# recipes

def recipe_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    q = RECIPE_DIR / f"{name_or_path}.toml"
    if q.exists():
        return q
    known = ", ".join(sorted(x.stem for x in RECIPE_DIR.glob("*.toml")))
    raise ConfigError(f"recipe '{name_or_path}' not found (a .toml path or one of: {known})")


def recipe_dict(name_or_path: str, _seen: tuple = ()) -> dict:
    path = recipe_path(name_or_path)
    if str(path) in _seen:
        raise ConfigError(f"recipe {path}: 'extends' forms a cycle")
    try:
        d = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe {path}: invalid TOML: {e}") from None
    parent = d.pop("extends", None)
    d.setdefault("name", path.stem)
    if parent:
        base = recipe_dict(parent, _seen + (str(path),))
        base.pop("name", None)
        base.pop("description", None)
        d = _merge(base, d)
    return d


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. model.num_layers=11")
    key, raw = text.split("=", 1)
    raw = raw.strip()
    try:  # TOML scalars and arrays: 11, 0.5, true, "x", [1, 2]
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    d = json.loads(json.dumps(d))
    for text in overrides or []:
        path, value = parse_override(text)
        node = d
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return d


def load_config(recipe: str | None = None, overrides: list[str] | None = None) -> Config:
    d = recipe_dict(recipe) if recipe else {}
    d = apply_overrides(d, overrides or [])
    return Config.from_dict(d)


# ---------------------------------------------------------------------------------------------
# validation

def _check(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}")


def validate(cfg: Config) -> None:
    m, t, o, q, e = cfg.model, cfg.train, cfg.optim, cfg.quant, cfg.eval
    _check(m.vocab_size >= 8, "model.vocab_size", f"must be >= 8, got {m.vocab_size}")
    _check(m.vocab_size <= 65536, "model.vocab_size", "must fit uint16 shards (<= 65536)")
    _check(m.num_layers >= 1, "model.num_layers", f"must be >= 1, got {m.num_layers}")
    _check(m.num_heads >= 1 and m.model_dim % m.num_heads == 0, "model.num_heads",
           f"must divide model.model_dim={m.model_dim}, got {m.num_heads}")
    _check(m.head_dim % 2 == 0, "model.model_dim", "head_dim (model_dim/num_heads) must be even for RoPE")
    _check(m.num_kv_heads >= 1 and m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads",
           f"must divide model.num_heads={m.num_heads}, got {m.num_kv_heads}")
    _check(m.mlp_mult > 0, "model.mlp_mult", f"must be > 0, got {m.mlp_mult}")
    _check(m.activation in ("relu2", "leaky_relu2", "swiglu"), "model.activation",
           f"expected relu2 | leaky_relu2 | swiglu, got '{m.activation}'")
    _check(0 <= m.rope_dims <= m.head_dim and m.rope_dims % 2 == 0, "model.rope_dims",
           f"must be an even number in [0, head_dim={m.head_dim}], got {m.rope_dims}")
    _check(m.xsa_last_n >= -1 and m.xsa_last_n <= m.num_layers, "model.xsa_last_n",
           f"must be -1 (all) or 0..num_layers, got {m.xsa_last_n}")
    _check(m.smear_gate in ("none", "v1", "v2"), "model.smear_gate", f"expected none | v1 | v2, got '{m.smear_gate}'")
    _check(m.bigram_buckets == 0 or m.bigram_buckets >= 2, "model.bigram_buckets",
           f"must be 0 (off) or >= 2 (one bucket is reserved for document starts), got {m.bigram_buckets}")
    _check(m.bigram_dim >= 1, "model.bigram_dim", f"must be >= 1, got {m.bigram_dim}")
    _check(0 <= m.value_embed_layers <= m.num_layers, "model.value_embed_layers", "must be in 0..num_layers")
    _check(m.value_embed_dim >= 1, "model.value_embed_dim", f"must be >= 1, got {m.value_embed_dim}")
    _check(m.rope_train_len >= 0, "model.rope_train_len", f"must be >= 0, got {m.rope_train_len}")
    _check(m.rope_base > 0, "model.rope_base", f"must be > 0, got {m.rope_base}")
    # SmearGate v2 and the attention output gate read the first 12 channels of the input.
    if m.smear_gate == "v2" or m.attn_out_gate:
        _check(m.model_dim >= 12, "model.model_dim", f"must be >= 12 for smear_gate v2 / attn_out_gate, got {m.model_dim}")
    if m.recur_start >= 0 or m.recur_end >= 0:
        _check(0 <= m.recur_start <= m.recur_end < m.num_layers, "model.recur_start",
               f"need 0 <= recur_start <= recur_end < num_layers, got {m.recur_start}..{m.recur_end}")
        _check(m.recur_repeats >= 1, "model.recur_repeats", "must be >= 1")
        _check(0.0 <= m.recur_start_frac <= 1.0, "model.recur_start_frac", "must be in [0, 1]")
    _check(m.parallel_from == -1 or 0 <= m.parallel_from < m.num_layers, "model.parallel_from",
           "must be -1 or a layer index")
    _check(m.logit_softcap >= 0, "model.logit_softcap", "must be >= 0")

    _check(t.seq_len >= 2, "train.seq_len", f"must be >= 2, got {t.seq_len}")
    _check(t.micro_batch_tokens > 0 and t.micro_batch_tokens % t.seq_len == 0, "train.micro_batch_tokens",
           f"must be a positive multiple of train.seq_len={t.seq_len}, got {t.micro_batch_tokens}")
    _check(t.batch_tokens > 0 and t.batch_tokens % t.micro_batch_tokens == 0, "train.batch_tokens",
           f"must be a positive multiple of train.micro_batch_tokens={t.micro_batch_tokens}, got {t.batch_tokens}")
    _check(t.max_seconds >= 0, "train.max_seconds", "must be >= 0")
    _check(t.max_steps >= 1, "train.max_steps", "must be >= 1")
    _check(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
    _check(0.0 <= t.warmdown_frac < 1.0, "train.warmdown_frac", "must be in [0, 1)")
    _check(0.0 <= t.min_lr_frac <= 1.0, "train.min_lr_frac", "must be in [0, 1]")
    _check(t.device in ("auto", "cpu", "cuda"), "train.device", f"expected auto | cpu | cuda, got '{t.device}'")
    _check(t.compile in ("auto", "on", "off"), "train.compile", f"expected auto | on | off, got '{t.compile}'")
    _check(t.dtype in ("auto", "bf16", "fp32"), "train.dtype", f"expected auto | bf16 | fp32, got '{t.dtype}'")

    for name in ("matrix_lr", "embed_lr", "head_lr", "scalar_lr"):
        _check(getattr(o, name) >= 0, f"optim.{name}", "must be >= 0")
    _check(0 <= o.muon_momentum < 1, "optim.muon_momentum", "must be in [0, 1)")
    _check(o.muon_ns_coeffs in ("fixed", "polar_express"), "optim.muon_ns_coeffs",
           f"expected fixed | polar_express, got '{o.muon_ns_coeffs}'")
    _check(0 <= o.ema_decay < 1, "optim.ema_decay", "must be in [0, 1)")
    _check(not (o.ema_decay > 0 and o.swa_every > 0), "optim.swa_every", "EMA and SWA are exclusive; pick one")

    for i, g in enumerate(q.groups):
        _check(2 <= g.bits <= 8 or g.bits in (16, 32), f"quant.groups[{i}].bits",
               f"expected 2..8, 16 or 32, got {g.bits}")
        _check(g.clip in ("percentile", "mse", "sdclip"), f"quant.groups[{i}].clip",
               f"expected percentile | mse | sdclip, got '{g.clip}'")
        if g.clip == "percentile":
            _check(0.0 < g.clip_value <= 100.0, f"quant.groups[{i}].clip_value",
                   f"percentile must be in (0, 100], got {g.clip_value}")
        if g.clip == "sdclip":
            _check(g.clip_value > 0.0, f"quant.groups[{i}].clip_value", f"sdclip k must be > 0, got {g.clip_value}")
        _check(g.min_scale == -1.0 or g.min_scale >= 0.0, f"quant.groups[{i}].min_scale",
               f"expected -1 (1/qmax), 0 (tiny) or a positive floor, got {g.min_scale}")
    _check(q.small_tensor_numel >= 0, "quant.small_tensor_numel", "must be >= 0")
    _check(2 <= q.lqer_bits <= 8, "quant.lqer_bits", f"expected 2..8, got {q.lqer_bits}")
    _check(q.lqer_rank >= 0 and q.lqer_top >= 0, "quant.lqer_rank", "lqer_rank and lqer_top must be >= 0")
    _check(q.gptq_block >= 1, "quant.gptq_block", "must be >= 1")
    _check(q.gptq_damp > 0, "quant.gptq_damp", "must be > 0")
    _check(q.target_bytes > 0, "quant.target_bytes", "must be > 0")
    _check(q.codec in ("zlib", "zstd", "lzma", "brotli", "auto"), "quant.codec",
           f"expected zlib | zstd | lzma | brotli | auto, got '{q.codec}'")
    _check(q.small_dtype in ("fp16", "fp32"), "quant.small_dtype", "expected fp16 | fp32")
    _check(q.qat in ("off", "full", "late"), "quant.qat", f"expected off | full | late, got '{q.qat}'")
    _check(q.code_compress in ("none", "lzma", "brotli"), "quant.code_compress",
           f"expected none | lzma | brotli, got '{q.code_compress}'")
    _check(q.gptq_calib in ("train", "self"), "quant.gptq_calib", "expected train | self")

    methods = ("plain", "sliding", "docs", "ttt-sgd", "ttt-lora", "phased")
    _check(e.method in methods, "eval.method", f"expected one of {' | '.join(methods)}, got '{e.method}'")
    _check(e.stride >= 1, "eval.stride", "must be >= 1")
    _check(e.batch_seqs >= 1, "eval.batch_seqs", "must be >= 1")
    _check(e.max_tokens >= 0, "eval.max_tokens", "must be >= 0")
    _check(e.audit_tokens >= 0, "eval.audit_tokens", "must be >= 0")

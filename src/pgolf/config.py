"""Typed configuration tree, TOML recipes and dotted overrides.

A run is described by one frozen `Config`: data, model, optim, train, quant, eval. Every field has a
type (choices are `Literal`s: the one list of allowed values), a default and a one-line doc; each
section checks itself (`check`), and `Config.check` adds the checks that span sections. Recipes are
TOML files (`src/pgolf/recipes/NAME.toml`) that set fields; `extends = "other"` inherits another
recipe; `--set model.num_layers=11` overrides a field. Errors name the dotted field. A Config never
changes after it is built: values resolved at run time (data dir, device, ...) live elsewhere.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from pgolf.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_DIR = Path(__file__).parent / "recipes"
ARTIFACT_LIMIT = 16_000_000  # bytes: code + compressed model must stay strictly below (decimal, not MiB)
BOS_ID = 1  # the challenge's document delimiter (every doc is [BOS] + tokens)

Activation = Literal["relu2", "leaky_relu2", "swiglu"]
SmearGate = Literal["none", "v1", "v2"]
BigramInit = Literal["record", "normal"]
DocAttention = Literal["dense", "flex"]
LqerForm = Literal["pgolf", "record", "asym"]
PhasedOrder = Literal["stream", "longest"]
PhasedSgd = Literal["pgolf", "record"]
LoraInit = Literal["pgolf", "record"]
DType2 = Literal["fp32", "bf16"]
Loader = Literal["sequential", "packed", "shuffled"]
NsCoeffs = Literal["fixed", "polar_express"]
Device = Literal["auto", "cpu", "cuda"]
Switch = Literal["auto", "on", "off"]
DType = Literal["auto", "bf16", "fp32"]
Clip = Literal["percentile", "mse", "sdclip"]
Codec = Literal["zlib", "zstd", "lzma", "brotli", "auto", "pergroup"]
GroupCodec = Literal["zlib", "zstd", "lzma", "brotli", "ppmd", "zpaq"]
SmallDType = Literal["fp16", "fp32"]
Qat = Literal["off", "full", "late"]
CodeCompress = Literal["none", "lzma", "brotli", "zpaq", "auto"]
GptqCalib = Literal["train", "self"]
EvalMethod = Literal["plain", "sliding", "docs", "ttt-sgd", "ttt-lora", "phased"]
LoraTarget = Literal["q", "k", "v", "o", "mlp", "lm_head"]
LoraOptimizer = Literal["adam", "sgd"]


def choices(section: type, name: str) -> tuple[str, ...]:
    """The allowed values of a Literal-typed field, e.g. choices(EvalConfig, "method")."""
    tp = get_type_hints(section)[name]
    if get_origin(tp) is tuple:
        tp = get_args(tp)[0]
    return tuple(get_args(tp))


def knob(default: Any, doc: str) -> Any:
    """A field with its default and one-line doc (dataclasses.fields(...).metadata["doc"])."""
    return field(default=default, metadata={"doc": doc})


def need(cond: bool, where: str, msg: str) -> None:
    """ConfigError('where: msg') unless cond."""
    if not cond:
        raise ConfigError(f"{where}: {msg}")


@dataclass(frozen=True)
class DataConfig:
    path: str = knob("", "shard dir with fineweb_{train,val}_*.bin; empty: given on the command line")
    tokenizer: str = knob("", "SentencePiece .model; empty: the one the shard dir's manifest names")
    loader: Loader = knob("sequential", "sequential (the baseline stream), packed (the records' one row per "
                          "rank from a document start, with train.doc_isolated) or shuffled (per-rank random "
                          "sequences)")
    prefetch: int = knob(2, "batches prepared ahead in a background thread (0 = none)")
    caseops: bool = knob(False, "CaseOps data: corpora are transformed when tokenized, and the val split "
                         "must carry its byte sidecar (pgolf.data.caseops)")

    def check(self, where: str = "data") -> None:
        need(self.prefetch >= 0, f"{where}.prefetch", f"must be >= 0, got {self.prefetch}")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = knob(1024, "tokenizer vocabulary size (ids must fit uint16 shards)")
    num_layers: int = knob(9, "transformer blocks (physical; recurrence revisits some)")
    model_dim: int = knob(512, "residual stream width")
    num_heads: int = knob(8, "query heads")
    num_kv_heads: int = knob(4, "key/value heads (GQA); must divide num_heads")
    mlp_mult: float = knob(2.0, "MLP hidden width as a multiple of model_dim")
    activation: Activation = knob("relu2", "MLP nonlinearity")
    leaky_slope: float = knob(0.5, "negative slope of leaky_relu2")
    tie_embeddings: bool = knob(True, "the head reuses the token embedding")
    tied_embed_init_std: float = knob(0.005, "init std of the tied embedding")
    logit_softcap: float = knob(30.0, "logits = c * tanh(z / c); 0 disables")
    rope_base: float = knob(10000.0, "RoPE base frequency")
    rope_dims: int = knob(0, "rotary dims per head; 0 = all (partial RoPE: e.g. 16 of 64)")
    rope_train_len: int = knob(0, "NTK scaling: stretch the base for sequences longer than this (0 = off)")
    qk_gain_init: float = knob(1.5, "initial per-head gain on the normed queries")
    xsa_last_n: int = knob(0, "exclusive self-attention on the last N layers; -1 = all")
    ln_scale: bool = knob(False, "scale each block's norm output by 1/sqrt(layer + 1)")
    unet_skips: bool = knob(True, "encoder outputs are added back in the decoder (U-Net)")
    skip_gates: bool = knob(False, "sigmoid-gated skips: x = lerp(w * skip, x, sigmoid(g))")
    smear_gate: SmearGate = knob("none", "previous-token blend: v1 per-dim gate, v2 input-dependent gate")
    bigram_buckets: int = knob(0, "BigramHash buckets (0 = off)")
    bigram_dim: int = knob(128, "BigramHash table width")
    bigram_scale_init: float = knob(0.05, "initial BigramHash output scale")
    bigram_init: BigramInit = knob("record", "record: zero table, orthogonal projection / sqrt(2 * layers) "
                                   "(PR #493); normal: N(0, 0.02) table, zero projection")
    prev_token_bos_mask: bool = knob(False, "SmearGate and BigramHash see no previous token at a BOS (pgolf's "
                                     "fix; the records mix documents there). Doc-isolated eval always masks")
    ortho_init: bool = knob(False, "orthogonal init of matrices with both sides >= 64")
    value_embed_layers: int = knob(0, "value embeddings added to V in the last N layers (0 = off)")
    value_embed_dim: int = knob(128, "value-embedding table width")
    recur_start: int = knob(-1, "depth recurrence: first block of the repeated range (-1 = off)")
    recur_end: int = knob(-1, "depth recurrence: last block of the repeated range (inclusive)")
    recur_repeats: int = knob(1, "extra passes over the repeated range")
    recur_start_frac: float = knob(0.5, "fraction of the training budget after which recurrence switches on")
    parallel_from: int = knob(-1, "parallel residual lanes from this layer on (-1 = off)")
    attn_out_gate: bool = knob(False, "per-head sigmoid gate on the attention output (zero-init)")
    doc_attention: DocAttention = knob("dense", "doc-isolated attention: a dense mask through SDPA, or "
                                       "FlexAttention with a block mask (skips blocks across documents)")
    sparse_attn_gate: bool = knob(False, "per-head gate sigmoid(scale * W x[:12]) on the attention output, "
                                  "W zero-init (PR #1855; starts at 0.5)")
    sparse_attn_gate_scale: float = knob(1.0, "the sparse attention gate's pre-sigmoid scale")
    doc_segment_len: int = knob(0, "doc-isolated attention also cuts each document every this many tokens "
                                "from its start (the records' varlen max_doc_len); 0 = no cut")
    bos_id: int = knob(BOS_ID, "document delimiter token id")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.mlp_mult * self.model_dim))

    @property
    def recurrent(self) -> bool:
        return self.recur_start >= 0

    def check(self, where: str = "model") -> None:
        w = where
        need(8 <= self.vocab_size <= 65536, f"{w}.vocab_size", f"must be in 8..65536 (uint16 shards), got {self.vocab_size}")
        need(self.num_layers >= 1, f"{w}.num_layers", f"must be >= 1, got {self.num_layers}")
        need(self.num_heads >= 1 and self.model_dim % self.num_heads == 0, f"{w}.num_heads",
              f"must divide model_dim={self.model_dim}, got {self.num_heads}")
        need(self.head_dim % 2 == 0, f"{w}.model_dim", "head_dim (model_dim/num_heads) must be even for RoPE")
        need(self.num_kv_heads >= 1 and self.num_heads % self.num_kv_heads == 0, f"{w}.num_kv_heads",
              f"must divide num_heads={self.num_heads}, got {self.num_kv_heads}")
        need(self.mlp_mult > 0, f"{w}.mlp_mult", f"must be > 0, got {self.mlp_mult}")
        need(0 <= self.rope_dims <= self.head_dim and self.rope_dims % 2 == 0, f"{w}.rope_dims",
              f"must be an even number in [0, head_dim={self.head_dim}], got {self.rope_dims}")
        need(-1 <= self.xsa_last_n <= self.num_layers, f"{w}.xsa_last_n",
              f"must be -1 (all) or 0..num_layers, got {self.xsa_last_n}")
        need(self.bigram_buckets == 0 or self.bigram_buckets >= 2, f"{w}.bigram_buckets",
              f"must be 0 (off) or >= 2 (one bucket is reserved for document starts), got {self.bigram_buckets}")
        need(self.bigram_dim >= 1, f"{w}.bigram_dim", f"must be >= 1, got {self.bigram_dim}")
        need(0 <= self.value_embed_layers <= self.num_layers, f"{w}.value_embed_layers",
              f"must be in 0..num_layers, got {self.value_embed_layers}")
        need(self.value_embed_dim >= 1, f"{w}.value_embed_dim", f"must be >= 1, got {self.value_embed_dim}")
        need(self.rope_train_len >= 0, f"{w}.rope_train_len", f"must be >= 0, got {self.rope_train_len}")
        need(self.rope_base > 0, f"{w}.rope_base", f"must be > 0, got {self.rope_base}")
        need(self.logit_softcap >= 0, f"{w}.logit_softcap", f"must be >= 0, got {self.logit_softcap}")
        if self.smear_gate == "v2" or self.attn_out_gate or self.sparse_attn_gate:  # read the first 12 channels
            need(self.model_dim >= 12, f"{w}.model_dim",
                 f"must be >= 12 for smear_gate v2 / attn_out_gate / sparse_attn_gate, got {self.model_dim}")
        need(not (self.attn_out_gate and self.sparse_attn_gate), f"{w}.sparse_attn_gate",
             "attn_out_gate and sparse_attn_gate are exclusive; pick one")
        if self.recur_start >= 0 or self.recur_end >= 0:
            need(0 <= self.recur_start <= self.recur_end < self.num_layers, f"{w}.recur_start",
                  f"need 0 <= recur_start <= recur_end < num_layers, got {self.recur_start}..{self.recur_end}")
            need(self.recur_repeats >= 1, f"{w}.recur_repeats", f"must be >= 1, got {self.recur_repeats}")
            need(0.0 <= self.recur_start_frac <= 1.0, f"{w}.recur_start_frac", f"must be in [0, 1], got {self.recur_start_frac}")
        need(self.parallel_from == -1 or 0 <= self.parallel_from < self.num_layers, f"{w}.parallel_from",
              f"must be -1 or a layer index < {self.num_layers}, got {self.parallel_from}")
        need(0 <= self.bos_id < self.vocab_size, f"{w}.bos_id", f"must be a token id < vocab_size, got {self.bos_id}")
        need(self.doc_segment_len >= 0, f"{w}.doc_segment_len", f"must be >= 0, got {self.doc_segment_len}")


@dataclass(frozen=True)
class OptimConfig:
    matrix_lr: float = knob(0.04, "Muon learning rate (2-D block matrices)")
    muon_momentum: float = knob(0.95, "Muon momentum after warm-up")
    muon_momentum_warmup_start: float = knob(0.85, "Muon momentum at step 0")
    muon_momentum_warmup_steps: int = knob(500, "steps of linear momentum warm-up")
    muon_nesterov: bool = knob(True, "Nesterov momentum in Muon")
    muon_ns_steps: int = knob(5, "Newton-Schulz iterations")
    muon_ns_coeffs: NsCoeffs = knob("fixed", "fixed quintic (3.4445, -4.7750, 2.0315) or Polar Express tuples")
    muon_eq_r: bool = knob(False, "MuonEq-R: unit-norm rows of the update before Newton-Schulz")
    muon_ns_safety: float = knob(-1.0, "Newton-Schulz input X / ((1 + m) ||X||_F): m; -1 = the coefficient "
                                 "set's own (0.02 for polar_express as in modded-nanogpt, 0 for fixed)")
    muon_momentum_dtype: DType2 = knob("fp32", "Muon momentum and Nesterov update dtype on CUDA (PR #1855 casts "
                                       "each gradient to bf16 first); CPU keeps fp32")
    muon_wd: float = knob(0.0, "Muon decoupled weight decay: p *= 1 - lr * wd")
    embed_lr: float = knob(0.05, "Adam learning rate of the (tied) embedding")
    head_lr: float = knob(0.008, "Adam learning rate of an untied lm_head")
    scalar_lr: float = knob(0.04, "Adam learning rate of scalars, control tensors and small matrices")
    adam_beta1: float = knob(0.9, "Adam beta1")
    adam_beta2: float = knob(0.95, "Adam beta2")
    adam_eps: float = knob(1e-8, "Adam epsilon")
    embed_wd: float = knob(0.0, "AdamW decoupled weight decay on embeddings")
    scalar_wd: float = knob(0.0, "AdamW decoupled weight decay on scalars")
    grad_clip: float = knob(0.0, "global gradient-norm clip (0 = off)")
    frozen: tuple[str, ...] = knob((), "globs of parameter names kept at their init, in no optimizer")
    ema_decay: float = knob(0.0, "EMA of the weights every step (0 = off); exported when on")
    ema_from_init: bool = knob(True, "the EMA starts from the initial weights (the records); false: from step 1's")
    swa_every: int = knob(0, "SWA: average a snapshot every N steps (0 = off)")
    swa_start_frac: float = knob(0.6, "SWA starts once this fraction of the budget has passed")

    def check(self, where: str = "optim") -> None:
        for name in ("matrix_lr", "embed_lr", "head_lr", "scalar_lr", "muon_wd", "embed_wd", "scalar_wd", "grad_clip"):
            need(getattr(self, name) >= 0, f"{where}.{name}", f"must be >= 0, got {getattr(self, name)}")
        for name in ("muon_momentum", "muon_momentum_warmup_start", "adam_beta1", "adam_beta2"):
            need(0 <= getattr(self, name) < 1, f"{where}.{name}", f"must be in [0, 1), got {getattr(self, name)}")
        need(self.muon_momentum_warmup_steps >= 0, f"{where}.muon_momentum_warmup_steps", "must be >= 0")
        need(self.muon_ns_steps >= 1, f"{where}.muon_ns_steps", f"must be >= 1, got {self.muon_ns_steps}")
        if self.muon_ns_coeffs == "polar_express":
            need(self.muon_ns_steps <= 5, f"{where}.muon_ns_steps", f"polar_express has 5 tuples, got {self.muon_ns_steps}")
        need(self.muon_ns_safety >= 0 or self.muon_ns_safety == -1, f"{where}.muon_ns_safety",
             f"must be >= 0 (or -1 for the coefficient set's own), got {self.muon_ns_safety}")
        need(self.adam_eps > 0, f"{where}.adam_eps", "must be > 0")
        need(0 <= self.ema_decay < 1, f"{where}.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        need(self.swa_every >= 0, f"{where}.swa_every", f"must be >= 0, got {self.swa_every}")
        need(not (self.ema_decay > 0 and self.swa_every > 0), f"{where}.swa_every", "EMA and SWA are exclusive; pick one")
        need(0.0 <= self.swa_start_frac <= 1.0, f"{where}.swa_start_frac", "must be in [0, 1]")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = knob(1337, "seed of init, data order and every sampled quantity (0 .. 2**32-1)")
    seq_len: int = knob(1024, "training sequence length")
    batch_tokens: int = knob(524_288, "global tokens per optimizer step")
    micro_batch_tokens: int = knob(65_536, "tokens per forward on one rank; accumulation fills the rest")
    max_seconds: float = knob(600.0, "wall-clock training cap (warm-up and validation excluded); 0 = none")
    max_steps: int = knob(20_000, "step cap; the schedule ends at whichever cap comes first")
    warmup_steps: int = knob(20, "compile warm-up steps; weights, optimizer and data order are restored after")
    warmdown_iters: int = knob(1200, "linear LR warmdown over the last N steps (estimated by wall clock)")
    warmdown_frac: float = knob(0.0, "when > 0: warmdown over this fraction of the budget instead")
    min_lr_frac: float = knob(0.0, "LR floor as a fraction of the peak")
    val_every: int = knob(1000, "steps between validations (0 = only at the end)")
    val_tokens: int = knob(0, "cap on validation tokens during training (0 = all)")
    log_every: int = knob(50, "steps between log lines")
    checkpoint_every: int = knob(0, "steps between checkpoints (0 = only at the end or on a signal)")
    device: Device = knob("auto", "auto picks CUDA when available")
    compile: Switch = knob("auto", "torch.compile the model (auto: on CUDA)")
    dtype: DType = knob("auto", "autocast dtype (auto: bf16 on CUDA, fp32 on CPU)")
    threads: int = knob(0, "torch CPU threads (0 = torch's default); fixed for bitwise CPU results")
    gptq_reserve_seconds: float = knob(0.0, "time kept back inside max_seconds for GPTQ calibration")
    doc_isolated: bool = knob(False, "train with attention (and previous-token terms) inside documents only")
    embed_dtype: DType2 = knob("fp32", "embedding tables' parameter dtype on CUDA (the records: bf16); "
                               "CPU keeps fp32")

    def check(self, where: str = "train") -> None:
        w = where
        need(0 <= self.seed < 2 ** 32, f"{w}.seed", f"must be in 0 .. 2**32-1, got {self.seed}")
        need(self.seq_len >= 2, f"{w}.seq_len", f"must be >= 2, got {self.seq_len}")
        need(self.micro_batch_tokens > 0 and self.micro_batch_tokens % self.seq_len == 0, f"{w}.micro_batch_tokens",
              f"must be a positive multiple of train.seq_len={self.seq_len}, got {self.micro_batch_tokens}")
        need(self.batch_tokens > 0 and self.batch_tokens % self.micro_batch_tokens == 0, f"{w}.batch_tokens",
              f"must be a positive multiple of train.micro_batch_tokens={self.micro_batch_tokens}, got {self.batch_tokens}")
        need(self.max_seconds >= 0, f"{w}.max_seconds", f"must be >= 0, got {self.max_seconds}")
        need(self.max_steps >= 1, f"{w}.max_steps", f"must be >= 1, got {self.max_steps}")
        need(self.warmup_steps >= 0, f"{w}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        need(self.warmdown_iters >= 0, f"{w}.warmdown_iters", f"must be >= 0, got {self.warmdown_iters}")
        need(0.0 <= self.warmdown_frac < 1.0, f"{w}.warmdown_frac", f"must be in [0, 1), got {self.warmdown_frac}")
        need(0.0 <= self.min_lr_frac <= 1.0, f"{w}.min_lr_frac", f"must be in [0, 1], got {self.min_lr_frac}")
        for name in ("val_every", "val_tokens", "log_every", "checkpoint_every", "threads"):
            need(getattr(self, name) >= 0, f"{w}.{name}", f"must be >= 0, got {getattr(self, name)}")
        need(self.gptq_reserve_seconds >= 0, f"{w}.gptq_reserve_seconds", "must be >= 0")


@dataclass(frozen=True)
class QuantGroup:
    pattern: str = knob("*", "fnmatch pattern on the parameter name; the first matching group wins")
    bits: int = knob(8, "2..8 = int-k per-row, 16 = fp16 passthrough, 32 = fp32 passthrough")
    clip: Clip = knob("percentile", "per-row clip rule")
    clip_value: float = knob(99.99984, "the percentile, or k for sdclip (clip = k * row std)")
    gptq: bool = knob(False, "GPTQ error feedback (needs Hessians) instead of round-to-nearest")
    min_scale: float = knob(-1.0, "per-row scale floor: -1 = 1/qmax (baseline), 0 = tiny, > 0 = that value")
    small: bool = knob(False, "also take matching small 2-D tensors, before the small-tensor rule "
                       "(PR #1855's int8 gate weights)")

    def check(self, where: str = "quant.groups[0]") -> None:
        need(2 <= self.bits <= 8 or self.bits in (16, 32), f"{where}.bits", f"expected 2..8, 16 or 32, got {self.bits}")
        if self.clip == "percentile":
            need(0.0 < self.clip_value <= 100.0, f"{where}.clip_value", f"a percentile in (0, 100], got {self.clip_value}")
        if self.clip == "sdclip":
            need(self.clip_value > 0.0, f"{where}.clip_value", f"sdclip k must be > 0, got {self.clip_value}")
        need(self.min_scale == -1.0 or self.min_scale >= 0.0, f"{where}.min_scale",
              f"expected -1 (1/qmax), 0 (tiny) or a positive floor, got {self.min_scale}")


DEFAULT_CONTROL = ("*scale*", "*mix*", "*gain*", "*skip*", "*gate*", "*lambda*")


@dataclass(frozen=True)
class QuantConfig:
    groups: tuple[QuantGroup, ...] = knob((QuantGroup(),), "storage per parameter group, first match wins")
    small_tensor_numel: int = knob(65_536, "float tensors with at most this many elements are stored as floats")
    small_dtype: SmallDType = knob("fp16", "dtype of small float tensors")
    control_patterns: tuple[str, ...] = knob(DEFAULT_CONTROL, "small tensors matching these stay fp32")
    codec: Codec = knob("zlib", "payload compressor (auto = the smallest plain codec; pergroup = per weight role)")
    byte_shuffle: bool = knob(False, "group byte j of every element before compressing")
    pergroup_codecs: tuple[GroupCodec, ...] = knob(("zpaq", "brotli"), "pergroup: codecs tried on each group")
    pergroup_sort: tuple[str, ...] = knob((), "pergroup: roles (patterns) whose rows get an L1 nearest-neighbour order")
    gptq_calib: GptqCalib = knob("train", "GPTQ Hessians from training batches or self-generated samples")
    gptq_batches: int = knob(64, "calibration batches")
    gptq_seq_len: int = knob(2048, "self-generated calibration sequence length")
    gptq_temperature: float = knob(0.8, "sampling temperature of self-generated calibration")
    gptq_damp: float = knob(0.01, "Hessian damping as a fraction of mean(diag H)")
    gptq_block: int = knob(128, "GPTQ column block size")
    qat: Qat = knob("off", "fake quantization in training: whole run or late (LR scale below a threshold)")
    qat_lr_threshold: float = knob(0.15, "late QAT switches on once the LR scale drops below this")
    lqer_rank: int = knob(0, "LQER low-rank error correction rank (0 = off)")
    lqer_bits: int = knob(4, "bits of the LQER factors")
    lqer_top: int = knob(0, "how many tensors get a correction, largest errors first (0 = all)")
    lqer_form: LqerForm = knob("pgolf", "pgolf: A = U sqrt(S), B = sqrt(S) V^T, per-row MSE clip; record: A = U S, "
                               "B = V^T, per-row max (PR #1855); asym: record's A int2 [-2, 1] one scale, "
                               "B int4 [-8, 7] per group")
    lqer_group: int = knob(64, "asym LQER: values of B per scale")
    target_bytes: int = knob(ARTIFACT_LIMIT, "artifact size target; must stay below the 16,000,000 limit")
    code_compress: CodeCompress = knob("auto", "wrapper of the counted train_gpt.py (auto = the smallest)")
    auto_fit: bool = knob(False, "widen the clip / prune +-1 values until the artifact fits")

    @property
    def packs_low_bits(self) -> bool:
        """Some array has 4 bits or fewer (packed 2 or 4 to a byte): a group's values or LQER factors."""
        return self.lqer_rank > 0 or any(g.bits <= 4 for g in self.groups)

    @property
    def uses_gptq(self) -> bool:
        """Some group is GPTQ-quantized (calibration Hessians are needed)."""
        return any(g.gptq for g in self.groups)

    def check(self, where: str = "quant") -> None:
        need(len(self.groups) >= 1, f"{where}.groups", "needs at least one group")
        for i, g in enumerate(self.groups):
            g.check(f"{where}.groups[{i}]")
        need(self.small_tensor_numel >= 0, f"{where}.small_tensor_numel", "must be >= 0")
        need(self.gptq_batches >= 1, f"{where}.gptq_batches", f"must be >= 1, got {self.gptq_batches}")
        need(self.gptq_seq_len >= 2, f"{where}.gptq_seq_len", f"must be >= 2, got {self.gptq_seq_len}")
        need(self.gptq_damp > 0, f"{where}.gptq_damp", "must be > 0")
        need(self.gptq_block >= 1, f"{where}.gptq_block", "must be >= 1")
        need(2 <= self.lqer_bits <= 8, f"{where}.lqer_bits", f"expected 2..8, got {self.lqer_bits}")
        need(self.lqer_rank >= 0 and self.lqer_top >= 0, f"{where}.lqer_rank", "lqer_rank and lqer_top must be >= 0")
        need(self.lqer_group >= 1, f"{where}.lqer_group", f"must be >= 1, got {self.lqer_group}")
        need(len(self.pergroup_codecs) >= 1, f"{where}.pergroup_codecs", "needs at least one codec")
        need(0 < self.target_bytes <= ARTIFACT_LIMIT, f"{where}.target_bytes",
              f"must be in 1..{ARTIFACT_LIMIT:,} (the challenge limit), got {self.target_bytes}")


@dataclass(frozen=True)
class EvalConfig:
    method: EvalMethod = knob("plain", "evaluation method (pgolf.eval.methods)")
    seq_len: int = knob(0, "evaluation window; 0 = train.seq_len")
    stride: int = knob(64, "sliding-window stride")
    batch_seqs: int = knob(32, "windows per forward")
    doc_isolated: bool = knob(False, "attention never crosses a BOS (plain, sliding, ttt-sgd)")
    max_tokens: int = knob(0, "score only the first N val tokens (0 = all; CPU runs default to ~1M)")
    time_limit: float = knob(600.0, "warn (or fail) when evaluation takes longer (0 = no limit)")
    enforce_time_limit: bool = knob(False, "fail instead of warn over time_limit")
    ttt_chunk_tokens: int = knob(32_768, "score-first TTT: targets per chunk")
    ttt_lr: float = knob(0.005, "TTT SGD learning rate (cosine over chunks)")
    ttt_momentum: float = knob(0.9, "TTT SGD momentum")
    ttt_epochs: int = knob(3, "TTT epochs per chunk")
    ttt_grad_clip: float = knob(1.0, "TTT gradient-norm clip (0 = off)")
    ttt_batch_seqs: int = knob(32, "TTT sequences per step")
    ttt_freeze_blocks: int = knob(0, "TTT leaves the first N blocks frozen")
    lora_rank: int = knob(8, "per-document LoRA rank")
    lora_targets: tuple[LoraTarget, ...] = knob(("q", "v"), "linears that get adapters")
    lora_chunk: int = knob(256, "LoRA TTT: targets scored per step")
    lora_lr: float = knob(0.05, "LoRA learning rate")
    lora_optimizer: LoraOptimizer = knob("adam", "LoRA optimizer")
    lora_beta1: float = knob(0.9, "LoRA Adam beta1 (PR #1855: 0)")
    lora_beta2: float = knob(0.999, "LoRA Adam beta2 (PR #1855: 0.99)")
    lora_eps: float = knob(1e-8, "LoRA Adam epsilon (PR #1855: 1e-10)")
    lora_wd: float = knob(0.0, "LoRA decoupled weight decay (AdamW; PR #1855: 0.5)")
    lora_init: LoraInit = knob("pgolf", "pgolf: A uniform +-1/sqrt(in), B zero (identity at start); record: "
                               "A ~ N(0, 0.01), B ~ N(0, 0.001), delta scaled 1/rank (swapp1990's script)")
    lora_context: bool = knob(True, "a chunk is scored with its document's earlier tokens as context "
                              "(false: the chunk alone, as swapp1990's script)")
    lora_min_doc: int = knob(0, "documents with fewer tokens are scored by the base model, without TTT "
                             "(swapp1990's script: 32)")
    lora_batch_docs: int = knob(64, "documents adapted side by side")
    lora_script_score: bool = knob(False, "also report the figure swapp1990's stored script prints (its documents of "
                                   "5+ tokens, without their closing BOS, a 1-target last chunk skipped): labelled, "
                                   "not challenge.md's val_bpb, which stays the score")
    phased_points: tuple[float, ...] = knob((0.5,), "phased TTT: global SGD after these fractions of the targets")
    phased_docs: tuple[int, ...] = knob((), "phased TTT: global SGD after these many documents of the queue "
                                        "instead (PR #1855: 833, 1666, 2500)")
    phased_order: PhasedOrder = knob("stream", "phased TTT: documents scored in stream order or longest first "
                                     "(PR #1855)")
    phased_sgd: PhasedSgd = knob("pgolf", "phased TTT's global SGD: pgolf (one SGD over the phases, a cosine LR "
                                 "across phases, sequences inside each scored document) or record (PR #1855: a "
                                 "fresh SGD per phase over the scored documents joined in queue order, a cosine "
                                 "LR over ttt_chunk_tokens chunks, the last chunk untrained, each batch one "
                                 "packed doc-isolated row)")
    audit: bool = knob(True, "`pgolf run` audits its own evaluation (pgolf.eval.audit)")
    audit_budget: float = knob(0.1, "audit perturbation runs: this fraction of the evaluated tokens (min one sub-stream)")

    def window(self, train: TrainConfig) -> int:
        """The evaluation window: seq_len, or train.seq_len when that is 0."""
        return self.seq_len or train.seq_len

    def check(self, where: str = "eval") -> None:
        w = where
        need(self.seq_len >= 0, f"{w}.seq_len", f"must be >= 0, got {self.seq_len}")
        need(self.stride >= 1, f"{w}.stride", f"must be >= 1, got {self.stride}")
        need(self.batch_seqs >= 1, f"{w}.batch_seqs", f"must be >= 1, got {self.batch_seqs}")
        need(self.max_tokens >= 0, f"{w}.max_tokens", f"must be >= 0, got {self.max_tokens}")
        need(self.time_limit >= 0, f"{w}.time_limit", "must be >= 0 (0 = no limit)")
        need(0 <= self.audit_budget <= 10, f"{w}.audit_budget", f"must be in [0, 10], got {self.audit_budget}")
        need(self.ttt_chunk_tokens >= 1, f"{w}.ttt_chunk_tokens", "must be >= 1")
        need(self.ttt_lr >= 0, f"{w}.ttt_lr", "must be >= 0")
        need(0 <= self.ttt_momentum < 1, f"{w}.ttt_momentum", "must be in [0, 1)")
        need(self.ttt_epochs >= 0, f"{w}.ttt_epochs", "must be >= 0")
        need(self.ttt_grad_clip >= 0, f"{w}.ttt_grad_clip", "must be >= 0 (0 = off)")
        need(self.ttt_batch_seqs >= 1, f"{w}.ttt_batch_seqs", "must be >= 1")
        need(self.ttt_freeze_blocks >= 0, f"{w}.ttt_freeze_blocks", "must be >= 0")
        need(len(self.lora_targets) >= 1, f"{w}.lora_targets", "needs at least one target")
        need(self.lora_rank >= 1, f"{w}.lora_rank", "must be >= 1")
        need(self.lora_chunk >= 1, f"{w}.lora_chunk", "must be >= 1")
        need(self.lora_lr >= 0, f"{w}.lora_lr", "must be >= 0")
        for name in ("lora_beta1", "lora_beta2"):
            need(0 <= getattr(self, name) < 1, f"{w}.{name}", f"must be in [0, 1), got {getattr(self, name)}")
        need(self.lora_eps > 0 and self.lora_wd >= 0, f"{w}.lora_eps", "lora_eps must be > 0 and lora_wd >= 0")
        need(self.lora_min_doc >= 0, f"{w}.lora_min_doc", f"must be >= 0, got {self.lora_min_doc}")
        need(self.lora_batch_docs >= 1, f"{w}.lora_batch_docs", "must be >= 1")
        need(all(0.0 < p < 1.0 for p in self.phased_points), f"{w}.phased_points",
              f"fractions must be in (0, 1), got {list(self.phased_points)}")
        need(all(d >= 1 for d in self.phased_docs) and list(self.phased_docs) == sorted(set(self.phased_docs)),
             f"{w}.phased_docs", f"document counts must be >= 1 and increasing, got {list(self.phased_docs)}")


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig,
            "quant": QuantConfig, "eval": EvalConfig}


@dataclass(frozen=True)
class Config:
    name: str = knob("custom", "recipe name")
    description: str = knob("", "one line about the recipe")
    data: DataConfig = knob(DataConfig(), "data section")
    model: ModelConfig = knob(ModelConfig(), "model section")
    optim: OptimConfig = knob(OptimConfig(), "optimizer section")
    train: TrainConfig = knob(TrainConfig(), "training section")
    quant: QuantConfig = knob(QuantConfig(), "quantization and artifact section")
    eval: EvalConfig = knob(EvalConfig(), "evaluation section")

    def check(self) -> None:
        """Every section's checks; the checks an eval method adds are the method's (pgolf.eval.methods)."""
        for name in SECTIONS:
            getattr(self, name).check(name)
        if self.data.loader == "packed":  # one long row: only sensible with capped document segments
            need(self.train.doc_isolated, "train.doc_isolated", "must be true with data.loader = packed")
            need(self.model.doc_segment_len > 0, "model.doc_segment_len",
                 "must be > 0 with data.loader = packed (each row is micro_batch_tokens long)")

    def to_dict(self) -> dict:
        return json.loads(self.to_json())

    def to_compact(self) -> dict:
        """Only the fields that differ from the defaults (from_dict of it is this config again)."""
        return _diff(self.to_dict(), Config().to_dict())

    def artifact_dict(self) -> dict:
        """What an artifact stores: what scoring it reads (name, data, model, train, eval), compact,
        without the seed (in the artifact's metadata), the machine-local data paths and the
        description, so the file depends on the weights and the recipe alone. The optimizer and
        quantization recipe made the weights but do not score them: they stay in the run's config."""
        d = self.to_dict()
        default = Config().to_dict()
        d["description"] = ""
        d["train"]["seed"] = TrainConfig().seed
        d["data"]["path"] = d["data"]["tokenizer"] = ""
        d["optim"], d["quant"] = default["optim"], default["quant"]
        return _diff(d, default)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(dataclasses.asdict(self), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        if not isinstance(d, dict):
            raise ConfigError(f"config: expected a table/object, got {type(d).__name__}")
        cfg = _build(cls, d, "")
        cfg.check()
        return cfg

    def replace(self, overrides: list[str]) -> "Config":
        """A new Config with `--set`-style overrides applied (this one is unchanged)."""
        return Config.from_dict(apply_overrides(self.to_dict(), overrides))


# ---------------------------------------------------------------------------------------------
# building from dicts, with errors that name the field

def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or isinstance(value, bool):
            raise ConfigError(f"{where}: expected one of {' | '.join(map(str, allowed))}, got {value!r}")
        return value
    if origin is tuple:
        item_tp = get_args(tp)[0]
        if isinstance(value, str) and not dataclasses.is_dataclass(item_tp):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
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
    raise ConfigError(f"{where}: unsupported field type {tp!r}")  # pragma: no cover


def _build(cls: type, d: dict, prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in d.items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(f"unknown config field '{where}' (known here: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], where)
    return cls(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _diff(d: dict, base: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            sub = _diff(v, base[k])
            if sub:
                out[k] = sub
        elif base.get(k) != v:
            out[k] = v
    return out


def field_docs(section: type) -> dict[str, str]:
    """Field name -> one-line doc for a config section class."""
    return {f.name: f.metadata.get("doc", "") for f in fields(section)}


# ---------------------------------------------------------------------------------------------
# recipes and overrides

def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def recipe_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.is_file():
        return p
    q = RECIPE_DIR / f"{name_or_path}.toml"
    if q.is_file():
        return q
    raise ConfigError(f"recipe '{name_or_path}' not found (a .toml path or one of: {', '.join(recipe_names())})")


def recipe_dict(name_or_path: str, _seen: tuple = ()) -> dict:
    path = recipe_path(name_or_path)
    if str(path) in _seen:
        raise ConfigError(f"recipe {path}: 'extends' forms a cycle")
    try:
        d = tomllib.loads(path.read_text(encoding="utf-8"))
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
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise ConfigError(f"override '{text}': expected key=value, e.g. model.num_layers=11")
    key, raw = text.split("=", 1)
    raw = raw.strip()
    try:  # TOML scalars and arrays: 11, 0.5, true, "x", [1, 2]
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def override_keys(overrides: list[str]) -> list[str]:
    """The dotted keys of `--set` overrides, in order."""
    return [".".join(parse_override(o)[0]) for o in overrides]


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


def load_config(recipe: str | None = None, overrides: list[str] | None = None, smoke: bool = False) -> Config:
    """A recipe (or the defaults) with overrides; `smoke` shrinks it to CPU size first (see smoke_overrides)."""
    d = recipe_dict(recipe) if recipe else {}
    if smoke:
        d = apply_overrides(d, smoke_overrides(Config.from_dict(d)))
    return Config.from_dict(apply_overrides(d, overrides or []))


# ---------------------------------------------------------------------------------------------
# --smoke: any recipe at CPU size

SMOKE_STEPS = 8
SMOKE_EVAL_TOKENS = 8192


def smoke_overrides(cfg: Config) -> list[str]:
    """Overrides that keep a recipe's switches but make it CPU-sized: width 64 with head dim 32 (layer
    count, vocab and every layer index stay), sequences of 128, 8 steps of 1,024 tokens, an 8,192-token
    eval and calibration, TTT and audit sized to match. Explicit --set overrides still win."""
    m, e, q, t = cfg.model, cfg.eval, cfg.quant, cfg.train
    seq = 128
    out = {
        "model.model_dim": 64, "model.num_heads": 2, "model.num_kv_heads": 1 if m.num_kv_heads < m.num_heads else 2,
        "model.rope_dims": min(m.rope_dims, 16), "model.bigram_dim": min(m.bigram_dim, 32),
        "model.value_embed_dim": min(m.value_embed_dim, 32), "model.rope_train_len": min(m.rope_train_len, seq),
        "model.doc_segment_len": min(m.doc_segment_len, seq),
        "train.seq_len": seq, "train.micro_batch_tokens": 8 * seq, "train.batch_tokens": 8 * seq,
        "train.max_steps": SMOKE_STEPS, "train.max_seconds": 0, "train.warmup_steps": min(t.warmup_steps, 1),
        "train.warmdown_iters": min(t.warmdown_iters, SMOKE_STEPS // 2), "train.val_every": 0,
        "train.val_tokens": 2048, "train.log_every": 1, "train.gptq_reserve_seconds": 0,
        "eval.seq_len": 0, "eval.max_tokens": SMOKE_EVAL_TOKENS, "eval.stride": min(e.stride, 32),
        "eval.batch_seqs": min(e.batch_seqs, 8), "eval.ttt_chunk_tokens": min(e.ttt_chunk_tokens, 2048),
        "eval.ttt_batch_seqs": min(e.ttt_batch_seqs, 4), "eval.ttt_epochs": min(e.ttt_epochs, 1),
        "eval.lora_chunk": min(e.lora_chunk, 32), "eval.lora_batch_docs": min(e.lora_batch_docs, 8),
        "eval.lora_rank": min(e.lora_rank, 4),
        "quant.gptq_batches": min(q.gptq_batches, 2), "quant.gptq_seq_len": seq,
        "optim.muon_momentum_warmup_steps": min(cfg.optim.muon_momentum_warmup_steps, SMOKE_STEPS),
    }
    return [f"{k}={json.dumps(v)}" for k, v in out.items()]

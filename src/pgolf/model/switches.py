"""The registry of model switches: what each technique is called, which config field turns it on,
where its code lives and the line a record README says about it.

`active(cfg)` lists the switches a config turns on, in words; `pgolf submit` writes them into the
record README and docs/recipes.md tabulates them. A new switch is a ModelConfig field, its code in
the module named here, and one entry in SWITCHES.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pgolf.config import ModelConfig


@dataclass(frozen=True)
class Switch:
    name: str
    field: str  # the ModelConfig field that turns it on
    module: str  # where the technique is implemented
    on: Callable[[ModelConfig], bool]
    describe: Callable[[ModelConfig], str]  # the record README's words


def _layers(n: int) -> str:
    return "all layers" if n == -1 else f"the last {n} layers"


SWITCHES: tuple[Switch, ...] = (
    Switch("xsa", "xsa_last_n", "pgolf.model.attention", lambda m: m.xsa_last_n != 0,
           lambda m: f"XSA on {_layers(m.xsa_last_n)}"),
    Switch("partial_rope", "rope_dims", "pgolf.model.layers", lambda m: 0 < m.rope_dims < m.head_dim,
           lambda m: f"partial RoPE {m.rope_dims}/{m.head_dim}"),
    Switch("ntk_rope", "rope_train_len", "pgolf.model.layers", lambda m: m.rope_train_len > 0,
           lambda m: f"NTK RoPE scaling beyond {m.rope_train_len}"),
    Switch("ln_scale", "ln_scale", "pgolf.model.gpt", lambda m: m.ln_scale, lambda m: "LN scale 1/sqrt(layer+1)"),
    Switch("qk_gain", "qk_gain_init", "pgolf.model.attention", lambda m: m.qk_gain_init != 1.5,
           lambda m: f"QK-gain init {m.qk_gain_init:g}"),
    Switch("unet_skips", "unet_skips", "pgolf.model.gpt", lambda m: m.unet_skips, lambda m: "U-Net skips"),
    Switch("skip_gates", "skip_gates", "pgolf.model.gpt", lambda m: m.skip_gates, lambda m: "sigmoid-gated skips"),
    Switch("smear_gate", "smear_gate", "pgolf.model.embed", lambda m: m.smear_gate != "none",
           lambda m: f"SmearGate {m.smear_gate}"),
    Switch("bigram_hash", "bigram_buckets", "pgolf.model.embed", lambda m: m.bigram_buckets > 0,
           lambda m: f"BigramHash({m.bigram_buckets}, dim {m.bigram_dim})"),
    Switch("value_embed", "value_embed_layers", "pgolf.model.embed", lambda m: m.value_embed_layers > 0,
           lambda m: f"value embeddings in the last {m.value_embed_layers} layers"),
    Switch("ortho_init", "ortho_init", "pgolf.model.layers", lambda m: m.ortho_init, lambda m: "OrthoInit"),
    Switch("recurrence", "recur_start", "pgolf.model.gpt", lambda m: m.recurrent,
           lambda m: f"depth recurrence over layers {m.recur_start}-{m.recur_end} x{m.recur_repeats} "
                     f"from {m.recur_start_frac:.0%} of training"),
    Switch("parallel_lanes", "parallel_from", "pgolf.model.gpt", lambda m: m.parallel_from >= 0,
           lambda m: f"parallel residual lanes from layer {m.parallel_from}"),
    Switch("attn_out_gate", "attn_out_gate", "pgolf.model.attention", lambda m: m.attn_out_gate,
           lambda m: "attention output gate"),
    Switch("sparse_attn_gate", "sparse_attn_gate", "pgolf.model.attention", lambda m: m.sparse_attn_gate,
           lambda m: f"sparse attention gate (first 12 dims, scale {m.sparse_attn_gate_scale:g})"),
)


def active(cfg: ModelConfig) -> list[str]:
    """The README words of every switch `cfg` turns on, in registry order."""
    return [s.describe(cfg) for s in SWITCHES if s.on(cfg)]

"""The GPT: embedding -> a layer schedule of blocks -> tied (or untied) head with logit softcap.

The *layer schedule* is the list of block indices the forward pass visits. It expresses U-Net skips
(first half pushes, second half pops), depth recurrence (a block range visited again with shared
weights) and parallel residual lanes (blocks from `parallel_from` on). The model reads no global
state: the trainer switches recurrence on with `set_recurrence(True)`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pgolf.config import ModelConfig
from pgolf.model.attention import CausalSelfAttention
from pgolf.model.docmask import dense_doc_mask, doc_block_mask, segment_ids
from pgolf.model.embed import BigramHash, SmearGate, ValueEmbedding
from pgolf.model.layers import CastedLinear, orthogonal_init_, rms_norm
from pgolf.model.mlp import MLP


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        d = cfg.model_dim
        self.layer_idx = layer_idx
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))
        self.norm_scale = (layer_idx + 1) ** -0.5 if cfg.ln_scale else 1.0
        self.parallel = 0 <= cfg.parallel_from <= layer_idx

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        y = rms_norm(x)
        return y * self.norm_scale if self.norm_scale != 1.0 else y

    def _mix(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        return mix[0] * x + mix[1] * x0

    def forward(self, x: torch.Tensor, x0: torch.Tensor, attn_mask: torch.Tensor | None = None,
                v_extra: torch.Tensor | None = None) -> torch.Tensor:
        x = self._mix(x, x0)
        x = x + self.attn_scale.to(x.dtype) * self.attn(self._norm(x), attn_mask, v_extra)
        return x + self.mlp_scale.to(x.dtype) * self.mlp(self._norm(x))

    def forward_lanes(self, xa: torch.Tensor, xm: torch.Tensor, x0: torch.Tensor, post: torch.Tensor,
                      resid: torch.Tensor, attn_mask: torch.Tensor | None = None,
                      v_extra: torch.Tensor | None = None):
        """Parallel residuals (PR #1855): attention reads lane a (mixed with x0), the MLP reads lane m;
        post[j, i] is how much sublayer j (0 attn, 1 mlp) writes into lane i, resid[i] scales lane i."""
        a = self.attn_scale.to(xa.dtype) * self.attn(self._norm(self._mix(xa, x0)), attn_mask, v_extra)
        m = self.mlp_scale.to(xm.dtype) * self.mlp(self._norm(xm))
        post, resid = post.to(xa.dtype), resid.to(xa.dtype)
        return (resid[0] * xa + post[0, 0] * a + post[1, 0] * m,
                resid[1] * xm + post[0, 1] * a + post[1, 1] * m)


def layer_schedule(cfg: ModelConfig, recurrence: bool) -> list[int]:
    """Block indices in visiting order; with recurrence the range [start, end] repeats."""
    order = list(range(cfg.num_layers))
    if recurrence and cfg.recur_start >= 0:
        s, e = cfg.recur_start, cfg.recur_end
        order = order[: e + 1] + list(range(s, e + 1)) * cfg.recur_repeats + order[e + 1:]
    return order


def num_skips(n_virtual: int) -> int:
    enc = n_virtual // 2
    return min(enc, n_virtual - enc)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.model_dim
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.bigram = BigramHash(cfg) if cfg.bigram_buckets > 0 else None
        self.smear = SmearGate(cfg) if cfg.smear_gate != "none" else None
        self.value_embed = ValueEmbedding(cfg) if cfg.value_embed_layers > 0 else None
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.recurrence_active = False
        # Skip tables are sized for the longest schedule; a shorter one uses a prefix.
        n_skip = num_skips(len(layer_schedule(cfg, recurrence=True))) if cfg.unet_skips else 0
        self.skip_weights = nn.Parameter(torch.ones(n_skip, d)) if n_skip else None
        self.skip_gates = nn.Parameter(torch.zeros(n_skip, d)) if n_skip and cfg.skip_gates else None
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(d, cfg.vocab_size, zero_init=True)
        if cfg.parallel_from >= 0:  # the record keeps one entry per layer, parallel or not
            self.parallel_post_lambdas = nn.Parameter(torch.ones(cfg.num_layers, 2, 2))
            self.parallel_resid_lambdas = nn.Parameter(torch.full((cfg.num_layers, 2), 1.1))
        # GPTQ hooks this to get the head's input (the final-normed hidden state).
        self.head_input_probe = nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        cfg = self.cfg
        if cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, std=cfg.tied_embed_init_std)
        # In module order, like the records, so the same seed gives the same weights.
        for m in self.modules():
            gain = getattr(m, "ortho_gain", 0.0)  # BigramHash's record init
            if isinstance(m, CastedLinear) and not m.zero_init and min(m.weight.shape) >= 64 and (cfg.ortho_init or gain):
                orthogonal_init_(m.weight)
                if gain:
                    with torch.no_grad():
                        m.weight.mul_(gain)

    # -- schedule -------------------------------------------------------------------------------
    def set_recurrence(self, active: bool) -> None:
        self.recurrence_active = bool(active) and self.cfg.recur_start >= 0

    def schedule(self) -> list[int]:
        return layer_schedule(self.cfg, self.recurrence_active)

    # -- forward --------------------------------------------------------------------------------
    def embed(self, idx: torch.Tensor, doc_isolated: bool = False) -> torch.Tensor:
        """Token (+ BigramHash) embedding, RMS-normed, then SmearGate (the records' order)."""
        x = self.tok_emb(idx)
        if self.bigram is not None:
            x = x + self.bigram(idx, doc_isolated).to(x.dtype)
        x = rms_norm(x)
        if self.smear is not None:
            x = self.smear(x, idx, doc_isolated)
        return x

    def doc_mask(self, idx: torch.Tensor):
        """Causal attention within each document segment (pgolf.model.docmask): a [B, 1, T, T] bool
        mask, or with model.doc_attention = "flex" a FlexAttention BlockMask of the same pattern."""
        seg = segment_ids(idx, self.cfg.bos_id, self.cfg.doc_segment_len)
        if self.cfg.doc_attention == "flex":
            return doc_block_mask(seg, min(128, idx.size(1)))
        return dense_doc_mask(seg)

    def _add_skip(self, h: torch.Tensor, skip: torch.Tensor, j: int) -> torch.Tensor:
        w = self.skip_weights[j].to(h.dtype)
        if self.skip_gates is None:
            return h + w * skip
        return torch.lerp(w * skip, h, torch.sigmoid(self.skip_gates[j].to(h.dtype)))

    def hidden(self, idx: torch.Tensor, doc_isolated: bool = False) -> torch.Tensor:
        """Final-normed hidden states [B, T, d]."""
        x0 = x = self.embed(idx, doc_isolated)
        mask = self.doc_mask(idx) if doc_isolated else None
        ve = self.value_embed.table(idx) if self.value_embed is not None else None
        order = self.schedule()
        n_enc = len(order) // 2
        n_skip = num_skips(len(order)) if self.skip_weights is not None else 0
        skips: list[torch.Tensor] = []
        lanes: tuple[torch.Tensor, torch.Tensor] | None = None
        has_lanes = self.cfg.parallel_from >= 0  # (a switch: without lanes the counted script drops them)
        for pos, bi in enumerate(order):
            block = self.blocks[bi]
            parallel = has_lanes and block.parallel
            if parallel and lanes is None:
                lanes = (x, x)
            if pos >= n_enc and skips and (pos - n_enc) < n_skip:
                j = pos - n_enc
                skip = skips.pop()
                if lanes is None:
                    x = self._add_skip(x, skip, j)
                else:  # the skip feeds the attention lane only
                    lanes = (self._add_skip(lanes[0], skip, j), lanes[1])
            v_extra = self.value_embed.for_layer(ve, bi) if ve is not None else None
            if parallel:
                lanes = block.forward_lanes(lanes[0], lanes[1], x0, self.parallel_post_lambdas[bi],
                                            self.parallel_resid_lambdas[bi], mask, v_extra)
                x = 0.5 * (lanes[0] + lanes[1])
            else:
                if lanes is not None:  # back to one lane (e.g. a recurrence revisits early blocks)
                    lanes = None
                x = block(x, x0, mask, v_extra)
            if pos < n_enc:
                skips.append(x)
        return self.head_input_probe(rms_norm(x))

    def logits_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:  # tied: the embedding is the head
            logits = F.linear(h, self.tok_emb.weight.to(h.dtype))
        else:
            logits = self.lm_head(h)
        logits = logits.float()
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                doc_isolated: bool = False, reduction: str = "mean") -> torch.Tensor:
        """Logits [B, T, V] (fp32) without targets; with targets the mean loss, or per-token NLL
        [B, T] when reduction="none"."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got '{reduction}'")
        logits = self.logits_from_hidden(self.hidden(idx, doc_isolated))
        if targets is None:
            return logits
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        nll = nll.view(targets.shape)
        return nll.mean() if reduction == "mean" else nll

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(cfg: ModelConfig) -> GPT:
    return GPT(cfg)

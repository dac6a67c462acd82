"""Per-row symmetric int-k quantization, clip rules, and the per-tensor plan.

A 2-D weight W [rows, cols] becomes q (int8 values in [-qmax, qmax], qmax = 2^(k-1) - 1) and one fp16
scale per row; W ~= q * scale[:, None]. Rounding always uses the fp16-rounded scale, so the grid used
to round is exactly the grid stored (|w - q*s| <= s/2 for every unclipped value). Tensors with more
than two dims are quantized as [shape[0], prod(rest)].

Clip rules (the per-row clip c, scale = max(c / qmax, floor)):
  percentile  c = quantile(|w_row|, p/100)          (baseline: p = 99.99984)
  mse         c = f * max|w_row|, f from MSE_FRACTIONS, chosen per row by lowest squared error
  sdclip      c = k * std(w_row)                     (k = 12.85 int6, 20 int8 embedding in records)
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from pgolf.config import QuantConfig

# Smallest positive fp16 (subnormal): a floor that keeps all-zero rows finite without coarsening others.
TINY_SCALE = 2.0 ** -24
FP16_MAX = 65504.0
MSE_FRACTIONS = (1.0, 0.999, 0.995, 0.99, 0.98, 0.97, 0.95, 0.93, 0.9, 0.87, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)
_QUANTILE_MAX_NUMEL = 1 << 24  # torch.quantile refuses larger inputs; we chunk rows instead


def qmax_for(bits: int) -> int:
    if not 2 <= bits <= 8:
        raise ValueError(f"int bits must be in 2..8, got {bits}")
    return (1 << (bits - 1)) - 1


def scale_floor(bits: int, min_scale: float) -> float:
    """-1 -> 1/qmax (upstream baseline and PR #493), 0 -> TINY_SCALE, > 0 -> that value."""
    if min_scale < 0:
        return 1.0 / qmax_for(bits)
    return max(float(min_scale), TINY_SCALE)


def _as_rows(w: Tensor) -> Tensor:
    if w.ndim < 2:
        raise ValueError(f"per-row quantization needs a tensor with >= 2 dims, got shape {tuple(w.shape)}")
    return w.detach().float().reshape(w.shape[0], -1)


def _row_quantile(a: Tensor, q: float) -> Tensor:
    if a.shape[1] == 0:
        return torch.zeros(a.shape[0], device=a.device)
    rows_per_chunk = max(1, _QUANTILE_MAX_NUMEL // a.shape[1])
    parts = [torch.quantile(a[i:i + rows_per_chunk], q, dim=1) for i in range(0, a.shape[0], rows_per_chunk)]
    return torch.cat(parts)


def scale_from_clip(clip: Tensor, bits: int, min_scale: float) -> Tensor:
    """fp16 scale per row, never zero or inf."""
    s = (clip / qmax_for(bits)).clamp(min=scale_floor(bits, min_scale), max=FP16_MAX)
    s16 = s.to(torch.float16)
    return torch.where(s16 > 0, s16, torch.full_like(s16, TINY_SCALE))


def _round_rows(w: Tensor, clip: Tensor, scale16: Tensor, bits: int) -> Tensor:
    """Clamp each row to +-clip (as the baseline does), round on the stored grid, clamp to the int range."""
    qm = qmax_for(bits)
    c = clip[:, None]
    wc = torch.maximum(torch.minimum(w, c), -c)
    return torch.clamp(torch.round(wc / scale16.float()[:, None]), -qm, qm)


def row_clip(w: Tensor, bits: int, clip: str, clip_value: float, min_scale: float = -1.0) -> Tensor:
    """Per-row clip magnitude (fp32 [rows]) for a weight reshaped to rows."""
    w2 = _as_rows(w)
    a = w2.abs()
    if clip == "percentile":
        if not 0.0 < clip_value <= 100.0:
            raise ValueError(f"percentile clip_value must be in (0, 100], got {clip_value}")
        if clip_value >= 100.0 or a.shape[1] == 0:
            return a.amax(dim=1) if a.shape[1] else torch.zeros(a.shape[0], device=a.device)
        return _row_quantile(a, clip_value / 100.0)
    if clip == "sdclip":
        if clip_value <= 0:
            raise ValueError(f"sdclip k must be > 0, got {clip_value}")
        if w2.shape[1] < 2:
            return a.amax(dim=1) if a.shape[1] else torch.zeros(a.shape[0], device=a.device)
        return clip_value * w2.std(dim=1)
    if clip == "mse":
        amax = a.amax(dim=1) if a.shape[1] else torch.zeros(a.shape[0], device=a.device)
        best_err = torch.full_like(amax, float("inf"))
        best = amax.clone()
        for f in MSE_FRACTIONS:
            c = amax * f
            s16 = scale_from_clip(c, bits, min_scale)
            q = _round_rows(w2, c, s16, bits)
            err = (w2 - q * s16.float()[:, None]).square().sum(dim=1)
            better = err < best_err
            best = torch.where(better, c, best)
            best_err = torch.where(better, err, best_err)
        return best
    raise ValueError(f"unknown clip rule '{clip}' (expected percentile | mse | sdclip)")


def quantize(w: Tensor, bits: int, clip: str = "percentile", clip_value: float = 99.99984,
             min_scale: float = -1.0, clip_mult: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-row symmetric int-k: returns (q int8 shaped like w, scale fp16 [rows]).

    clip_mult > 1 widens the grid (coarser steps, fewer distinct values, smaller compressed size).
    """
    w2 = _as_rows(w)
    c = row_clip(w2, bits, clip, clip_value, min_scale) * clip_mult
    s16 = scale_from_clip(c, bits, min_scale)
    q = _round_rows(w2, c, s16, bits).to(torch.int8)
    return q.reshape(w.shape).contiguous(), s16.contiguous()


def dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """q * scale per row (first dim), fp32."""
    s = scale.float().reshape(q.shape[0], *([1] * (q.ndim - 1)))
    return q.float() * s


@dataclass
class QuantizedTensor:
    """An int-k tensor: q (int8, original shape), fp16 per-row scales, optional LQER factors."""

    q: Tensor
    scale: Tensor
    bits: int
    dtype: torch.dtype = torch.float32  # dtype restored on dequantization
    lowrank: Optional[tuple["QuantizedTensor", "QuantizedTensor"]] = None  # (A [out, r], B [r, in])
    asym: bool = False  # grid [-2^(bits-1), 2^(bits-1) - 1] instead of +-qmax (LQER asym factors)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.q.shape)

    def dequantize(self) -> Tensor:
        w = dequantize(self.q, self.scale)
        if self.lowrank is not None:
            a, b = self.lowrank
            # B may be stored in groups ([r * in / g, g]): back to [r, in] first
            w = w + (a.dequantize().float() @ b.dequantize().float().reshape(a.q.shape[1], -1)).reshape(w.shape)
        return w.to(self.dtype)


@dataclass
class Passthrough:
    """A tensor stored as-is (fp16/fp32/bf16 or non-float); dtype is what it is restored to."""

    data: Tensor
    dtype: torch.dtype

    def dequantize(self) -> Tensor:
        return self.data.to(self.dtype)


# ---------------------------------------------------------------------------------------------
# per-tensor plan

@dataclass
class TensorPlan:
    """How one state-dict entry is stored. kind: int | fp16 | fp32 | bf16 | raw (non-float, exact)."""

    kind: str
    group: str  # label for the byte table
    bits: int = 0
    clip: str = "percentile"
    clip_value: float = 99.99984
    min_scale: float = -1.0
    gptq: bool = False
    extra: dict = field(default_factory=dict)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def plan_tensor(name: str, tensor: Tensor, cfg: QuantConfig) -> TensorPlan:
    """Storage scheme for one tensor, by name and size.

    Order: non-float -> raw; a small 2-D tensor matched by a group with `small` set -> that group;
    control patterns (only for small or < 2-D tensors, so a big matrix that happens to contain "gate"
    in its name is never stored fp32) -> fp32; numel <= small_tensor_numel or < 2 dims -> small_dtype;
    else the first QuantGroup whose fnmatch pattern matches.
    """
    if not tensor.is_floating_point():
        return TensorPlan("raw", "raw (non-float)")
    small = tensor.numel() <= cfg.small_tensor_numel or tensor.ndim < 2
    groups = cfg.groups
    if small:  # only groups marked small take a small tensor, and only a 2-D one
        groups = tuple(g for g in cfg.groups if g.small and tensor.ndim == 2 and fnmatch.fnmatchcase(name, g.pattern))
    if small and not groups and _matches(name, cfg.control_patterns):
        return TensorPlan("fp32", "fp32 control")
    if small and not groups:
        return TensorPlan(cfg.small_dtype, f"{cfg.small_dtype} small")
    for g in groups:
        if fnmatch.fnmatchcase(name, g.pattern):
            if g.bits == 16:
                return TensorPlan("fp16", f"{g.pattern} fp16")
            if g.bits == 32:
                return TensorPlan("fp32", f"{g.pattern} fp32")
            label = f"{g.pattern} int{g.bits}" + (" gptq" if g.gptq else "")
            return TensorPlan("int", label, g.bits, g.clip, g.clip_value, g.min_scale, g.gptq)
    return TensorPlan("fp16", "fp16 unmatched")


def store_float(t: Tensor, kind: str) -> Passthrough:
    """Passthrough storage for fp16/fp32/bf16/raw plans (restored to the tensor's own dtype)."""
    t = t.detach().cpu().contiguous()
    if kind == "raw":
        return Passthrough(t, t.dtype)
    dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[kind]
    return Passthrough(t.to(dtype).contiguous(), t.dtype)

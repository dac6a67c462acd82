"""Quantization-aware training: straight-through fake quantization matching the export quantizer.

forward(w) = w + enabled * (deq(quant(w)) - w).detach(): the forward pass sees the exported weights,
the gradient flows to w unchanged. `enabled` is a float buffer, not a Python bool, because
torch.compile constant-folds Python attributes: a record's late QAT silently never switched on that
way. Flipping the buffer in place (fill_) changes the compiled graph's output without recompiling.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pgolf.config import QuantConfig
from pgolf.quant.quantizers import dequantize, plan_tensor, quantize


class FakeQuant(nn.Module):
    """Per-row int-k fake quantization with the same clip rule, bits and scale floor as export."""

    def __init__(self, bits: int, clip: str = "percentile", clip_value: float = 99.99984,
                 min_scale: float = -1.0, enabled: bool = True):
        super().__init__()
        self.bits, self.clip, self.clip_value, self.min_scale = bits, clip, clip_value, min_scale
        # non-persistent: the switch is run state, not a model weight (keeps state_dict clean)
        self.register_buffer("enabled", torch.tensor(1.0 if enabled else 0.0), persistent=False)

    def forward(self, w: Tensor) -> Tensor:
        with torch.no_grad():
            q, s = quantize(w, self.bits, self.clip, self.clip_value, self.min_scale)
            wq = dequantize(q, s).to(w.dtype)
        return w + self.enabled.to(w.dtype) * (wq - w).detach()

    def extra_repr(self) -> str:
        return f"bits={self.bits}, clip={self.clip}, clip_value={self.clip_value}, min_scale={self.min_scale}"


def attach_qat(model: nn.Module, cfg: QuantConfig, enabled: bool | None = None) -> list[str]:
    """Set module.qat = FakeQuant(...) on every module with a `qat` attribute and a 2-D weight whose
    weight name the plan int-quantizes. Off for cfg.qat == "off". Initially enabled for "full",
    disabled for "late" (unless `enabled` is given). Returns the weight names covered."""
    if cfg.qat == "off":
        return []
    on = (cfg.qat == "full") if enabled is None else enabled
    names = []
    for mname, module in model.named_modules():
        w = getattr(module, "weight", None)
        if not hasattr(module, "qat") or not isinstance(w, Tensor) or w.ndim != 2:
            continue
        wname = f"{mname}.weight" if mname else "weight"
        plan = plan_tensor(wname, w, cfg)
        if plan.kind != "int":
            continue
        fq = FakeQuant(plan.bits, plan.clip, plan.clip_value, plan.min_scale, on)
        module.qat = fq.to(w.device)
        names.append(wname)
    return names


@torch.no_grad()
def set_qat_enabled(model: nn.Module, on: bool) -> int:
    """Flip every FakeQuant switch in place; returns how many were set."""
    n = 0
    for m in model.modules():
        if isinstance(m, FakeQuant):
            m.enabled.fill_(1.0 if on else 0.0)
            n += 1
    return n


def late_qat_should_enable(lr_scale: float, cfg: QuantConfig) -> bool:
    """Late QAT switches on once the LR multiplier drops below cfg.qat_lr_threshold."""
    return cfg.qat == "late" and lr_scale < cfg.qat_lr_threshold

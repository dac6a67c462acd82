"""LQER: a low-rank correction of the quantization error, itself stored in low-bit ints.

Three forms (quant.lqer_form): pgolf's (below), and PR #1855's symmetric and asymmetric ones
(record_factors, asym_factors).

E = W - deq(q); E ~= A @ B with A = U_r sqrt(S_r) [out, r] and B = sqrt(S_r) V_r^T [r, in] (the split
balances the factors' ranges); A and B are per-row int-k (MSE clip, tiny scale floor). The tensors with
the largest ||E||_F get the correction first.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor

from pgolf.quant.quantizers import QuantizedTensor, dequantize, quantize


def lowrank_factors(err: Tensor, rank: int, bits: int) -> tuple[QuantizedTensor, QuantizedTensor]:
    """Quantized rank-r factors (A, B) of the 2-D error matrix err."""
    U, S, Vh = _svd(err, rank)
    root = S.sqrt()
    A = U * root[None, :]
    B = root[:, None] * Vh
    qa, sa = quantize(A, bits, "mse", 0.0, min_scale=0.0)
    qb, sb = quantize(B, bits, "mse", 0.0, min_scale=0.0)
    return QuantizedTensor(qa, sa, bits), QuantizedTensor(qb, sb, bits)


def record_factors(err: Tensor, rank: int, bits: int) -> tuple[QuantizedTensor, QuantizedTensor]:
    """PR #1855's symmetric form: A = U_r S_r, B = V_r^T, each per-row int-k at its row max."""
    A, B = _record_split(err, rank)
    qa, sa = quantize(A, bits, "percentile", 100.0, min_scale=0.0)
    qb, sb = quantize(B, bits, "percentile", 100.0, min_scale=0.0)
    return QuantizedTensor(qa, sa, bits), QuantizedTensor(qb, sb, bits)


def asym_factors(err: Tensor, rank: int, group: int) -> tuple[QuantizedTensor, QuantizedTensor]:
    """PR #1855's asymmetric form: A = U_r S_r as int2 on [-2, 1] with one scale |A|max / 1.5, and
    B = V_r^T as int4 on [-8, 7] in groups of `group` consecutive values, scale |group|max / 7.5.
    B is returned grouped, [r * in / group, group]."""
    A, B = _record_split(err, rank)
    sa = (A.abs().max().clamp_min(1e-10) / 1.5).to(torch.float16)
    qa = torch.clamp(torch.round(A / sa.float()), -2, 1).to(torch.int8)
    Bg = B.reshape(-1, group)
    sb = (Bg.abs().amax(dim=1).clamp_min(1e-10) / 7.5).to(torch.float16)
    qb = torch.clamp(torch.round(Bg / sb.float()[:, None]), -8, 7).to(torch.int8)
    return (QuantizedTensor(qa, sa.expand(A.shape[0]).contiguous(), 2, asym=True),
            QuantizedTensor(qb, sb, 4, asym=True))


def _svd(err: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """The top-r singular triplets (U_r, S_r, V_r^T) of the 2-D error matrix."""
    if err.ndim != 2:
        raise ValueError(f"LQER needs a 2-D error matrix, got shape {tuple(err.shape)}")
    r = max(1, min(rank, min(err.shape)))
    U, S, Vh = torch.linalg.svd(err.float(), full_matrices=False)
    return U[:, :r], S[:r], Vh[:r]


def _record_split(err: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """PR #1855's split: A = U_r S_r, B = V_r^T."""
    U, S, Vh = _svd(err, rank)
    return (U * S).contiguous(), Vh.contiguous()


def factors(err: Tensor, rank: int, bits: int, form: str = "pgolf",
            group: int = 64) -> tuple[QuantizedTensor, QuantizedTensor]:
    """The low-rank factors of `form` (asym falls back to record when B does not split into groups,
    as the record does)."""
    if form == "asym" and (min(rank, *err.shape) * err.shape[1]) % group == 0:
        return asym_factors(err, rank, group)
    if form in ("record", "asym"):
        return record_factors(err, rank, bits)
    return lowrank_factors(err, rank, bits)


def quant_error(w: Tensor, qt: QuantizedTensor) -> float:
    """Frobenius norm of W - deq(q) (without any existing low-rank term)."""
    return float((w.detach().float() - dequantize(qt.q, qt.scale).reshape(w.shape)).norm())


def apply_lqer(quantized: Mapping[str, object], originals: Mapping[str, Tensor], rank: int, bits: int,
               top: int = 0, names: Optional[list[str]] = None, form: str = "pgolf",
               group: int = 64) -> dict[str, float]:
    """Attach LQER factors in place to the `top` 2-D int tensors with the largest error (0 = all).

    Returns {name: error after / error before} for the corrected tensors.
    """
    if rank <= 0:
        return {}
    cands = []
    for name, qt in quantized.items():
        if names is not None and name not in names:
            continue
        if isinstance(qt, QuantizedTensor) and qt.q.ndim == 2 and name in originals:
            cands.append((quant_error(originals[name], qt), name))
    cands.sort(reverse=True)
    if top > 0:
        cands = cands[:top]
    ratios = {}
    for before, name in cands:
        qt = quantized[name]
        assert isinstance(qt, QuantizedTensor)
        w = originals[name].detach().float()
        err = w - dequantize(qt.q, qt.scale)
        qt.lowrank = factors(err, rank, bits, form, group)
        after = float((w - qt.dequantize().float()).norm())
        if after >= before:  # a useless correction only costs bytes
            qt.lowrank = None
            continue
        ratios[name] = after / max(before, 1e-30)
    return ratios

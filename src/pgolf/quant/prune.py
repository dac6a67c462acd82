"""Selective pruning: zero +-1 quantized values until the compressed artifact fits a byte target.

Zeroing a +-1 entry makes the int stream more compressible (0 is the most common value) at a cost of
at most one grid step. Candidates are ranked by |w| (the original weight when given, else the grid
value |q * scale|), smallest first; we search for the smallest prefix k of that ranking whose measured
size fits, re-compressing each round (bracketing + interpolation, since size(k) is noisy but
decreasing).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
from torch import Tensor

from pgolf.quant.quantizers import QuantizedTensor


@dataclass
class PruneResult:
    pruned: int  # number of +-1 values set to zero
    candidates: int  # +-1 values available
    size: int  # measured size after pruning
    fits: bool
    rounds: int  # measurements taken


def _candidates(quantized: Mapping[str, object], originals: Optional[Mapping[str, Tensor]]):
    names, scores, idxs = [], [], []
    for name, qt in quantized.items():
        if not isinstance(qt, QuantizedTensor):
            continue
        q = qt.q.reshape(qt.q.shape[0], -1)
        mask = q.abs() == 1
        if not bool(mask.any()):
            continue
        if originals is not None and name in originals:
            mag = originals[name].detach().float().reshape(q.shape).abs().cpu()
        else:
            mag = qt.scale.float().abs()[:, None].expand(q.shape)
        flat = mask.reshape(-1).nonzero().squeeze(1)
        names.append(name)
        scores.append(mag.reshape(-1)[flat])
        idxs.append(flat)
    return names, scores, idxs


def prune_ones(quantized: Mapping[str, object], measure: Callable[[Mapping[str, object]], int], target: int,
               originals: Optional[Mapping[str, Tensor]] = None, max_rounds: int = 16) -> tuple[dict, PruneResult]:
    """Return (a pruned copy of `quantized`, result). measure(tensors) -> bytes (e.g. the artifact size).

    Stops at the smallest measured k that fits (within max_rounds), or prunes every +-1 if even that
    does not fit (fits=False).
    """
    base = dict(quantized)
    size0 = measure(base)
    names, scores, idxs = _candidates(quantized, originals)
    total = int(sum(s.numel() for s in scores))
    if size0 <= target or total == 0:
        return base, PruneResult(0, total, size0, size0 <= target, 1)
    which = torch.cat([torch.full((s.numel(),), i, dtype=torch.long) for i, s in enumerate(scores)])
    order = torch.argsort(torch.cat(scores), stable=True)
    which, pos = which[order], torch.cat(idxs)[order]

    def pruned(k: int) -> dict:
        out = dict(quantized)
        sel_which, sel_pos = which[:k], pos[:k]
        for i, name in enumerate(names):
            p = sel_pos[sel_which == i]
            if p.numel() == 0:
                continue
            qt = quantized[name]
            q = qt.q.clone().reshape(-1)
            q[p] = 0
            out[name] = QuantizedTensor(q.reshape(qt.q.shape), qt.scale, qt.bits, qt.dtype, qt.lowrank)
        return out

    lo, s_lo = 0, size0  # largest k known not to fit
    hi, s_hi = None, None  # smallest k known to fit
    # first guess: ~2 bits saved per pruned value
    k = min(total, max(1, 4 * (size0 - target)))
    rounds, best = 1, None
    while rounds < max_rounds:
        s = measure(cand := pruned(k))
        rounds += 1
        if s <= target:
            hi, s_hi, best = k, s, cand
        else:
            lo, s_lo = k, s
        if hi is None:
            if lo >= total:
                return cand, PruneResult(total, total, s, False, rounds)
            # extrapolate the slope seen so far, at least doubling
            slope = (size0 - s_lo) / max(lo, 1)
            guess = lo + (s_lo - target) / slope if slope > 0 else 2 * lo
            k = int(min(total, max(2 * lo, guess * 1.1)))
            continue
        if hi - lo <= max(1, total // 1000):
            break
        # interpolate inside the bracket, kept away from the ends so it always shrinks
        frac = (s_lo - target) / max(s_lo - s_hi, 1)
        k = lo + int(round((hi - lo) * min(0.9, max(0.1, frac))))
        if k <= lo or k >= hi:
            k = (lo + hi) // 2
    if best is None:  # ran out of rounds before finding a fit: prune everything
        cand = pruned(total)
        s = measure(cand)
        return cand, PruneResult(total, total, s, s <= target, rounds + 1)
    return best, PruneResult(hi, total, s_hi, True, rounds)

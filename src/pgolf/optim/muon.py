"""Muon: momentum SGD whose update for each 2-D matrix is orthogonalized by Newton-Schulz.

Per matrix: m = mu*m + g; u = g + mu*m (Nesterov) or m; optionally MuonEq-R (unit-norm rows);
u = NS(u) * sqrt(max(1, rows/cols)); p *= 1 - lr*wd; p -= lr*u.

Distributed (torch.distributed initialized, world W): every rank keeps the momentum of every
parameter (gradients are already all-reduced, so buffers stay identical and any rank can
checkpoint), but parameter i in a fixed order is orthogonalized only on rank i % W. The results go
into one flat buffer that is summed with a single all_reduce, then every rank applies all updates.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.distributed as dist

from pgolf import runtime
from pgolf.errors import ConfigError

Coeffs = tuple[float, float, float]

# Quintic from the baseline: converges fast but only to singular values in roughly [0.7, 1.2].
NS_FIXED: Coeffs = (3.4445, -4.7750, 2.0315)

# Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932): one minimax-optimal quintic
# per iteration, computed for 5 iterations with a 2% safety margin on the spectral bound; these are
# the numbers published with modded-nanogpt's Muon. They assume the input is divided by
# (1 + POLAR_EXPRESS_SAFETY) * ||G||_F, which `ns_coefficients` callers get via `ns_safety`.
POLAR_EXPRESS: tuple[Coeffs, ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 0.02

# The coefficient sets by name: (tuples, whether the first repeats for every iteration). A registry:
# the counted script keeps its recipe's set (and fixed), not the others' tables.
NS_SETS: dict[str, tuple[tuple[Coeffs, ...], bool]] = {s[0]: s[1:] for s in (
    ("fixed", (NS_FIXED,), True),
    ("polar_express", POLAR_EXPRESS, False),
)}


def ns_coefficients(kind: str, steps: int) -> list[Coeffs]:
    """Per-iteration (a, b, c) for `kind` = fixed | polar_express."""
    if steps < 1:
        raise ConfigError(f"optim.muon_ns_steps: must be >= 1, got {steps}")
    if kind not in NS_SETS:
        raise ConfigError(f"optim.muon_ns_coeffs: expected {' | '.join(NS_SETS)}, got '{kind}'")
    coeffs, repeat = NS_SETS[kind]
    if repeat:
        return [coeffs[0]] * steps
    if steps > len(coeffs):
        raise ConfigError(f"optim.muon_ns_steps: {kind} has {len(coeffs)} tuples, got {steps}")
    return list(coeffs[:steps])


def ns_safety(kind: str) -> float:
    """Relative margin added to the Frobenius norm before iterating (Polar Express needs 2%)."""
    return POLAR_EXPRESS_SAFETY if kind == "polar_express" else 0.0


def default_ns_dtype(device: torch.device) -> torch.dtype:
    # bf16 matmuls are fast on GPUs and NS tolerates them; on CPU bf16 is ~10x slower than fp32.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def zeropower_via_newtonschulz(
    G: torch.Tensor,
    steps: int = 5,
    coeffs: Coeffs | Sequence[Coeffs] = NS_FIXED,
    dtype: torch.dtype | None = None,
    eps: float = 1e-7,
    safety: float = 0.0,
) -> torch.Tensor:
    """Approximate the orthogonal polar factor U V^T of a 2-D matrix G = U S V^T.

    `coeffs` is one (a, b, c) used for all `steps`, or a list with one tuple per iteration.
    Each iteration: A = X X^T; X <- a X + (b A + c A^2) X, on the wide orientation so A is small.
    Returns a tensor of G's dtype.
    """
    if G.ndim != 2:
        raise ValueError(f"zeropower_via_newtonschulz: expected a 2-D matrix, got shape {tuple(G.shape)}")
    if isinstance(coeffs[0], (int, float)):
        schedule = [tuple(coeffs)] * steps  # type: ignore[arg-type]
    else:
        schedule = list(coeffs)[:steps]  # type: ignore[arg-type]
        if len(schedule) < steps:
            raise ValueError(f"zeropower_via_newtonschulz: {steps} steps but only {len(schedule)} coefficient tuples")
    X = G.to(dtype or default_ns_dtype(G.device))
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.T
    X = X / (X.norm() * (1.0 + safety) + eps)  # spectral norm <= Frobenius norm <= 1
    for a, b, c in schedule:
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.T
    return X.to(G.dtype)


def row_normalize(u: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """MuonEq-R: divide each row by its L2 norm so no output unit dominates the NS input. Like the
    records, the norm is floored at eps (adding eps instead shrinks rows with norms near 1e-7)."""
    x = u if u.dtype.itemsize >= 4 else u.float()  # bf16 norms in fp32, as upstream does
    return u / x.norm(dim=1, keepdim=True).clamp_min(eps).to(u.dtype)


def orthogonalized_update(
    u: torch.Tensor,
    steps: int = 5,
    coeffs_kind: str = "fixed",
    eq_r: bool = False,
    dtype: torch.dtype | None = None,
    safety: float = -1.0,
) -> torch.Tensor:
    """The Muon direction for a momentum update `u` (any ndim >= 2; trailing dims are flattened).
    safety < 0: the coefficient set's own margin (ns_safety)."""
    u2 = u.reshape(u.size(0), -1)
    if eq_r:
        u2 = row_normalize(u2)
    o = zeropower_via_newtonschulz(u2, steps, ns_coefficients(coeffs_kind, steps), dtype,
                                   safety=ns_safety(coeffs_kind) if safety < 0 else safety)
    # Orthogonal rows/cols have RMS 1/sqrt(max dim); this rescale keeps tall matrices' steps comparable.
    o = o * math.sqrt(max(1.0, u2.size(0) / u2.size(1)))
    return o.reshape(u.shape)


class Muon(torch.optim.Optimizer):
    """Muon for matrices (ndim >= 2). Group keys the trainer may rewrite each step: lr, momentum,
    weight_decay. `ns_dtype` None means bf16 on CUDA, fp32 elsewhere. `momentum_dtype` (e.g. bf16, as
    PR #1855's Muon) is the dtype the gradient is cast to before the momentum and Nesterov terms;
    None keeps the gradient's own."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coeffs: str = "fixed",
        eq_r: bool = False,
        weight_decay: float = 0.0,
        ns_dtype: torch.dtype | None = None,
        ns_safety: float = -1.0,
        momentum_dtype: torch.dtype | None = None,
    ):
        if lr < 0:
            raise ValueError(f"Muon: lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum}")
        ns_coefficients(ns_coeffs, ns_steps)  # validate early, with a field-naming error
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, ns_coeffs=ns_coeffs,
                        eq_r=eq_r, weight_decay=weight_decay, ns_safety=ns_safety)
        super().__init__(params, defaults)
        self.ns_dtype, self.momentum_dtype = ns_dtype, momentum_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon: parameters must have ndim >= 2, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        world, rank = runtime.world(), runtime.rank()
        items = [(g, p) for g in self.param_groups for p in g["params"]]
        if not items:
            return loss
        device = items[0][1].device
        dtype = self.ns_dtype or default_ns_dtype(device)
        flat = torch.zeros(sum(p.numel() for _, p in items), device=device, dtype=dtype)

        # Pass 1: momentum on every rank, orthogonalization on the owner rank only.
        offset = 0
        for i, (group, p) in enumerate(items):
            n = p.numel()
            if p.grad is not None:
                state = self.state[p]
                g = p.grad if self.momentum_dtype is None else p.grad.to(self.momentum_dtype)
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                mu = group["momentum"]
                buf.mul_(mu).add_(g)
                u = g.add(buf, alpha=mu) if group["nesterov"] else buf
                if i % world == rank:
                    o = orthogonalized_update(u, group["ns_steps"], group["ns_coeffs"], group["eq_r"], dtype,
                                              group["ns_safety"])
                    flat[offset:offset + n] = o.reshape(-1)
            offset += n

        if world > 1:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)

        # Pass 2: every rank applies every update (identical results everywhere).
        offset = 0
        for group, p in items:
            n = p.numel()
            if p.grad is not None:
                lr, wd = group["lr"], group["weight_decay"]
                if wd:
                    p.mul_(1.0 - lr * wd)  # decoupled: shrinks weights independent of the gradient
                p.add_(flat[offset:offset + n].view_as(p).to(p.dtype), alpha=-lr)
            offset += n
        return loss

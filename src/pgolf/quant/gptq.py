"""Full GPTQ (Frantar et al. 2022) for one linear weight, plus Hessian calibration.

For W [out, in] with inputs X [n, in], GPTQ minimizes ||X W^T - X Wq^T|| column by column: each
column is rounded on the fixed per-row grid, and its rounding error is spread over the columns not
yet quantized using the upper Cholesky factor U of H^-1 (H = X^T X + damping):
    err = (w_j - q_j) / U[j, j];   W[:, j+1:] -= err * U[j, j+1:]
Columns go in act-order (descending diag H) and in blocks (lazy batch updates); the per-row scales
come from the clip rule on the original W, so GPTQ and round-to-nearest share the same grid.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from pgolf.config import QuantConfig
from pgolf.quant.quantizers import plan_tensor, qmax_for, row_clip, scale_from_clip


def gptq_quantize(w: Tensor, H: Tensor, bits: int, clip: str = "percentile", clip_value: float = 99.99984,
                  min_scale: float = -1.0, damp: float = 0.01, block: int = 128, act_order: bool = True,
                  clip_mult: float = 1.0) -> tuple[Tensor, Tensor]:
    """GPTQ-quantize W [out, in] given H [in, in]; returns (q int8 [out, in], scale fp16 [out])."""
    if w.ndim != 2 or H.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"gptq: need W [out, in] and H [in, in], got {tuple(w.shape)} and {tuple(H.shape)}")
    dev = w.device
    W = w.detach().float().clone()
    clipv = row_clip(W, bits, clip, clip_value, min_scale) * clip_mult
    s16 = scale_from_clip(clipv, bits, min_scale)
    s = s16.float()[:, None]
    c = clipv[:, None]
    qm = qmax_for(bits)

    H = H.detach().to(dev, torch.float64).clone()
    dead = torch.diag(H) <= 0
    H[dead, dead] = 1.0  # inputs that are always zero: any value works, keep H invertible
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(H.shape[0], device=dev)
    W = W[:, perm]
    H = H[perm][:, perm]
    U = _inverse_cholesky_upper(H, damp).to(torch.float32)

    n = W.shape[1]
    Q = torch.zeros_like(W)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1 = W[:, i1:i2].clone()
        Err = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for j in range(i2 - i1):
            col = W1[:, j:j + 1]
            q = torch.clamp(torch.round(torch.maximum(torch.minimum(col, c), -c) / s), -qm, qm)
            Q[:, i1 + j:i1 + j + 1] = q
            err = (col - q * s) / U1[j, j]
            W1[:, j:] -= err * U1[j:j + 1, j:]
            Err[:, j:j + 1] = err
        W[:, i2:] -= Err @ U[i1:i2, i2:]
    inv = torch.argsort(perm)
    return Q[:, inv].to(torch.int8).contiguous(), s16.contiguous()


def _inverse_cholesky_upper(H: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor of (H + damp*mean(diag H)*I)^-1; retries with more damping if needed."""
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    mean_diag = torch.diag(H).mean().clamp_min(1e-12)
    for attempt in range(6):
        Hd = H + (damp * (10 ** attempt)) * mean_diag * eye
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                return U
    raise ValueError("gptq: Hessian is not positive definite even with 1e5x damping")


# ---------------------------------------------------------------------------------------------
# calibration

class HessianCollector:
    """Accumulates H = sum_x x^T x over the inputs of chosen modules (forward hooks).

    targets maps module name -> weight name (a plain list means weight = module + ".weight"). Any
    module works: for the tied embedding the model exposes `head_input_probe` (an nn.Identity applied
    to the final-normed hidden state), hooked with weight name "tok_emb.weight".
    """

    def __init__(self, model: nn.Module, targets: Union[Mapping[str, str], Sequence[str]]):
        if not isinstance(targets, Mapping):
            targets = {m: f"{m}.weight" for m in targets}
        modules = dict(model.named_modules())
        missing = [m for m in targets if m not in modules]
        if missing:
            raise ValueError(f"HessianCollector: no module named {', '.join(missing)}")
        self.hessians: dict[str, Tensor] = {}
        self.rows: dict[str, int] = {}
        self._handles = [modules[m].register_forward_hook(self._hook(wname)) for m, wname in targets.items()]

    def _hook(self, wname: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            x = inputs[0].detach()
            x = x.reshape(-1, x.shape[-1])
            # fp64 on CPU is cheap at calibration sizes; fp32 on GPU (fp64 matmul is slow there)
            acc = torch.float64 if x.device.type == "cpu" else torch.float32
            x = x.to(acc)
            if wname not in self.hessians:
                self.hessians[wname] = torch.zeros(x.shape[1], x.shape[1], dtype=acc, device=x.device)
                self.rows[wname] = 0
            self.hessians[wname].addmm_(x.T, x)
            self.rows[wname] += x.shape[0]
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def result(self) -> dict[str, Tensor]:
        """Mean H per weight name (fp32, on CPU)."""
        return {k: (h / max(self.rows[k], 1)).float().cpu() for k, h in self.hessians.items()}


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: Iterable[Tensor],
                     module_names: Union[Mapping[str, str], Sequence[str]]) -> dict[str, Tensor]:
    """Run model(x) over the batches with hooks on module_names; returns {weight name: H}."""
    was_training = model.training
    model.eval()
    col = HessianCollector(model, module_names)
    try:
        for x in batches:
            model(x)
    finally:
        col.remove()
        model.train(was_training)
    return col.result()


@torch.no_grad()
def self_generated_batches(model: nn.Module, n: int, seq_len: int, temperature: float, seed: int,
                           vocab_size: int, bos_id: int = 1, batch_size: int = 8,
                           device: Optional[torch.device] = None) -> list[Tensor]:
    """n sequences [seq_len] sampled autoregressively from the model (model(x) -> logits [B, T, V]),
    each starting with BOS, returned as batches [b, seq_len]. temperature <= 0 is greedy. Full
    recompute per step (no KV cache): fine for calibration-sized runs."""
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    out = []
    try:
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            x = torch.full((b, 1), bos_id, dtype=torch.long, device=device)
            while x.shape[1] < seq_len:
                logits = model(x)[:, -1, :vocab_size].float()
                if temperature <= 0:
                    nxt = logits.argmax(dim=-1, keepdim=True)
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=gen)
                x = torch.cat([x, nxt], dim=1)
            out.append(x)
    finally:
        model.train(was_training)
    return out


def hessian_targets(model: nn.Module, cfg: QuantConfig, probe: str = "head_input_probe",
                    embed_weight: str = "tok_emb.weight") -> dict[str, str]:
    """module name -> weight name for every weight the plan quantizes with GPTQ.

    Linear-like modules (2-D `weight` whose input is the layer input) are found by name; the tied
    embedding is covered through the model's `probe` module (its input = the head's input)."""
    params = dict(model.named_parameters())
    targets: dict[str, str] = {}
    for mname, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        wname = f"{mname}.weight"
        plan = plan_tensor(wname, module.weight, cfg)
        if plan.kind == "int" and plan.gptq:
            targets[mname] = wname
    modules = dict(model.named_modules())
    if embed_weight in params and probe in modules:
        plan = plan_tensor(embed_weight, params[embed_weight], cfg)
        if plan.kind == "int" and plan.gptq and embed_weight not in targets.values():
            targets[probe] = embed_weight
    return targets


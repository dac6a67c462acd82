"""Artifact parity at full size: pgolf's container against PR #1413's own serialization of the same
quantized values (torch.save + stride-2 byte shuffle + brotli-11), computed here independently."""
import io

import brotli
import numpy as np
import pytest
import torch

from pgolf.config import load_config
from pgolf.model.gpt import GPT
from pgolf.quant.budget import pack_state
from pgolf.quant.container import parse_artifact
from pgolf.quant.quantizers import Passthrough, QuantizedTensor


def upstream_bytes(quantized: dict) -> int:
    """What the record's script writes for these values: {'w': q/scale/fp16 passthrough, 'm': meta}."""
    w, m = {}, {}
    for name, t in quantized.items():
        if isinstance(t, QuantizedTensor):
            w[name + ".q"], w[name + ".scale"] = t.q, t.scale.to(torch.float16)
            m[name] = f"gptq (int{t.bits})"
        else:
            assert isinstance(t, Passthrough) and t.data.dtype == torch.float16  # upstream keeps small tensors fp16
            w[name], m[name] = t.data, "passthrough (float16)"
    buf = io.BytesIO()
    torch.save({"w": w, "m": m}, buf)
    raw = np.frombuffer(buf.getvalue(), dtype=np.uint8)
    n = len(raw) // 2 * 2
    shuffled = np.concatenate([raw[:n].reshape(-1, 2).T.reshape(-1), raw[n:]])  # upstream's _byte_shuffle
    return len(brotli.compress(shuffled.tobytes(), quality=11))


@pytest.mark.slow
def test_pr1413_container_is_no_larger_than_upstreams():
    cfg = load_config("pr1413")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, v in GPT(cfg.model).state_dict().items():  # full size; matrices as i.i.d. Gaussian weights
        state[k] = torch.randn(v.shape, generator=g) / v.shape[1] ** 0.5 if v.ndim == 2 and v.numel() > 65_536 else v
    assert sum(v.numel() for v in state.values()) == 35_943_512
    packed = pack_state(state, cfg.artifact_dict(), cfg.quant, 0, {"seed": 0}, details=False)
    reference = upstream_bytes(packed.quantized)  # the same quantized values
    assert len(packed.blob) <= reference, (len(packed.blob), reference)
    assert packed.report["header_bytes"] <= 1024  # framing: prefix + compressed header
    art = parse_artifact(packed.blob)
    assert all(torch.equal(art.tensors[k].dequantize(), packed.quantized[k].dequantize()) for k in ("tok_emb.weight",
                                                                                                      "blocks.3.mlp.fc.weight"))

"""pgolf.quant: a state dict in, artifact bytes and a byte table out.

quantizers (int-k per-row, clip rules, the per-tensor plan), gptq (Hessians, error feedback), qat
(fake quantization in training), lqer (low-rank error correction), prune (+-1 pruning to fit),
codecs, container (the pickle-free artifact format) and budget (quantize + serialize + byte table).
"""

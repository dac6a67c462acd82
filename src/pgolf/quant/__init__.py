"""pgolf.quant: quantization (int-k, GPTQ, QAT, LQER, pruning), codecs and the artifact container.

Entry points for `pgolf pack` and eval:
    quantize_state_dict(state_dict, cfg, hessians=None) -> (quantized, report)
    pack_model(state_dict, model_config, cfg, out_path, code_bytes, meta, hessians=None) -> report
    format_budget_table(report) -> str;  budget_json(report) -> dict
    read_artifact(path) -> (state_dict, model_config, meta);  read_artifact_quantized(path) -> Artifact
    collect_hessians / self_generated_batches / hessian_targets for GPTQ calibration
    attach_qat / set_qat_enabled / late_qat_should_enable for training
"""
from pgolf.quant.budget import (LIMIT_BYTES, budget_json, budget_totals, format_budget_table, pack_model,
                                quantize_state_dict)
from pgolf.quant.codecs import CODECS, best_codec, byte_shuffle, byte_unshuffle, compress, decompress
from pgolf.quant.container import (Artifact, parse_artifact, read_artifact, read_artifact_quantized,
                                   serialize_artifact, write_artifact)
from pgolf.quant.gptq import (HessianCollector, collect_hessians, gptq_module_names, gptq_quantize, hessian_targets,
                              self_generated_batches)
from pgolf.quant.lqer import apply_lqer
from pgolf.quant.prune import prune_ones
from pgolf.quant.qat import FakeQuant, attach_qat, late_qat_should_enable, set_qat_enabled
from pgolf.quant.quantizers import (Passthrough, QuantizedTensor, TensorPlan, dequantize, plan_tensor,
                                    quantize)

__all__ = [
    "LIMIT_BYTES", "budget_json", "budget_totals", "format_budget_table", "pack_model", "quantize_state_dict",
    "CODECS", "best_codec", "byte_shuffle", "byte_unshuffle", "compress", "decompress",
    "Artifact", "parse_artifact", "read_artifact", "read_artifact_quantized", "serialize_artifact",
    "write_artifact", "HessianCollector", "collect_hessians", "gptq_module_names", "gptq_quantize", "hessian_targets",
    "self_generated_batches", "apply_lqer", "prune_ones", "FakeQuant", "attach_qat", "late_qat_should_enable",
    "set_qat_enabled", "Passthrough", "QuantizedTensor", "TensorPlan", "dequantize", "plan_tensor", "quantize",
]

"""FP8 transformer blocks: torchao's float8 dynamic quantization of every linear layer in the block stack.

Weights are stored in float8 (e4m3) with one scale per output row; activations are scaled per
row at each call (dynamic scaling), and the matmuls run on the FP8 tensor cores. Embeddings,
norms, attention itself and the output head stay in the model's dtype. It needs CUDA with FP8
support (compute capability 8.9: Ada, Hopper and later) and the ``fp8`` extra (torchao); a model
named in ``SKIPSTEP_FP8_MODELS`` on a machine without either keeps its dtype, with the reason
logged and in every job's metrics.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch

from core.models.families import ModelFamily

log = logging.getLogger("skipstep.models")

FP8_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class PrecisionChoice:
    requested: str
    used: str
    # Why the requested precision was not used; None when it was.
    fallback_reason: str | None = None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def fp8_unsupported(device: torch.device) -> str | None:
    """Why FP8 blocks cannot run on ``device``; None when they can."""
    if device.type != "cuda":
        return f"FP8 needs a CUDA device with compute capability {FP8_CAPABILITY[0]}.{FP8_CAPABILITY[1]}+, not {device}"
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return f"{name} has compute capability {capability[0]}.{capability[1]}; FP8 needs 8.9+"
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed (pip install 'skipstep[fp8]')"
    return None


def quantize_blocks(transformer: torch.nn.Module, family: ModelFamily) -> None:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    for blocks in family.block_lists(transformer):
        quantize_(blocks, config)


def apply_precision(transformer: torch.nn.Module, family: ModelFamily, fp8: bool) -> PrecisionChoice:
    """FP8 blocks where asked and possible; otherwise the model keeps its dtype."""
    own = dtype_name(transformer.dtype)
    if not fp8:
        return PrecisionChoice(own, own)
    reason = fp8_unsupported(transformer.device)
    if reason is not None:
        log.warning("FP8 requested but not used: %s; the transformer stays in %s", reason, own)
        return PrecisionChoice("fp8", own, reason)
    quantize_blocks(transformer, family)
    return PrecisionChoice("fp8", "fp8")

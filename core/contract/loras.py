"""LoRA adapters as a request names them, and what a LoRA file must hold to adapt a model: checked without torch
from its safetensors header, against the shapes of the transformer's modules that the model's workers publish
(``core.jobs.catalogue``), so that the API host needs no model files."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# diffusers' LoRA format for a pipeline's transformer: ``transformer.<module>.lora_A.weight`` ([rank, in]) and
# ``transformer.<module>.lora_B.weight`` ([out, rank]), as ``WanPipeline.save_lora_weights`` writes them.
PREFIX = "transformer."
DOWN, UP, UP_BIAS = ".lora_A.weight", ".lora_B.weight", ".lora_B.bias"
FORMAT_RULE = (
    "must be a LoRA in diffusers' format: safetensors keys transformer.<module>.lora_A.weight and "
    ".lora_B.weight (as a pipeline's save_lora_weights writes them)"
)
# The largest safetensors header read (the format's own limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000


class LoraSpec(BaseModel):
    """One adapter a job runs with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=NAME_PATTERN,
        description="A LoRA registered for the job's model (`GET /models`: `loras`).",
        examples=["claymation"],
    )
    weight: float = Field(
        default=1.0,
        ge=-10,
        le=10,
        description="How strongly it applies (diffusers' adapter weight): 1 as trained, 0 not at all.",
        examples=[0.8],
    )


def adapter_set(loras: Sequence[LoraSpec | dict[str, Any]]) -> list[dict[str, Any]]:
    """A set of adapters as profiles, frontiers and metrics record it: name and weight each, in the job's order."""
    specs = [spec if isinstance(spec, LoraSpec) else LoraSpec.model_validate(spec) for spec in loras]
    return [{"name": spec.name, "weight": spec.weight} for spec in specs]


def adapter_key(loras: Sequence[LoraSpec | dict[str, Any]]) -> str:
    """The adapter set as one string, in name order (``name:weight,...``; empty for the base model): what profiles
    and frontiers measured with adapters are matched by (the order of a job's adapters changes nothing)."""
    return ",".join(f"{entry['name']}:{entry['weight']:g}" for entry in sorted(adapter_set(loras), key=_name))


def _name(entry: dict[str, Any]) -> str:
    return entry["name"]


class LoraFileError(ValueError):
    """A file that is not a LoRA for the model it is registered for; the message is the rule it breaks."""


@dataclass(frozen=True)
class LoraFile:
    """What a LoRA file adapts: the transformer's modules (names as in the model), its rank."""

    modules: tuple[str, ...]
    rank: int


def safetensors_header(data: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file (the tensors' names, dtypes and shapes), from its first bytes."""
    if len(data) < 8:
        raise LoraFileError("is not a safetensors file: it is shorter than its header's length")
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_HEADER_BYTES or 8 + length > len(data):
        raise LoraFileError("is not a safetensors file: its header's length is past the end of the file")
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError:
        raise LoraFileError("is not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise LoraFileError("is not a safetensors file: its header is not a JSON object")
    return header


def check_lora(header: dict[str, Any], modules: dict[str, list[int]], model: str) -> LoraFile:
    """What the LoRA adapts, if every tensor of ``header`` (a safetensors header) is a LoRA factor for a module of
    the model's transformer with the right shape (``modules``: name -> [in_features, out_features]); else
    LoraFileError saying which tensor breaks which rule."""
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    if not tensors:
        raise LoraFileError(f"holds no tensors; it {FORMAT_RULE}")
    factors: dict[str, dict[str, list[int]]] = {}
    for name, entry in tensors.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        part = next((suffix for suffix in (DOWN, UP, UP_BIAS) if name.endswith(suffix)), None)
        if not name.startswith(PREFIX) or part is None or not isinstance(shape, list):
            raise LoraFileError(f"tensor {name!r}: the file {FORMAT_RULE}")
        module = name.removeprefix(PREFIX).removesuffix(part)
        if module not in modules:
            raise LoraFileError(f"tensor {name!r}: {module} is not a linear module of model {model}'s transformer")
        factors.setdefault(module, {})[part] = shape
    ranks = set()
    for module, parts in factors.items():
        features_in, features_out = modules[module]
        down, up = parts.get(DOWN), parts.get(UP)
        if down is None or up is None:
            raise LoraFileError(f"module {module}: a LoRA needs both {PREFIX}{module}{DOWN} and {UP}")
        if len(down) != 2 or len(up) != 2 or down[1] != features_in or up[0] != features_out or down[0] != up[1]:
            raise LoraFileError(
                f"module {module}: lora_A is {down} and lora_B {up}; model {model}'s {module} takes {features_in} "
                f"features and gives {features_out}, so they must be [rank, {features_in}] and "
                f"[{features_out}, rank]"
            )
        if UP_BIAS in parts and parts[UP_BIAS] != [features_out]:
            raise LoraFileError(f"module {module}: lora_B.bias must be [{features_out}]")
        ranks.add(down[0])
    return LoraFile(modules=tuple(sorted(factors)), rank=max(ranks))

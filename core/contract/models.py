"""The offline presets as clients see them: name, family and default shape (the builders are engine code)."""

from __future__ import annotations

from dataclasses import dataclass

from core.contract.shapes import HUNYUAN, LTX, WAN, FamilyRules, Shape

TINY_SHAPE = Shape(width=128, height=128, num_frames=17, num_inference_steps=20)


@dataclass(frozen=True)
class PresetInfo:
    name: str
    family: FamilyRules
    default_shape: Shape
    description: str


PRESETS: dict[str, PresetInfo] = {
    preset.name: preset
    for preset in (
        PresetInfo("wan-tiny", WAN, TINY_SHAPE, "small random Wan2.1 pipeline for tests, the demo and CPU benchmarks"),
        PresetInfo("ltx-tiny", LTX, TINY_SHAPE, "small random LTX-Video pipeline"),
        PresetInfo("hunyuan-tiny", HUNYUAN, TINY_SHAPE, "small random HunyuanVideo pipeline (embedded guidance)"),
        PresetInfo(
            "wan2.1-1.3b-random",
            WAN,
            WAN.default_shape,
            "Wan2.1-T2V-1.3B's transformer and VAE shapes with random weights, for GPU benchmarks",
        ),
    )
}


def default_shape(source: str) -> Shape:
    """The shape a job gets when it names none, known without loading the model."""
    return PRESETS[source].default_shape if source in PRESETS else WAN.default_shape

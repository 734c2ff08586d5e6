"""A generation request: the fields every entry point (CLI, API, worker) validates."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from core.contract.shapes import FamilyRules, Shape
from core.contract.strategies import CacheSpec
from core.errors import InvalidRequest


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000)
    negative_prompt: str = Field(default="", max_length=4000)
    # None: the model's default shape (small for presets, the family's native size otherwise).
    width: int | None = Field(default=None, ge=16, le=4096)
    height: int | None = Field(default=None, ge=16, le=4096)
    num_frames: int | None = Field(default=None, ge=1, le=1025)
    num_inference_steps: int | None = Field(default=None, ge=2, le=1000)
    guidance_scale: float = Field(default=5.0, ge=0, le=50)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    fps: int = Field(default=16, ge=1, le=120)
    cache: CacheSpec = Field(default_factory=CacheSpec)
    compare: bool = Field(default=False, description="Also run uncached with the same seed and report fidelity.")

    def shape(self, family: FamilyRules, default: Shape) -> Shape:
        """The concrete shape, checked against the family's size rules."""
        shape = Shape(
            width=self.width or default.width,
            height=self.height or default.height,
            num_frames=self.num_frames or default.num_frames,
            num_inference_steps=self.num_inference_steps or default.num_inference_steps,
        )
        for field, rule in family.violations(shape):
            raise InvalidRequest(field, rule)
        return shape

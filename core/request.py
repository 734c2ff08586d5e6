"""A generation request: the fields every entry point (CLI, later the API) validates."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from core.caching.spec import CacheSpec
from core.errors import InvalidRequest
from core.models.families import ModelFamily, Shape


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

    def shape(self, family: ModelFamily, default: Shape) -> Shape:
        """The concrete shape, checked against the family's size rules."""
        shape = Shape(
            width=self.width or default.width,
            height=self.height or default.height,
            num_frames=self.num_frames or default.num_frames,
            num_inference_steps=self.num_inference_steps or default.num_inference_steps,
        )
        for field in ("width", "height"):
            if getattr(shape, field) % family.spatial_multiple:
                raise InvalidRequest(field, f"must be a multiple of {family.spatial_multiple} for {family.name} models")
        if shape.num_frames % family.temporal_multiple != 1:
            raise InvalidRequest(
                "num_frames", f"must be {family.temporal_multiple}k+1 (e.g. 17, 33, 81) for {family.name} models"
            )
        return shape

"""Job-size ceilings: global settings, each overridable on an API key's row."""

from __future__ import annotations

from dataclasses import dataclass

from core.contract.shapes import Shape
from core.db import ApiKey
from core.settings import Settings


@dataclass(frozen=True)
class SizeLimits:
    max_pixels: int
    max_frames: int
    max_steps: int
    max_cost: int

    @classmethod
    def for_key(cls, key: ApiKey, settings: Settings) -> SizeLimits:
        def pick(name: str) -> int:
            own = getattr(key, name)
            return own if own is not None else getattr(settings, name)

        return cls(*(pick(name) for name in ("max_pixels", "max_frames", "max_steps", "max_cost")))

    def violations(self, shape: Shape, compare: bool = False) -> list[tuple[str, str]]:
        """(field, rule) for every ceiling ``shape`` is over; ``compare`` runs the uncached baseline after the
        job, so its cost counts twice."""
        pixels = shape.width * shape.height
        problems = []
        if pixels > self.max_pixels:
            rule = f"width x height must be at most {self.max_pixels} pixels (asked {shape.width}x{shape.height})"
            problems += [("width", rule), ("height", rule)]
        if shape.num_frames > self.max_frames:
            problems.append(("num_frames", f"must be at most {self.max_frames}"))
        if shape.num_inference_steps > self.max_steps:
            problems.append(("num_inference_steps", f"must be at most {self.max_steps}"))
        run = pixels * shape.num_frames * shape.num_inference_steps
        cost = run * 2 if compare else run
        if not problems and cost > self.max_cost:
            if compare:
                rule = (
                    f"with compare the uncached baseline runs too: 2 x width x height x num_frames x "
                    f"num_inference_steps must be at most {self.max_cost} (asked {cost})"
                )
                # Named as compare when the job alone would fit.
                problems.append(("compare" if run <= self.max_cost else "num_inference_steps", rule))
            else:
                rule = (
                    f"width x height x num_frames x num_inference_steps must be at most {self.max_cost} (asked {cost})"
                )
                problems.append(("num_inference_steps", rule))
        return problems

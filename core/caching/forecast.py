"""A Taylor series of a tensor over denoising steps, from its finite differences (TaylorSeer).

The math of diffusers' ``TaylorSeerState``: on each computed step the value is the 0th factor
and each higher factor is the change of the one below since the last computed step, divided by
the steps between them; a forecast ``offset`` steps later sums ``factor_k * offset**k / k!``.
"""

from __future__ import annotations

import math

import torch


class TaylorSeries:
    def __init__(self, order: int) -> None:
        self.order = order
        self.factors: list[torch.Tensor] = []
        self.last_step: int | None = None

    def update(self, step: int, value: torch.Tensor) -> None:
        factors = [value]
        if self.last_step is not None:
            distance = step - self.last_step
            for previous in self.factors[: self.order]:
                factors.append((factors[-1] - previous) / distance)
        self.factors = factors
        self.last_step = step

    def predict(self, step: int) -> torch.Tensor:
        offset = step - self.last_step
        forecast = self.factors[0]
        for k, factor in enumerate(self.factors[1:], start=1):
            forecast = forecast + factor * (offset**k / math.factorial(k))
        return forecast

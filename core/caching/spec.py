"""What a request says about caching, validated, and how it becomes a TimestepCache."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.caching.base import TimestepCache
from core.caching.profiles import ProfileStore, transformer_signature
from core.caching.registry import STRATEGIES
from core.errors import CacheConfigError
from core.models.families import Shape


class CacheSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: str = Field(default="none", description="none, teacache, magcache or easycache.")
    params: dict[str, Any] = Field(default_factory=dict, description="The strategy's parameters.")
    profile: str | None = Field(default=None, description="Calibration profile; default: the nearest one.")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, strategy: str) -> str:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        return strategy

    @model_validator(mode="after")
    def _valid_params(self) -> CacheSpec:
        try:
            STRATEGIES[self.strategy].Params.model_validate(self.params)
        except ValidationError as exc:
            problems = "; ".join(f"params.{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors())
            raise ValueError(f"{self.strategy}: {problems}") from None
        return self

    def build(self, transformer: torch.nn.Module, shape: Shape, profiles: ProfileStore) -> TimestepCache:
        strategy = STRATEGIES[self.strategy]
        params = strategy.Params.model_validate(self.params)
        signature = transformer_signature(transformer)
        profile = None
        if self.profile is not None:
            profile = profiles.get(self.profile)
            if not profile.matches(signature):
                raise CacheConfigError(
                    f"cache.profile: profile {profile.name!r} was calibrated for {profile.transformer}, "
                    f"not for this transformer ({signature})"
                )
        elif strategy.needs is not None:
            profile = profiles.nearest(signature, shape, strategy.needs)
            if profile is None:
                raise CacheConfigError(
                    f"cache.profile: {self.strategy} needs a calibration profile and none matches this "
                    f"transformer ({signature}); create one with `skipstep calibrate`"
                )
        if profile is not None and strategy.needs is not None and getattr(profile, strategy.needs) is None:
            raise CacheConfigError(f"cache.profile: profile {profile.name!r} has no {strategy.needs} data")
        return strategy(params, profile)


def parse_param(item: str) -> tuple[str, Any]:
    """A command line's ``NAME=VALUE`` strategy parameter; numbers become numbers, the rest stays text."""
    name, sep, value = item.partition("=")
    if not sep or not name.strip():
        raise CacheConfigError(f"--cache-param: expected NAME=VALUE, got {item!r}")
    for parse in (int, float):
        try:
            return name.strip(), parse(value)
        except ValueError:
            continue
    return name.strip(), value.strip()

"""Timestep-cache strategies as a request names them: each strategy's parameter schema, and the
``cache`` part of a request (strategy, parameters, calibration profile), validated.

The rules themselves are engine code (``core.caching``); adding a strategy is its parameter
schema and one ``StrategyInfo`` line here, one engine module and one line in the engine's registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import CacheConfigError


class CacheParams(BaseModel):
    """Base of every strategy's parameter schema."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TeaCacheParams(CacheParams):
    threshold: float = Field(default=0.08, ge=0, description="Accumulated rescaled change below which a step reuses.")
    use_ret_steps: bool = Field(
        default=True, description="Compare timestep_proj and always compute the first 5 steps (else temb, first/last)."
    )


class MagCacheParams(CacheParams):
    threshold: float = Field(default=0.12, ge=0, description="Accumulated error below which a step reuses.")
    max_skip_steps: int = Field(default=2, ge=1, description="K: most consecutive reused steps per branch.")
    retention_ratio: float = Field(default=0.2, ge=0, lt=1, description="Share of the first calls that always compute.")


class EasyCacheParams(CacheParams):
    threshold: float = Field(
        default=0.05, ge=0, description="Accumulated predicted change below which a step reuses (0.1 ~2x, 0.2 ~3x)."
    )
    warmup_ratio: float = Field(default=0.2, ge=0, lt=1, description="Share of the first steps that always compute.")


class TaoCacheParams(CacheParams):
    threshold: float = Field(
        default=0.5,
        ge=0,
        description="Accumulated unpredicted change, in last computed deltas, below which a late step is predicted.",
    )
    max_skip_steps: int = Field(default=3, ge=1, description="K: most consecutive predicted steps per branch.")
    start_ratio: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="Share of the first steps left to the early rule; TaoCache predicts only after it.",
    )
    early: Literal["none", "magcache", "teacache"] = Field(
        default="none",
        description="Rule for the early and middle steps (with its published defaults); none: compute them.",
    )


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    Params: type[CacheParams]
    # The calibration-profile field the strategy reads; None: it needs no calibration.
    needs: str | None
    summary: str


STRATEGIES: dict[str, StrategyInfo] = {
    info.name: info
    for info in (
        StrategyInfo("none", CacheParams, None, "Compute every step: the baseline."),
        StrategyInfo(
            "teacache",
            TeaCacheParams,
            "teacache",
            "Reuse while the accumulated, polynomially rescaled change of the timestep embedding is small.",
        ),
        StrategyInfo(
            "magcache",
            MagCacheParams,
            "magcache",
            "Reuse while the accumulated error of calibrated residual-magnitude ratios is small.",
        ),
        StrategyInfo(
            "easycache",
            EasyCacheParams,
            None,
            "Reuse the whole model's transformation while its predicted change is small; no calibration.",
        ),
        StrategyInfo(
            "taocache",
            TaoCacheParams,
            "taocache",
            "Predict the late steps' output from calibrated cosines and norm ratios of consecutive output deltas.",
        ),
    )
}


class CacheSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: str = Field(default="none", description=f"One of: {', '.join(STRATEGIES)}.")
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
            self.parsed_params()
        except ValidationError as exc:
            problems = "; ".join(f"params.{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors())
            raise ValueError(f"{self.strategy}: {problems}") from None
        return self

    @property
    def info(self) -> StrategyInfo:
        return STRATEGIES[self.strategy]

    def parsed_params(self) -> CacheParams:
        return self.info.Params.model_validate(self.params)


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

"""Timestep-cache strategies as a request names them: each strategy's parameter schema, and the
``cache`` part of a request (strategy, parameters, calibration profile), validated.

The rules themselves are engine code (``core.caching``); adding a strategy is its parameter
schema and one ``StrategyInfo`` line here, one engine module and one line in the engine's registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.contract import examples
from core.contract.frontier import Target
from core.errors import CacheConfigError

# Not a strategy: a job that names a target instead, for which the service picks a setting at submit.
AUTO = "auto"


class CacheParams(BaseModel):
    """Base of every strategy's parameter schema."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    # Whether block_rule has anything to check: the strategy's parameters count the transformer's blocks.
    depends_on_blocks: ClassVar[bool] = False

    def block_rule(self, num_blocks: int) -> str | None:
        """The rule these parameters break on a transformer of ``num_blocks`` blocks, if any."""
        return None

    @property
    def composed_needs(self) -> str | None:
        """The calibration-profile field of a rule these parameters compose with (Chipmunk's step_cache)."""
        return None


class PredictorParams(CacheParams):
    """What a skipped call adds to the cached unit's input: the last residual, or its Taylor forecast."""

    predictor: Literal["reuse", "taylorseer"] = Field(
        default="reuse",
        description="reuse: the branch's last computed residual; taylorseer: the residual extrapolated from its "
        "finite differences over the last computed steps (TaylorSeer).",
        examples=["reuse"],
    )
    predictor_order: int = Field(
        default=1, ge=1, le=4, description="Taylor order of the taylorseer predictor.", examples=[1]
    )


class TeaCacheParams(PredictorParams):
    # Defaults: the TeaCache4Wan2.1 1.3B "fast" setting (--teacache_thresh 0.08 without --use_ret_steps), the
    # TeaCache row EasyCache's README compares against. use_ret_steps=true reproduces the reference's
    # retention-steps rows (its published 1.3B thresholds 0.05-0.10).
    threshold: float = Field(
        default=0.08, ge=0, description="Accumulated rescaled change below which a step reuses.", examples=[0.08]
    )
    use_ret_steps: bool = Field(
        default=False,
        description="Compare timestep_proj and always compute the first 5 steps (else temb, first and last steps).",
        examples=[False],
    )


class MagCacheParams(PredictorParams):
    threshold: float = Field(
        default=0.12, ge=0, description="Accumulated error below which a step reuses.", examples=[0.12]
    )
    max_skip_steps: int = Field(
        default=2, ge=1, description="K: most consecutive reused steps per branch.", examples=[2]
    )
    retention_ratio: float = Field(
        default=0.2, ge=0, lt=1, description="Share of the first calls that always compute.", examples=[0.2]
    )


class EasyCacheParams(CacheParams):
    threshold: float = Field(
        default=0.05,
        ge=0,
        description="Accumulated predicted change below which a step reuses (0.1 ~2x, 0.2 ~3x).",
        examples=[0.1],
    )
    warmup_steps: int = Field(
        default=10, ge=0, description="First steps that always compute (the reference hard-codes 10).", examples=[10]
    )
    warmup_ratio: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="When set, int(ratio x steps) warm-up steps instead of warmup_steps.",
        examples=[0.2],
    )


class FBCacheParams(PredictorParams):
    # diffusers' FirstBlockCacheConfig: threshold 0.05.
    threshold: float = Field(
        default=0.05,
        ge=0,
        description="Relative L1 change of the first block's residual since the last computed step at or below "
        "which the remaining blocks reuse their residual.",
        examples=[0.05],
    )


class DBCacheParams(PredictorParams):
    # cache-dit's DBCacheConfig defaults (F8B0, threshold 0.08, 8 warm-up steps, no caps).
    Fn_compute_blocks: int = Field(
        default=8, ge=1, description="Fn: first blocks that always compute; their residual is compared.", examples=[8]
    )
    Bn_compute_blocks: int = Field(
        default=0,
        ge=0,
        description="Bn: last blocks that always compute, on top of the reused middle residual.",
        examples=[0],
    )
    residual_diff_threshold: float = Field(
        default=0.08,
        ge=0,
        description="Relative L1 change of the Fn residual below which the middle blocks reuse (>= 1: always).",
        examples=[0.08],
    )
    max_warmup_steps: int = Field(default=8, ge=0, description="First steps that never reuse.", examples=[8])
    warmup_interval: int = Field(
        default=1,
        ge=1,
        description="Within the warm-up, only every n-th step is forced (the others may reuse).",
        examples=[1],
    )
    max_cached_steps: int = Field(
        default=-1, ge=-1, description="Most reused steps per branch (-1: no limit).", examples=[20]
    )
    max_continuous_cached_steps: int = Field(
        default=-1,
        ge=-1,
        description="Most consecutive reused steps per branch, counted as cache-dit counts (-1: no limit).",
        examples=[3],
    )
    steps_computation_mask: list[Literal[0, 1]] | None = Field(
        default=None,
        description="Per step: 1 always computes, 0 may reuse; steps past its end may reuse.",
        examples=[[1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1]],
    )
    steps_computation_policy: Literal["dynamic", "static"] = Field(
        default="dynamic",
        description="For mask-0 steps: dynamic (threshold and caps decide) or static (always reuse).",
        examples=["dynamic"],
    )

    depends_on_blocks: ClassVar[bool] = True

    def block_rule(self, num_blocks: int) -> str | None:
        first, last = self.Fn_compute_blocks, self.Bn_compute_blocks
        if first + last < num_blocks:
            return None
        return (
            f"Fn_compute_blocks + Bn_compute_blocks ({first} + {last}) must leave at least one of the "
            f"transformer's {num_blocks} blocks to cache"
        )


class TaylorSeerParams(CacheParams):
    # diffusers' TaylorSeerCacheConfig defaults: cache_interval 5, disable_cache_before_step 3, max_order 1.
    order: int = Field(default=1, ge=1, le=4, description="Taylor order of the forecast.", examples=[1])
    warmup_steps: int = Field(default=3, ge=1, description="First steps that always compute.", examples=[3])
    interval: int = Field(
        default=5, ge=1, description="After the warm-up, one computed step in every `interval` steps.", examples=[5]
    )
    stop_step: int | None = Field(
        default=None, ge=1, description="Steps from here on always compute (null: none).", examples=[45]
    )


class TaoCacheParams(CacheParams):
    threshold: float = Field(
        default=0.5,
        ge=0,
        description="Accumulated unpredicted change, in last computed deltas, below which a late step is predicted.",
        examples=[0.5],
    )
    max_skip_steps: int = Field(
        default=3, ge=1, description="K: most consecutive predicted steps per branch.", examples=[3]
    )
    start_ratio: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="Share of the first steps left to the early rule; TaoCache predicts only after it.",
        examples=[0.5],
    )
    early: Literal["none", "magcache", "teacache"] = Field(
        default="none",
        description="Rule for the early and middle steps (with its published defaults); none: compute them.",
        examples=["magcache"],
    )


class ChipmunkParams(CacheParams):
    # Defaults: the reference's Wan2.1 configuration (github.com/sandyresearch/chipmunk,
    # examples/wan/chipmunk-config.yml): attention sparse, MLP dense, 10% top keys + 1% random keys, a 5-voxel local
    # window, 2 dense layers, a dense step every 10 steps, voxels of 4x6x8 tokens (the kernels' 192-query groups).
    attn_top_keys: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of the keys each query voxel recomputes on a sparse step: the columns with the largest "
        "attention mass at the last dense step (1: every key, nothing sparse).",
        examples=[0.1],
    )
    attn_random_keys: float = Field(
        default=0.01, ge=0, le=1, description="Share of the keys added at random to each voxel's set.", examples=[0.01]
    )
    attn_local_voxels: int = Field(
        default=5,
        ge=0,
        description="Window, in voxels per axis, of keys around each query voxel that are always recomputed (0: none).",
        examples=[5],
    )
    voxel_shape: tuple[int, int, int] = Field(
        default=(4, 6, 8),
        description="Frames, rows and columns of latent tokens per voxel: the query groups sharing one key set, and "
        "the MLP's token blocks.",
        examples=[[4, 6, 8]],
    )
    first_dense_layers: int = Field(
        default=2, ge=0, description="First blocks whose attention and MLP always run dense.", examples=[2]
    )
    attn_full_step_every: int = Field(
        default=10,
        ge=1,
        description="Steps 0 and 1 and every n-th step run attention dense and pick each voxel's keys afresh.",
        examples=[10],
    )
    attn_full_steps: list[int] | None = Field(
        default=None,
        description="The dense attention steps instead of attn_full_step_every (the reference's HunyuanVideo: "
        "[0, 1, 10, 40]).",
        examples=[[0, 1, 10, 40]],
    )
    mlp_top_keys: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of the MLP's hidden columns each token block recomputes on a sparse step, those whose "
        "pre-activation moved most; null: the MLP runs dense (the reference's Wan and HunyuanVideo settings).",
        examples=[0.3],
    )
    mlp_random_keys: float = Field(
        default=0.05, ge=0, le=1, description="Share of the MLP columns added at random.", examples=[0.05]
    )
    mlp_full_step_every: int = Field(
        default=10, ge=1, description="Every n-th step runs the MLP dense and refreshes its caches.", examples=[10]
    )
    step_cache: Literal["none", "magcache", "teacache"] = Field(
        default="none",
        description="A step cache on top (the reference's 'Chipmunk + step caching'): that rule, with its "
        "published defaults and the model's profile, reuses whole steps' block output; none: every step runs.",
        examples=["magcache"],
    )

    @field_validator("voxel_shape")
    @classmethod
    def _positive_voxel(cls, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(shape) < 1:
            raise ValueError("every side of a voxel must be at least 1")
        return shape

    @property
    def composed_needs(self) -> str | None:
        return None if self.step_cache == "none" else self.step_cache


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
            "fbcache",
            FBCacheParams,
            None,
            "Always compute the first block; reuse the others' residual while the first block's residual barely "
            "changes (diffusers' FirstBlockCache); no calibration.",
        ),
        StrategyInfo(
            "dbcache",
            DBCacheParams,
            None,
            "Always compute the first Fn and last Bn blocks; reuse the middle blocks' residual while the Fn residual "
            "barely changes, within warm-up, caps and step mask (cache-dit's DBCache); no calibration.",
        ),
        StrategyInfo(
            "taylorseer",
            TaylorSeerParams,
            None,
            "Compute every interval-th step after a warm-up; forecast the blocks' residual in between from its "
            "finite differences (TaylorSeer); no calibration.",
        ),
        StrategyInfo(
            "taocache",
            TaoCacheParams,
            "taocache",
            "Predict the late steps' output from calibrated cosines and norm ratios of consecutive output deltas.",
        ),
        StrategyInfo(
            "chipmunk",
            ChipmunkParams,
            None,
            "Inside every block: recompute only the attention keys and MLP columns that changed most and add their "
            "change to the outputs cached at the last dense step (Chipmunk's sparse deltas); no calibration.",
        ),
    )
}


class CacheSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: str = Field(
        default="none",
        description=f"One of: {', '.join(STRATEGIES)}; or `{AUTO}` with a `target`, for which the service picks the "
        "fastest setting of the model's measured frontier that meets it.",
        examples=["magcache"],
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="The strategy's parameters.",
        examples=[{"threshold": 0.12, "max_skip_steps": 2}],
    )
    profile: str | None = Field(
        default=None,
        description="Calibration profile (`GET /models` lists them); default: the nearest one for the model.",
        examples=[examples.PROFILE],
    )
    target: Target | None = Field(
        default=None,
        # Left out of dumps when absent: a request's fingerprint (Idempotency-Key) stays what it was before targets.
        exclude_if=lambda target: target is None,
        description=f"With strategy `{AUTO}` only: the fidelity, tier or deadline the chosen setting must meet.",
        examples=[{"min_psnr": 30}],
    )

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, strategy: str) -> str:
        if strategy not in STRATEGIES and strategy != AUTO:
            raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}, {AUTO}")
        return strategy

    @model_validator(mode="after")
    def _valid_params(self) -> CacheSpec:
        if self.strategy == AUTO:
            if self.target is None:
                raise ValueError(f"{AUTO}: needs target")
            if self.params or self.profile is not None:
                raise ValueError(f"{AUTO}: takes a target, not params or profile")
            return self
        if self.target is not None:
            raise ValueError(f"target: only with strategy {AUTO!r}")
        try:
            self.parsed_params()
        except ValidationError as exc:
            problems = "; ".join(f"params.{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors())
            raise ValueError(f"{self.strategy}: {problems}") from None
        return self

    @property
    def info(self) -> StrategyInfo:
        if self.strategy == AUTO:
            raise CacheConfigError(f"cache.strategy: {AUTO} is resolved by the service at submit; name a strategy")
        return STRATEGIES[self.strategy]

    @property
    def needs(self) -> str | None:
        """The calibration-profile field the run reads: its strategy's, or that of a rule it composes with."""
        return self.info.needs or self.parsed_params().composed_needs

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

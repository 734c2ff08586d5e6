"""Each decision rule against hand-checked sequences and the published schedules."""

from pathlib import Path

import pytest
import torch

from core.caching.base import RunPlan
from core.caching.dbcache import DBCache
from core.caching.easycache import EasyCache
from core.caching.fbcache import FBCache
from core.caching.forecast import TaylorSeries
from core.caching.magcache import MagCache, nearest_interp
from core.caching.profiles import Profile, ProfileStore
from core.caching.taylorseer import TaylorSeer
from core.caching.teacache import TeaCache
from core.contract.strategies import (
    DBCacheParams,
    EasyCacheParams,
    FBCacheParams,
    MagCacheParams,
    TaylorSeerParams,
    TeaCacheParams,
)
from core.errors import CacheConfigError
from core.models.families import WanFamily


def plan(steps: int, branches: tuple[str, ...] = ("cond", "uncond")) -> RunPlan:
    return RunPlan(steps, branches, torch.zeros(steps), torch.nn.Identity(), WanFamily())


def published() -> Profile:
    return ProfileStore(Path("/nonexistent")).get("wan2.1-t2v-1.3b")


def schedule(decisions: list[bool]) -> str:
    return "".join("C" if d else "." for d in decisions)


@pytest.mark.parametrize(
    ("threshold", "k", "computed", "expected"),
    [
        (0.12, 2, 25, "CCCCCCCCCC..C..C..C..C..C..C..C..C..C..C..C.C.C.CC"),
        (0.12, 4, 21, "CCCCCCCCCC....C....C....C....C....C...C..C..C.C.CC"),
        (0.24, 6, 18, "CCCCCCCCCC......C......C......C.....C....C...C.C.C"),
    ],
)
def test_magcache_reproduces_the_published_schedules(threshold, k, computed, expected) -> None:
    cache = MagCache(MagCacheParams(threshold=threshold, max_skip_steps=k), published())
    cache.prepare(plan(50))
    figures = cache.planned()
    for branch in ("cond", "uncond"):
        assert figures.branches[branch].computed == computed
        assert figures.branches[branch].schedule == expected
    assert figures.ideal_speedup == pytest.approx(50 / computed)


def test_magcache_on_a_hand_checked_table() -> None:
    # retention 0: step 0 computes (nothing cached); then G, k, E by hand:
    # s1: G=.9 E=.1 reuse | s2: G=.855 E=.245 compute | s3: G=1 E=0 reuse | s4: G=.9 E=.1 reuse
    # s5: G=.72 E=.38 compute
    ratios = [1.0, 0.9, 0.95, 1.0, 0.9, 0.8]
    cache = MagCache(MagCacheParams(threshold=0.2, max_skip_steps=5, retention_ratio=0.0), None)
    cache.plan = plan(6)
    assert schedule(cache.replay(0, ratios)) == "C.C..C"


def test_magcache_honours_k_and_retention() -> None:
    flat = [1.0] * 20  # error never grows: only K and retention stop reuse
    cache = MagCache(MagCacheParams(threshold=0.5, max_skip_steps=3, retention_ratio=0.25), None)
    cache.plan = plan(20)
    assert schedule(cache.replay(0, flat)) == "CCCCC...C...C...C..."
    cache = MagCache(MagCacheParams(threshold=0.5, max_skip_steps=1, retention_ratio=0.0), None)
    cache.plan = plan(20)
    assert schedule(cache.replay(0, flat)) == "C." * 10


def test_magcache_retention_counts_calls_across_branches() -> None:
    # 2 branches x 5 steps x 0.3 = 3 retained calls: cond 0, uncond 0, cond 1.
    cache = MagCache(MagCacheParams(retention_ratio=0.3), None)
    cache.plan = plan(5)
    assert [cache.forced(1, 0), cache.forced(1, 1), cache.forced(2, 0)] == [True, False, False]


def test_magcache_branches_keep_separate_state() -> None:
    profile = published().model_copy(update={"magcache": {"cond": [1.0] * 50, "uncond": [1.0] + [0.9] * 49}})
    cache = MagCache(MagCacheParams(threshold=0.12, max_skip_steps=4), profile)
    cache.prepare(plan(50))
    figures = cache.planned().branches
    # cond: the error stays 0, so K=4 alone bounds reuse; uncond: G=.9 gives E=.1 (reuse), then
    # G=.81 gives E=.29 (compute), again and again.
    assert figures["cond"].schedule == "C" * 10 + "....C" * 8
    assert figures["uncond"].schedule == "C" * 10 + ".C" * 20


@pytest.mark.parametrize(
    ("length", "indices"),
    [(4, [0, 3, 6, 9]), (1, [9]), (10, list(range(10))), (3, [0, 4, 9]), (6, [0, 2, 4, 5, 7, 9])],
)
def test_nearest_interpolation(length, indices) -> None:
    # length 6: scale 1.8 -> 0, 1.8, 3.6, 5.4, 7.2, 9 -> 0, 2, 4, 5, 7, 9
    # length 3: scale 4.5 -> 0, 4.5, 9 -> 0, 4 (half to even), 9
    assert nearest_interp(list(range(10)), length) == indices


def test_magcache_table_is_interpolated_to_the_step_count() -> None:
    cache = MagCache(MagCacheParams(), published())
    cache.prepare(plan(25))
    table = published().magcache["cond"]
    assert cache.signals()["cond"] == [table[round(i * 49 / 24)] for i in range(25)]
    assert len(cache.schedule["cond"]) == 25


def test_teacache_rules_on_a_hand_checked_sequence() -> None:
    identity = published().model_copy(update={"teacache": {"temb": [0, 0, 0, 1, 0], "timestep_proj": [0, 0, 0, 1, 0]}})
    changes = [0.0] + [0.03] * 7
    plain = TeaCache(TeaCacheParams(threshold=0.05, use_ret_steps=False), identity)
    plain.plan = plan(8)
    # first and last steps forced; otherwise the sum 0.03 reuses, 0.06 computes
    assert schedule(plain.replay(0, changes)) == "C.C.C.CC"
    retained = TeaCache(TeaCacheParams(threshold=0.05, use_ret_steps=True), identity)
    retained.plan = plan(8)
    assert schedule(retained.replay(0, changes)) == "CCCCC.C."


def test_easycache_on_a_hand_checked_sequence() -> None:
    # The "model" is f(x) = 2x and the inputs are x_t = t + 1, so the transformation rate k is 2.
    # warm-up: steps 0-1; step 2: E = 2 * 1/4 = 0.5 reuse; step 3: E = 1.0 compute (k = 2)
    # steps 4, 5: E = 0.25, 0.5 reuse; step 6: 0.75 compute; 7, 8: 1/7, 2/7 reuse; step 9 is the last.
    cache = EasyCache(EasyCacheParams(threshold=0.6, warmup_ratio=0.2))
    cache.prepare(plan(10))
    outputs = []
    for step in range(10):
        x = torch.full((4,), float(step + 1))
        for branch in ("cond", "uncond"):
            state = cache.state_for(branch)
            out = cache.enter(state, x)
            if out is None:
                out = 2 * x
            cache.exit(state, out)
            outputs.append(out[0].item())
    report = cache.report(1.0)
    assert report.branches["cond"].schedule == "CC.C..C..C"
    assert report.branches["uncond"].schedule == "CC.C..C..C"
    assert not report.scheduled_ahead
    # Reused at step 2: x_2 + (v_1 - x_1) = 3 + 2 = 5, for either branch.
    assert outputs[4:6] == [5.0, 5.0]


class _Stack(torch.nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Identity() for _ in range(layers))


def drive(cache, first_residuals: list[float], unit_residual=lambda step: 1.0, layers: int = 4) -> list[float]:
    """Runs one branch through the cache: per step, the always-computed blocks add ``first_residuals[step]``
    to a zero input; the cached unit adds ``unit_residual(step)``. Returns each step's unit output."""
    steps = len(first_residuals)
    cache.prepare(RunPlan(steps, ("cond",), torch.zeros(steps), _Stack(layers), WanFamily()))
    outputs = []
    for step, first in enumerate(first_residuals):
        state = cache.state_for("cond")
        state.call_input = torch.zeros(4)
        unit_input = torch.full((4,), first)
        output = cache.enter(state, unit_input)
        if output is None:
            output = unit_input + unit_residual(step)
        cache.exit(state, output)
        outputs.append(output[0].item())
    return outputs


def test_fbcache_rule_as_diffusers_first_block_cache() -> None:
    # Relative change against the first-block residual of the last computed step; reuse while <= threshold.
    # s1: .05 reuse | s2: .08 reuse | s3: .2 compute (r_prev = 1.2) | s4: .05/1.2 reuse | s5: .1/1.2 reuse
    cache = FBCache(FBCacheParams(threshold=0.1))
    drive(cache, [1.0, 1.05, 1.08, 1.2, 1.25, 1.3])
    assert cache.report(1.0).branches["cond"].schedule == "C..C.."
    assert not cache.report(1.0).scheduled_ahead
    # diffusers computes only when the change is strictly above the threshold.
    cache = FBCache(FBCacheParams(threshold=0.5))
    drive(cache, [1.0, 1.5, 1.5])
    assert cache.report(1.0).branches["cond"].schedule == "C.."
    assert cache.unit_blocks(8) == (1, 8)


def dbcache(**params) -> DBCache:
    return DBCache(DBCacheParams(**{"Fn_compute_blocks": 1, "max_warmup_steps": 0, **params}))


@pytest.mark.parametrize(
    ("params", "first_residuals", "expected"),
    [
        # Flat residuals: only the caps decide. The continuous counter runs 1, 2 | reset | 0 (gap), 2 | reset ...
        ({"max_warmup_steps": 2, "max_continuous_cached_steps": 2}, [1.0] * 10, "CC..C..C.."),
        # A compute forced by the threshold does not reset the counter (cache-dit's bookkeeping): after step 3
        # the counter is still 2, so only two steps reuse before the cap.
        ({"max_continuous_cached_steps": 3}, [1.0] * 3 + [2.0] * 8, "C..C..C...C"),
        ({"max_cached_steps": 3}, [1.0] * 8, "C...CCCC"),
        # Warm-up every other step: 0, 2 forced; 1 and 3 may reuse.
        ({"max_warmup_steps": 4, "warmup_interval": 2}, [1.0] * 6, "C.C..."),
        # The threshold: relative change 0.25 >= 0.2 computes.
        ({"residual_diff_threshold": 0.2}, [1.0, 1.1, 1.25, 1.3], "C.C."),
        # 0 never reuses; 1 or more always does, whatever the change.
        ({"residual_diff_threshold": 0.0}, [1.0] * 4, "CCCC"),
        ({"residual_diff_threshold": 1.0}, [1.0, 5.0, 9.0, 20.0], "C..."),
        # A mask's 1s always compute and bound the warm-up; static 0s reuse whatever the change, dynamic 0s
        # still ask the threshold; steps past the mask's end are dynamic.
        (
            {"max_warmup_steps": 8, "steps_computation_mask": [1, 1, 0, 0, 1, 0], "steps_computation_policy": "static"},
            [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 64.0],
            "CC..C.C.",
        ),
        (
            {"max_warmup_steps": 8, "steps_computation_mask": [1, 1, 0, 0, 1, 0]},
            [1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 8.0, 8.0],
            "CCC.C.C.",
        ),
    ],
)
def test_dbcache_rules_as_cache_dit(params, first_residuals, expected) -> None:
    cache = dbcache(**params)
    drive(cache, first_residuals)
    assert cache.report(1.0).branches["cond"].schedule == expected


def test_dbcache_unit_is_between_fn_and_bn() -> None:
    assert dbcache(Fn_compute_blocks=2, Bn_compute_blocks=1).unit_blocks(8) == (2, 7)
    with pytest.raises(CacheConfigError, match=r"Fn_compute_blocks \+ Bn_compute_blocks \(3 \+ 1\) must leave"):
        drive(dbcache(Fn_compute_blocks=3, Bn_compute_blocks=1), [1.0], layers=4)


def test_taylorseer_schedule_is_diffusers() -> None:
    from diffusers.hooks.hooks import CacheContext, StateManager
    from diffusers.hooks.taylorseer_cache import TaylorSeerCacheHook, TaylorSeerState

    for warmup, interval, stop in [(3, 5, None), (2, 3, None), (4, 2, 15)]:
        manager = StateManager(TaylorSeerState, (), {"taylor_factors_dtype": torch.float32})
        manager.set_context(CacheContext("cond"))
        hook = TaylorSeerCacheHook(interval, warmup, torch.float32, manager, disable_cache_after_step=stop)
        reference = [hook._measure_should_compute()[0] for _ in range(20)]
        cache = TaylorSeer(TaylorSeerParams(warmup_steps=warmup, interval=interval, stop_step=stop))
        cache.prepare(plan(20))
        assert cache.planned().branches["cond"].schedule == schedule(reference)
    assert schedule(reference) != "C" * 20


@pytest.mark.parametrize("order", [1, 2, 3])
def test_taylor_series_forecasts_as_diffusers(order) -> None:
    from diffusers.hooks.taylorseer_cache import TaylorSeerState

    reference = TaylorSeerState(taylor_factors_dtype=torch.float64, max_order=order)
    series = TaylorSeries(order)
    generator = torch.Generator().manual_seed(0)
    for step in (0, 1, 2, 5, 9):
        value = torch.randn(3, generator=generator, dtype=torch.float64)
        reference.current_step = step
        reference.update((value,))
        series.update(step, value)
        for ahead in (1, 2, 4):
            reference.current_step = step + ahead
            assert torch.allclose(series.predict(step + ahead), reference.predict()[0])


def test_taylorseer_predictor_extrapolates_the_residual() -> None:
    # Steps 0 and 1 compute (the first-block residual jumps), 2 and 3 reuse. The unit's residual grows by 2 a
    # step: the plain reuse adds the last one (7), the order-1 forecast 9 and 11.
    first, residual = [1.0, 2.0, 2.0, 2.0], lambda step: 5.0 + 2 * step
    reuse = drive(FBCache(FBCacheParams(threshold=0.1)), first, residual)
    forecast = drive(FBCache(FBCacheParams(threshold=0.1, predictor="taylorseer")), first, residual)
    assert reuse == [6.0, 9.0, 9.0, 9.0]
    assert forecast == [6.0, 9.0, 11.0, 13.0]


def test_easycache_defaults_reproduce_the_reference_warmup() -> None:
    # The reference always computes its first 10 steps and the last; warmup_ratio keeps the old scaling.
    cache = EasyCache()
    cache.plan = plan(20)
    assert [step for step in range(20) if cache.forced(step, 0)] == [*range(10), 19]
    scaled = EasyCache(EasyCacheParams(warmup_ratio=0.2))
    scaled.plan = plan(20)
    assert [step for step in range(20) if scaled.forced(step, 0)] == [0, 1, 2, 3, 19]


def test_teacache_defaults_are_the_reference_fast_setting() -> None:
    assert TeaCacheParams() == TeaCacheParams(threshold=0.08, use_ret_steps=False)

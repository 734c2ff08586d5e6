"""Each decision rule against hand-checked sequences and the published schedules."""

from pathlib import Path

import pytest
import torch

from core.caching.base import RunPlan
from core.caching.easycache import EasyCache, EasyCacheParams
from core.caching.magcache import MagCache, MagCacheParams, nearest_interp
from core.caching.profiles import Profile, ProfileStore
from core.caching.teacache import TeaCache, TeaCacheParams
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

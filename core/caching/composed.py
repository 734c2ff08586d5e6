"""Step rules a strategy runs beside its own (TaoCache's ``early``, Chipmunk's ``step_cache``): MagCache or
TeaCache with their published defaults, on the run's calibration profile, and the letter each writes in the
branch figures' ``rules``."""

from __future__ import annotations

from core.caching.base import RunPlan, TimestepCache
from core.caching.magcache import MagCache
from core.caching.profiles import Profile
from core.caching.teacache import TeaCache
from core.errors import CacheConfigError

STEP_RULES: dict[str, tuple[type[TimestepCache], str]] = {"magcache": (MagCache, "m"), "teacache": (TeaCache, "t")}


def step_rule_schedule(name: str, profile: Profile, plan: RunPlan, needed_by: str) -> dict[str, list[bool]]:
    """Per branch, the compute (True) / reuse (False) decisions of step rule ``name`` for ``plan``."""
    strategy, _ = STEP_RULES[name]
    if getattr(profile, strategy.needs) is None:
        raise CacheConfigError(
            f"cache.profile: profile {profile.name!r} has no {strategy.needs} data ({needed_by} needs it)"
        )
    rule = strategy(None, profile)
    rule.prepare(plan)
    return rule.schedule

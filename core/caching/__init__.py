"""Timestep caching: one base class, one module per strategy, calibration profiles."""

from core.caching.base import CacheParams, CacheReport, RunPlan, ScheduleFigures, TimestepCache
from core.caching.hooks import attached
from core.caching.profiles import Profile, ProfileStore, transformer_signature
from core.caching.registry import STRATEGIES
from core.caching.spec import CacheSpec

__all__ = [
    "STRATEGIES",
    "CacheParams",
    "CacheReport",
    "CacheSpec",
    "Profile",
    "ProfileStore",
    "RunPlan",
    "ScheduleFigures",
    "TimestepCache",
    "attached",
    "transformer_signature",
]

"""Strategies by name, and how a request's ``cache`` becomes a ready TimestepCache.

Adding a strategy is one module, one line here and its entry in ``core.contract.strategies``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.caching.base import TimestepCache
from core.caching.chipmunk import Chipmunk
from core.caching.dbcache import DBCache
from core.caching.easycache import EasyCache
from core.caching.fbcache import FBCache
from core.caching.magcache import MagCache
from core.caching.none import NoCache
from core.caching.profiles import ProfileStore, transformer_signature
from core.caching.taocache import TaoCache
from core.caching.taylorseer import TaylorSeer
from core.caching.teacache import TeaCache
from core.contract.loras import LoraSpec
from core.contract.shapes import Shape
from core.contract.strategies import CacheSpec
from core.errors import CacheConfigError

CACHES: dict[str, type[TimestepCache]] = {
    strategy.name: strategy
    for strategy in (
        NoCache,
        TeaCache,
        MagCache,
        EasyCache,
        FBCache,
        DBCache,
        TaylorSeer,
        TaoCache,
        Chipmunk,
    )
}


def build_cache(
    spec: CacheSpec,
    transformer: Any,
    shape: Shape,
    profiles: ProfileStore,
    expert: str = "",
    loras: Sequence[LoraSpec] = (),
) -> TimestepCache:
    """The spec's strategy with its parameters and calibration profile (named, or the nearest that fits: measured
    with the job's adapter set ``loras``, else the base model's); for one of two experts, with that expert's tables
    of the profile."""
    params = spec.parsed_params()
    strategy = CACHES[spec.strategy]
    needs = spec.needs
    signature = transformer_signature(transformer)
    profile = None
    if spec.profile is not None:
        profile = profiles.get(spec.profile)
        if not profile.matches(signature):
            raise CacheConfigError(
                f"cache.profile: profile {profile.name!r} was calibrated for {profile.transformer}, "
                f"not for this transformer ({signature})"
            )
    elif needs is not None:
        profile = profiles.nearest(signature, shape, needs, loras)
        if profile is None:
            raise CacheConfigError(
                f"cache.profile: {spec.strategy} needs a calibration profile and none matches this "
                f"transformer ({signature}); create one with `skipstep calibrate`"
            )
    if profile is not None and needs is not None and getattr(profile, needs) is None:
        raise CacheConfigError(f"cache.profile: profile {profile.name!r} has no {needs} data")
    if profile is not None:
        profile = profile.for_expert(expert)
        if needs is not None and getattr(profile, needs) is None:
            raise CacheConfigError(
                f"cache.profile: profile {profile.name!r} has no {needs} data for the {expert} expert"
            )
    return strategy(params, profile)

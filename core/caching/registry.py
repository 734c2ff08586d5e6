"""Strategies by name. Adding a strategy is one module and one line here."""

from core.caching.base import TimestepCache
from core.caching.easycache import EasyCache
from core.caching.magcache import MagCache
from core.caching.none import NoCache
from core.caching.teacache import TeaCache

STRATEGIES: dict[str, type[TimestepCache]] = {
    strategy.name: strategy for strategy in (NoCache, TeaCache, MagCache, EasyCache)
}

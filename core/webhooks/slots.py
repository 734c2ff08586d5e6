"""Delivery slots: attempts in flight per receiver and per API key, counted in Redis across every webhooks worker,
so that neither one slow receiver nor one key's many receivers can take the threads that send everyone's webhooks.

Each slot is a lease with an expiry (a member of a sorted set scored by when it lapses): a worker that dies
mid-attempt frees its slots when their leases lapse, with nothing to clean up."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import lru_cache
from urllib.parse import urlsplit

import redis

log = logging.getLogger("skipstep.webhooks")

# KEYS: the sets of leases to take one of each of (receiver, key); ARGV: their caps in the same order, then the
# lease's token and its length in ms. Returns 1 if a slot of each was taken, else 0 and takes none. Redis's clock
# alone dates the leases, so workers' clocks need not agree.
ACQUIRE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local n = #KEYS
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ms)
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[i]) then
    return 0
  end
end
local lease = tonumber(ARGV[n + 2])
for i = 1, n do
  redis.call('ZADD', KEYS[i], ms + lease, ARGV[n + 1])
  redis.call('PEXPIRE', KEYS[i], lease)
end
return 1
"""


def endpoint(url: str) -> str:
    """scheme://host:port: what one receiver is, for its cap."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def receiver_slots(url: str) -> str:
    return f"skipstep:webhooks:receiver:{endpoint(url)}"


def key_slots(owner_id: uuid.UUID) -> str:
    return f"skipstep:webhooks:key:{owner_id}"


@lru_cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)


@lru_cache
def _acquire(url: str) -> redis.commands.core.Script:
    return _client(url).register_script(ACQUIRE)


@contextmanager
def slot(
    redis_url: str, url: str, owner_id: uuid.UUID, receiver_cap: int, key_cap: int, lease: timedelta
) -> Iterator[bool]:
    """Yields True holding a slot of the receiver of ``url`` and one of the key ``owner_id``, each leased for at
    most ``lease``; or False at once if either has all its slots taken (or Redis cannot be reached)."""
    names = [receiver_slots(url), key_slots(owner_id)]
    token = uuid.uuid4().hex
    try:
        taken = bool(_acquire(redis_url)(keys=names, args=[receiver_cap, key_cap, token, _ms(lease)]))
    except redis.RedisError as exc:
        log.warning("no delivery slot taken: Redis unreachable (%s)", exc.__class__.__name__)
        taken = False
    try:
        yield taken
    finally:
        if taken:
            _release(redis_url, names, token)


def _release(redis_url: str, names: list[str], token: str) -> None:
    try:
        with _client(redis_url).pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrem(name, token)
            pipe.execute()
    except redis.RedisError as exc:
        log.warning("delivery slots not released (their leases lapse on their own): %s", exc.__class__.__name__)


def _ms(duration: timedelta) -> int:
    return max(1, round(duration.total_seconds() * 1000))

"""A token bucket per API key, kept in Redis so that it holds across API processes."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from functools import lru_cache

import redis

log = logging.getLogger("skipstep.limits")

# KEYS[1]: the bucket; ARGV: rate (tokens/s), burst (capacity), now (s). Returns {allowed, wait in ms}.
# One script, so that concurrent requests from many API processes take tokens atomically.
TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, wait}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int  # whole seconds, at least 1 when refused


class RateLimiter:
    def __init__(self, url: str) -> None:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        self._take = client.register_script(TAKE)

    def take(self, bucket: str, rate: float, burst: int) -> Verdict:
        """One request's token. Unlimited when ``rate`` is 0; allowed when Redis cannot be reached, as jobs
        are kept in the database and refusing every request would turn a broker outage into an API outage."""
        if rate <= 0:
            return Verdict(True, 0)
        try:
            allowed, wait_ms = self._take(keys=[f"skipstep:rate:{bucket}"], args=[rate, burst, time.time()])
        except redis.RedisError as exc:
            log.warning("rate limit not applied: Redis unreachable (%s)", exc.__class__.__name__)
            return Verdict(True, 0)
        return Verdict(bool(allowed), 0 if allowed else max(1, math.ceil(int(wait_ms) / 1000)))


@lru_cache
def limiter_for(url: str) -> RateLimiter:
    return RateLimiter(url)

"""A token bucket per API key, kept in Redis so that it holds across API processes."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import redis

from core.redis_async import script_for

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


async def take(url: str, bucket: str, rate: float, burst: int) -> Verdict:
    """One request's token from ``bucket`` on the Redis at ``url``. Unlimited when ``rate`` is 0; allowed when Redis
    cannot be reached, as jobs are kept in the database and refusing every request would turn a broker outage into
    an API outage."""
    if rate <= 0:
        return Verdict(True, 0)
    try:
        bucket_key = f"skipstep:rate:{bucket}"
        allowed, wait_ms = await script_for(url, TAKE)(keys=[bucket_key], args=[rate, burst, time.time()])
    except (redis.RedisError, OSError) as exc:
        log.warning("rate limit not applied: Redis unreachable (%s)", exc.__class__.__name__)
        return Verdict(True, 0)
    return Verdict(bool(allowed), 0 if allowed else max(1, math.ceil(int(wait_ms) / 1000)))

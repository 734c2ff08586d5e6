"""The synchronous Redis client of the broker's Redis, one per URL and process, shared by the API's worker threads
and the workers' code (its connection pool is thread-safe). Short timeouts: a request or a denoising step must not
hang on a stalled broker; callers treat every Redis error as "no answer"."""

from __future__ import annotations

from functools import lru_cache

import redis


@lru_cache
def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)

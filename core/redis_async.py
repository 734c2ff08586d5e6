"""asyncio Redis clients of the broker's Redis, one per URL and event loop (a client's connections belong to the
loop that opened them: uvicorn runs one loop per process, a test client one per session), and their Lua scripts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import redis.asyncio
from redis.commands.core import AsyncScript


@dataclass
class _Connection:
    client: redis.asyncio.Redis
    scripts: dict[str, AsyncScript] = field(default_factory=dict)


_connections: WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Connection]] = WeakKeyDictionary()


def _connection(url: str) -> _Connection:
    by_url = _connections.setdefault(asyncio.get_running_loop(), {})
    if url not in by_url:
        # Short timeouts: a request must not hang on a stalled broker.
        by_url[url] = _Connection(redis.asyncio.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5))
    return by_url[url]


def script_for(url: str, lua: str) -> AsyncScript:
    """``lua`` on the running loop's client of ``url`` (sent by its digest, loaded where Redis lacks it)."""
    connection = _connection(url)
    if lua not in connection.scripts:
        connection.scripts[lua] = connection.client.register_script(lua)
    return connection.scripts[lua]

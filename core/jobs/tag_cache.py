"""The entity tag the API last served for each job, kept in the broker's Redis, so that a poller's conditional
``GET /jobs/{id}`` of an unchanged job is answered 304 without the database (``api.conditional``).

An entry holds the job's owner, its tag and ``Retry-After`` basis, and the change counters it was read under:

- the job's own, bumped after every announced change of the job (``core.jobs.notify``, at commit);
- while the job is queued, its model's queue counter, bumped after every commit that moves a queued job's standing:
  a job entering or leaving the model's queue (a submit, a claim, a cancel, a requeue), or a worker of the model
  starting or stopping to take jobs (``core.jobs.workers``).

The API reads the counters before it reads the job from the database and stores them with the tag it computed
(``polling.read``); a change committed after that read bumps a counter, and the entry no longer matches. Two things
end an entry only by its age, ``ENTRY_SECONDS``: an announcement lost with the broker, and a worker that dies
without a word (noticed by the others' sweep after a few heartbeats, which bumps the counter; when it was the
model's last, nothing sweeps, and ``waiting_for_worker`` shows in a 304's tag at the latest then). Every Redis error
makes the cache miss: the database answers.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import redis

from core.redis_async import script_for
from core.redis_sync import client_for

log = logging.getLogger(__name__)

ENTRY_SECONDS = 30
# A counter outlives every entry read under it.
COUNTER_SECONDS = 24 * 3600
_JOB = "skipstep:changes:job:"
_QUEUE = "skipstep:changes:queue:"
_ENTRY = "skipstep:tag:"

# KEYS[1]: the entry, KEYS[2]: the job's counter. Returns {owner, tag, queue, retry_at} while the counters the entry was
# read under are current, else nil. The queue counter's name comes from the entry (one Redis server, not a cluster).
_LOOKUP = f"""
local e = redis.call('HMGET', KEYS[1], 'owner', 'tag', 'job', 'queue', 'queue_count', 'retry_at')
if not e[1] then return nil end
if (redis.call('GET', KEYS[2]) or '0') ~= e[3] then return nil end
if e[4] ~= '' and (redis.call('GET', '{_QUEUE}' .. e[4]) or '0') ~= e[5] then return nil end
return {{e[1], e[2], e[4], e[6]}}
"""


@dataclass(frozen=True)
class Cached:
    owner: str
    tag: str
    queued: bool
    retry_at: float | None  # a queued job's Retry-After basis: its estimated start (epoch seconds), if any


@dataclass(frozen=True)
class Stamp:
    """The counters read before a job was read from the database: its own, and the queue counter of each model."""

    job: str
    queues: dict[str, str] = field(default_factory=dict)


class TagCache:
    """The API's writes to the cache, from the worker threads that read jobs from the database."""

    def __init__(self, url: str) -> None:
        self._client = client_for(url)

    def stamp(self, job_id: uuid.UUID, models: Sequence[str]) -> Stamp | None:
        """The job's counter and the queue counters of ``models`` (the job's model is not known yet), in one round
        trip."""
        try:
            values = self._client.mget([f"{_JOB}{job_id}", *(f"{_QUEUE}{model}" for model in models)])
        except redis.RedisError:
            return None
        return Stamp(_text(values[0]), {model: _text(value) for model, value in zip(models, values[1:], strict=True)})

    def store(
        self,
        job_id: uuid.UUID,
        stamp: Stamp,
        owner: uuid.UUID,
        tag: str,
        queue: str | None,
        retry_at: float | None,
    ) -> None:
        """Keep ``tag`` for the job as read under ``stamp``; ``queue``: the model whose queue holds the job."""
        if queue is not None and queue not in stamp.queues:
            raise ValueError("a queued job's entry needs the queue counter it was read under")
        fields = {
            "owner": str(owner),
            "tag": tag,
            "job": stamp.job,
            "queue": queue or "",
            "queue_count": stamp.queues[queue] if queue is not None else "",
            "retry_at": "" if retry_at is None else repr(retry_at),
        }
        try:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(f"{_ENTRY}{job_id}", mapping=fields)
                pipe.expire(f"{_ENTRY}{job_id}", ENTRY_SECONDS)
                pipe.execute()
        except redis.RedisError as exc:
            log.debug("tag of job %s not cached: %s", job_id, exc)


async def lookup(url: str, job_id: uuid.UUID) -> Cached | None:
    """The job's entry while it is current; None where there is none, it is stale, or Redis did not answer."""
    try:
        found = await script_for(url, _LOOKUP)(keys=[f"{_ENTRY}{job_id}", f"{_JOB}{job_id}"])
    except (redis.RedisError, OSError):
        return None
    if found is None:
        return None
    owner, tag, queue, retry_at = (value.decode() for value in found)
    return Cached(owner, tag, bool(queue), float(retry_at) if retry_at else None)


def count_changes(pipe: redis.client.Pipeline, job_ids: set[uuid.UUID], queues: set[str]) -> None:
    """Add to ``pipe`` the bumps of the counters of changed jobs and of models whose queue changed."""
    for name in [f"{_JOB}{job_id}" for job_id in job_ids] + [f"{_QUEUE}{model}" for model in queues]:
        pipe.incr(name)
        pipe.expire(name, COUNTER_SECONDS)


def _text(value: bytes | None) -> str:
    return value.decode() if value is not None else "0"


@lru_cache
def tag_cache_for(url: str) -> TagCache:
    return TagCache(url)

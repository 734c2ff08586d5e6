"""The queue position the API reports is the place in the order dispatch takes jobs in, on queues with
several keys, priorities, running jobs, keys served at different (and equal) times, and equal timestamps."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from service import fresh_database, job_row

from core.db import ApiKey, Job, JobStatus, KeyTurn, session_scope, utcnow
from core.db.migrate import upgrade
from core.jobs import dispatch


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """PostgreSQL, as deployed, and SQLite, the embedded default."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('queue') / 'skipstep.db'}"
        upgrade(url)
        yield url
        return
    with fresh_database() as url:
        upgrade(url)
        yield url


@pytest.mark.parametrize("seed", range(12))
def test_queue_position_is_the_dispatch_order(database: str, seed: int) -> None:
    rng = random.Random(seed)
    model = f"m{seed}"
    now = utcnow()
    moments = [now - timedelta(seconds=second) for second in range(6)]  # few distinct times: many ties
    with session_scope(database) as session:
        keys = [ApiKey(name=f"k{i}", key_hash=uuid.uuid4().hex, webhook_secret="whsec_x") for i in range(5)]
        session.add_all(keys)
        session.flush()
        for key in keys:
            served = rng.choice([None, None, moments[1], moments[3]])
            if served is not None:
                session.add(KeyTurn(owner_id=key.id, model=model, last_started_at=served))
            for _ in range(rng.randrange(3)):
                session.add(job_row(key.id, model, JobStatus.running))
            for _ in range(rng.randrange(8)):
                session.add(
                    job_row(
                        key.id, model, JobStatus.queued, priority=rng.choice([0, 0, 1]), created_at=rng.choice(moments)
                    )
                )
            session.add(job_row(key.id, f"other-{model}", JobStatus.queued))  # another model's queue is apart
    with session_scope(database) as session:
        order = dispatch.next_in_line(session, model, 1000)
        queued = session.query(Job).filter(Job.model == model, Job.status == JobStatus.queued).all()
        assert len(order) == len(queued)
        positions = {job.id: dispatch.place(session, job, 30).position for job in queued}
    assert positions == {job_id: place for place, job_id in enumerate(order, start=1)}

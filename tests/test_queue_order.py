"""The queue position the API reports is the place in the order dispatch takes jobs in, on queues with
several keys, priorities, running jobs, keys served at different (and equal) times, and equal timestamps; and the
per-key counts it is computed from follow every change of the jobs."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from service import fresh_database, job_row
from sqlalchemy import delete, select, update

from core.db import ApiKey, Job, JobStatus, KeyTurn, QueueCount, session_scope, utcnow
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


@pytest.mark.parametrize("seed", range(3))
def test_queue_counts_follow_every_change_of_the_jobs(database: str, seed: int) -> None:
    """The counts the triggers keep (per key and model, and each key's jobs in flight) equal a count of the jobs after
    inserts, status changes (both ways), moves to another model or key and deletes, in batches and one by one."""
    rng = random.Random(seed)
    models = [f"counted-{seed}-a", f"counted-{seed}-b"]
    statuses = list(JobStatus)
    with session_scope(database) as session:
        keys = [ApiKey(name=f"c{seed}-{i}", key_hash=uuid.uuid4().hex, webhook_secret="s") for i in range(3)]
        session.add_all(keys)
        session.flush()
        jobs = [
            job_row(rng.choice(keys).id, rng.choice(models), rng.choice(statuses), created_at=utcnow())
            for _ in range(40)
        ]
        session.add_all(jobs)
    for _ in range(6):
        with session_scope(database) as session:
            for job in rng.sample(jobs, 10):
                row = session.get_one(Job, job.id)
                row.status = rng.choice(statuses)
                if rng.random() < 0.2:
                    row.model = rng.choice(models)
                if rng.random() < 0.1:
                    row.owner_id = rng.choice(keys).id
            session.execute(
                update(Job)
                .where(Job.id.in_([job.id for job in rng.sample(jobs, 5)]))
                .values(status=rng.choice([JobStatus.queued, JobStatus.running, JobStatus.succeeded]))
            )
    with session_scope(database) as session:
        session.execute(delete(Job).where(Job.id.in_([job.id for job in jobs[:8]])))
    with session_scope(database) as session:
        counted = {
            (row.model, row.owner_id): (row.queued, row.running)
            for row in session.scalars(select(QueueCount).where(QueueCount.model.in_(models)))
            if row.queued or row.running
        }
        in_flight = {key.id: session.get_one(ApiKey, key.id).in_flight for key in keys}
        expected: dict[tuple[str, uuid.UUID], list[int]] = {}
        for job in session.scalars(select(Job).where(Job.model.in_(models))):
            if job.status in (JobStatus.queued, JobStatus.running):
                tally = expected.setdefault((job.model, job.owner_id), [0, 0])
                tally[job.status == JobStatus.running] += 1
    assert counted == {place: tuple(tally) for place, tally in expected.items()}
    assert in_flight == {
        key.id: sum(sum(tally) for (_, owner), tally in expected.items() if owner == key.id) for key in keys
    }

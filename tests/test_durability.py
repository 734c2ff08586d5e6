"""An accepted job ends, exactly once, in a terminal state: across a broker that loses its data, workers
killed mid-job, hung or overlong jobs, lost leases, cancels at any moment, graceful shutdowns, a database
and a store that are briefly unreachable. Every fault is real: processes are killed by pid, the broker is
restarted empty, connections are dropped by a proxy; every wait is bounded."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import httpx
from faults import Stack, TcpProxy
from service import (
    SLOW_JOB,
    SMALL_JOB,
    Service,
    fresh_database,
    job_row,
    s3_settings,
    start_up,
    stop_group,
    wait_until,
)
from sqlalchemy import func, select, update

from core.db import ApiKey, Job, JobRun, JobStatus, WebhookDelivery, Worker, session_scope, utcnow
from core.db.migrate import upgrade
from core.jobs import transitions, workers
from core.settings import Settings

# Many short steps: a job that runs a few seconds and reaches a step boundary every ~0.2 s.
LONG_JOB = SMALL_JOB | {"num_inference_steps": 24}
# Done well within a second.
TINY_JOB = {"width": 32, "height": 32, "num_frames": 5, "num_inference_steps": 2}
# One step takes several seconds on two CPU cores: longer than the stall limit the stall test sets.
SLOW_STEP_JOB = {"width": 192, "height": 192, "num_frames": 25, "num_inference_steps": 3}


def pid_of(job: dict) -> int:
    return int(job["worker"].rpartition(":")[2])


def runs(service: Service, job_id: str) -> list[JobRun]:
    with session_scope(service.settings.database) as session:
        query = select(JobRun).where(JobRun.job_id == uuid.UUID(job_id)).order_by(JobRun.attempt)
        return list(session.scalars(query))


def row(service: Service, job_id: str) -> Job:
    with session_scope(service.settings.database) as session:
        return session.get_one(Job, uuid.UUID(job_id))


def deliveries(service: Service, job_id: str, event_type: str) -> int:
    with session_scope(service.settings.database) as session:
        query = select(func.count()).where(
            WebhookDelivery.job_id == uuid.UUID(job_id), WebhookDelivery.event_type == event_type
        )
        return session.scalar(query) or 0


def running_step(service: Service, job_id: str, step: int = 1, worker: subprocess.Popen[bytes] | None = None) -> dict:
    """Wait until the job runs (on ``worker``, if given) and has finished ``step`` steps there."""

    def there() -> dict | None:
        job = service.get(job_id)
        on = worker is None or (job["worker"] or "").endswith(f":{worker.pid}")
        done = (job.get("progress") or {}).get("step", 0) >= step
        return job if job["status"] == "running" and on and done else None

    return wait_until(there, 120, 0.05, f"job {job_id} to run {step} step(s)")


def test_a_submit_sends_its_job_to_an_idle_worker_itself(stack: Callable[..., Stack]) -> None:
    """A job submitted while a worker of its model idles is sent to it by the submit (which reads the idle worker
    after its commit), not left for a worker's sweep: with heartbeats a minute apart it still runs at once."""
    slow = {
        "SKIPSTEP_HEARTBEAT_SECONDS": "60",
        "SKIPSTEP_JOB_LEASE_SECONDS": "240",
        "SKIPSTEP_REDISPATCH_SECONDS": "240",
    }
    service = stack(**slow).service
    service.start_worker()
    job = service.wait(service.submit()["id"], timeout=40)  # the worker's next sweep is a minute after it started
    assert job["status"] == "succeeded", job["error"]


def test_a_broker_restarted_empty_loses_no_queued_job(stack: Callable[..., Stack]) -> None:
    """Jobs queued and dispatched when the broker loses everything still run, each exactly once; and a long
    queue is never copied into the broker: it holds at most one message per idle worker."""
    made = stack()
    service = made.service
    service.start_worker()
    first = service.submit(**LONG_JOB)["id"]
    running_step(service, first)
    queued = [service.submit(seed=seed)["id"] for seed in range(12)]
    assert made.queued_messages() <= 1  # the worker is busy: nothing waits in the broker for it

    made.restart_broker_empty()
    assert made.queued_messages() == 0
    for job_id in [first, *queued]:
        job = service.wait(job_id, timeout=180)
        assert job["status"] == "succeeded", job["error"]
        assert [run.outcome for run in runs(service, job_id)] == ["succeeded"]
        assert row(service, job_id).attempts == 1


def test_readiness_is_the_database_and_the_broker_is_only_reported(stack: Callable[..., Stack]) -> None:
    """/readyz answers 200 while the database does: the broker killed is reported (in its body and /metrics) and
    a submit is still accepted; with the database cut it answers 503 naming it, while /healthz (liveness) stays
    200, and it is ready again once the database is back."""
    with fresh_database() as direct:
        port = int(direct.rsplit(":", 1)[1].split("/")[0])
        proxy = TcpProxy(port)
        try:
            made = stack(database_url=direct.replace(f":{port}/", f":{proxy.port}/"))
            url = made.service.url
            made.broker.kill()
            made.broker.wait(timeout=10)
            ready = httpx.get(f"{url}/readyz", timeout=30)
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "ready",
                "checks": {"database": "ok", "broker": "unreachable", "storage": "ok"},
            }
            metrics = httpx.get(f"{url}/metrics", timeout=30).text
            assert 'skipstep_dependency_up{dependency="broker"} 0.0' in metrics
            assert 'skipstep_dependency_up{dependency="database"} 1.0' in metrics
            assert 'skipstep_dependency_up{dependency="storage"} 1.0' in metrics
            assert made.service.submit()["status"] == "queued"  # kept in the database until a worker takes it

            made.restart_broker_empty()
            assert httpx.get(f"{url}/readyz", timeout=30).json()["checks"]["broker"] == "ok"
            proxy.cut()
            down = httpx.get(f"{url}/readyz", timeout=30)
            assert down.status_code == 503
            assert down.json() == {
                "status": "not ready",
                "checks": {"database": "unreachable", "broker": "ok", "storage": "ok"},
            }
            assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
            proxy.restore()
            wait_until(made.service.ready, 30, 0.2, "the API to be ready again")
        finally:
            proxy.close()


def test_attempts_are_enforced_at_every_claim(stack: Callable[..., Stack]) -> None:
    """A job that kills its worker every time ends failed as worker_lost after the configured attempts, once,
    with its webhook event; it is never claimed a third time."""
    made = stack(SKIPSTEP_MAX_JOB_ATTEMPTS="2")
    service = made.service
    job_id = service.submit(**LONG_JOB, webhook_url="http://127.0.0.1:9/hook")["id"]
    for attempt in (1, 2):
        worker = service.start_worker()
        running_step(service, job_id, worker=worker)
        assert row(service, job_id).attempts == attempt
        worker.kill()
        worker.wait(timeout=10)
    service.start_worker()
    failed = service.wait(job_id, timeout=60)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "worker_lost"
    assert row(service, job_id).attempts == 2
    assert [run.outcome for run in runs(service, job_id)] == ["abandoned", "abandoned"]
    assert deliveries(service, job_id, "job.failed") == 1


def test_a_job_over_its_time_limit_fails_as_timeout_and_the_worker_goes_on(stack: Callable[..., Stack]) -> None:
    service = stack().service
    worker = service.start_worker(SKIPSTEP_MAX_JOB_SECONDS="4")
    # SLOW_JOB (50 steps at 128x128, 33 frames) runs several times the limit, however fast the machine.
    slow = service.wait(service.submit(**SLOW_JOB)["id"], timeout=60)
    assert slow["status"] == "failed" and slow["error"]["code"] == "timeout", slow["error"]
    assert "SKIPSTEP_MAX_JOB_SECONDS" in slow["error"]["message"]
    assert slow["progress"]["step"] < slow["progress"]["total"]
    quick = service.wait(service.submit(**TINY_JOB)["id"], timeout=60)
    assert quick["status"] == "succeeded" and quick["worker"].endswith(f":{worker.pid}")


def test_a_stalled_job_fails_as_timeout_and_its_worker_restarts(stack: Callable[..., Stack]) -> None:
    """A step that never returns in time cannot be interrupted: the job ends as timeout and the worker exits,
    for its supervisor to restart with a fresh model."""
    service = stack().service
    worker = service.start_worker(SKIPSTEP_STALL_SECONDS="1")
    job = service.wait(service.submit(**SLOW_STEP_JOB)["id"], timeout=120)
    assert job["status"] == "failed" and job["error"]["code"] == "timeout", job["error"]
    assert "made no progress" in job["error"]["message"]
    assert worker.wait(timeout=30) == 75
    replacement = service.start_worker()
    after = service.wait(service.submit()["id"], timeout=60)
    assert after["status"] == "succeeded" and after["worker"].endswith(f":{replacement.pid}")


def test_a_worker_that_lost_its_lease_stops_and_writes_nothing(stack: Callable[..., Stack]) -> None:
    """Freeze the worker mid-job: another worker takes the job over and publishes its video; the frozen one,
    thawed, stops at its next step without writing a thing."""
    made = stack()
    service = made.service
    frozen = service.start_worker()
    job_id = service.submit(**LONG_JOB)["id"]
    running_step(service, job_id)
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        taker = service.start_worker()
        done = service.wait(job_id, timeout=120)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert done["status"] == "succeeded" and done["worker"].endswith(f":{taker.pid}")
    wait_until(
        lambda: "this worker no longer holds the job" in service.worker_log.read_text(), 120, what="the thawed worker"
    )
    assert row(service, job_id).video_key == f"videos/{job_id}/2.mp4"
    videos = Path(service.env["SKIPSTEP_STORAGE_DIR"]) / "videos" / job_id
    assert sorted(path.name for path in videos.iterdir()) == ["2.mp4"]
    assert [run.outcome for run in runs(service, job_id)] == ["abandoned", "succeeded"]


def test_a_frozen_worker_marked_gone_comes_back_and_its_old_job_is_finished_once(stack: Callable[..., Stack]) -> None:
    """SIGSTOP a worker mid-job past three heartbeats: the other worker marks it gone, takes the job over and
    finishes it. Thawed (SIGCONT), the frozen worker is live again, writes nothing for the job it lost, and takes
    the next job once it is the only worker left."""
    made = stack()
    service = made.service
    frozen = service.start_worker()
    frozen_id = f"{socket.gethostname()}:{frozen.pid}"
    job_id = service.submit(**LONG_JOB, webhook_url="http://127.0.0.1:9/hook")["id"]
    running_step(service, job_id, worker=frozen)
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        taker = service.start_worker()
        done = service.wait(job_id, timeout=120)
        # Three beats of 0.5 s missed long ago: marked gone by the taker's sweep.
        wait_until(lambda: worker_row(service, frozen_id).stop_reason == "gone", 30, 0.1, "the frozen worker gone")
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert done["status"] == "succeeded" and done["worker"].endswith(f":{taker.pid}")
    wait_until(
        lambda: (w := worker_row(service, frozen_id)).stopped_at is None and w.stop_reason is None,
        30,
        0.1,
        "the thawed worker to be live again",
    )
    wait_until(
        lambda: "this worker no longer holds the job" in service.worker_log.read_text(), 60, what="the thawed worker"
    )
    taker.terminate()
    assert taker.wait(timeout=60) == 0
    following = service.wait(service.submit()["id"], timeout=60)
    assert following["status"] == "succeeded" and following["worker"] == frozen_id

    assert [run.outcome for run in runs(service, job_id)] == ["abandoned", "succeeded"]
    finished = row(service, job_id)
    assert finished.status == JobStatus.succeeded and finished.video_key == f"videos/{job_id}/2.mp4"
    videos = Path(service.env["SKIPSTEP_STORAGE_DIR"]) / "videos" / job_id
    assert sorted(path.name for path in videos.iterdir()) == ["2.mp4"]
    assert deliveries(service, job_id, "job.succeeded") == 1


def worker_row(service: Service, worker_id: str) -> Worker:
    with session_scope(service.settings.database) as session:
        return session.get_one(Worker, worker_id)


def test_a_stale_claim_writes_nothing_even_when_the_same_worker_holds_the_job_again() -> None:
    """A worker id alone does not name a claim: a worker presumed dead whose job was requeued and claimed again
    (here by the same worker id, as a restarted container with the same hostname and pid would) cannot renew,
    finish or hand back the job through its old attempt; the new attempt can. A worker marked gone that beats
    again is live again, in the state it reports."""
    with fresh_database() as url:
        upgrade(url)
        with session_scope(url) as session:
            key = ApiKey(name="k", key_hash=uuid.uuid4().hex, webhook_secret="whsec_x")
            session.add(key)
            session.flush()
            job = job_row(key.id, "m", JobStatus.queued)
            session.add(job)
            session.flush()
            job_id = job.id
            workers.register(session, "host:1", "host", 1, "m", workers.Device("cpu"))
        lapsed, lease = timedelta(seconds=-1), timedelta(seconds=30)
        with session_scope(url) as session:
            assert transitions.claim(session, job_id, "host:1", "m", lapsed, 3) is not None
        with session_scope(url) as session:
            assert [job for job, _, _ in transitions.requeue_lapsed(session, 3, "http://x").requeued] == [job_id]
        with session_scope(url) as session:
            assert transitions.claim(session, job_id, "host:1", "m", lease, 3).attempts == 2
        with session_scope(url) as session:
            before = session.get_one(Job, job_id).version
            assert transitions.check_in(session, job_id, "host:1", 1, lease, progress_step=3) is None
            assert transitions.finish(session, job_id, "host:1", 1, JobStatus.succeeded, "http://x") is None
            assert transitions.hand_back(session, job_id, "host:1", 1) is False
        with session_scope(url) as session:
            stale = session.get_one(Job, job_id)
            assert (stale.status, stale.attempts, stale.version, stale.progress_step) == (
                JobStatus.running,
                2,
                before,
                0,
            )
            assert transitions.check_in(session, job_id, "host:1", 2, lease) is not None
            ended = transitions.finish(session, job_id, "host:1", 2, JobStatus.succeeded, "http://x")
            assert ended is not None and ended.job.status == JobStatus.succeeded

        with session_scope(url) as session:
            session.execute(update(Worker).values(last_seen_at=utcnow() - timedelta(hours=1)))
        with session_scope(url) as session:
            assert [gone for gone, _, _ in workers.mark_gone(session, 0.5)] == ["host:1"]
            assert workers.serving_count(session, "m", 0.5) == 0
        with session_scope(url) as session:
            assert workers.seen(session, "host:1", workers.DRAINING) is True
            assert workers.seen(session, "host:1", None) is False  # already back: nothing to restore
            back = session.get_one(Worker, "host:1")
            assert (back.stopped_at, back.stop_reason) == (None, workers.DRAINING)
            assert workers.by_model(session, 0.5)["m"].live == 1


def test_cancel_at_any_moment_ends_canceled_or_finished_first(stack: Callable[..., Stack]) -> None:
    """Queued, running, or racing the worker that takes or finishes it: an accepted cancel (202) always ends
    the job canceled, else the job had finished (409); each records its one event."""
    service = stack().service
    service.start_worker()
    hook = {"webhook_url": "http://127.0.0.1:9/hook"}
    with service.client() as client:
        running = service.submit(**LONG_JOB, **hook)["id"]
        queued = service.submit(**hook)["id"]
        running_step(service, running)
        assert client.post(f"/jobs/{queued}/cancel").json()["status"] == "canceled"
        assert client.post(f"/jobs/{running}/cancel").json()["cancel_requested"] is True
        assert service.wait(running, timeout=30)["status"] == "canceled"
        assert service.get(queued)["started_at"] is None
        outcomes = {running: "canceled", queued: "canceled"}
        for delay in (0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 2.0):
            job_id = service.submit(**hook)["id"]
            time.sleep(delay)
            answer = client.post(f"/jobs/{job_id}/cancel")
            final = service.wait(job_id, timeout=60)
            expected = "canceled" if answer.status_code == 202 else "succeeded"
            assert answer.status_code in (202, 409) and final["status"] == expected, (delay, answer.text, final)
            outcomes[job_id] = expected
    for job_id, status in outcomes.items():
        assert deliveries(service, job_id, f"job.{status}") == 1
        assert deliveries(service, job_id, "job.succeeded" if status == "canceled" else "job.canceled") == 0


def test_cancel_during_the_compare_baseline_ends_the_job_canceled_promptly(stack: Callable[..., Stack]) -> None:
    """The uncached baseline of a compare job runs under the same step callback as the job: its steps are
    progress (after the cached run's), and a cancel stops it at its next step."""
    service = stack().service
    service.start_worker()
    job_id = service.submit(**LONG_JOB, compare=True)["id"]
    steps = LONG_JOB["num_inference_steps"]
    in_baseline = running_step(service, job_id, step=steps + 2)
    assert in_baseline["progress"]["total"] == 2 * steps
    with service.client() as client:
        assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
    canceled_at = time.monotonic()
    final = service.wait(job_id, timeout=30)
    assert final["status"] == "canceled"
    # At the next step: far sooner than the 20-odd steps left of the baseline (~0.2 s each when idle).
    assert time.monotonic() - canceled_at < 10
    assert row(service, job_id).progress_step < 2 * steps
    assert [run.outcome for run in runs(service, job_id)] == ["canceled"]


def test_a_cancel_for_a_job_whose_worker_died_ends_it_canceled(stack: Callable[..., Stack]) -> None:
    service = stack().service
    doomed = service.start_worker()
    job_id = service.submit(**LONG_JOB)["id"]
    running_step(service, job_id)
    doomed.kill()
    doomed.wait(timeout=10)
    with service.client() as client:
        assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
    service.start_worker()
    assert service.wait(job_id, timeout=60)["status"] == "canceled"
    assert [run.outcome for run in runs(service, job_id)] == ["abandoned"]


def test_a_killed_worker_is_noticed_and_its_job_runs_again_within_the_bound(stack: Callable[..., Stack]) -> None:
    """SIGKILL: the job runs again on a live worker within two heartbeats plus the lease (2 x 0.5 s + 2 s here,
    with a little slack for process scheduling), the logs name the dead worker and its row is marked gone."""
    service = stack().service
    first = service.start_worker()
    second = service.start_worker()
    job_id = service.submit(**LONG_JOB)["id"]
    job = running_step(service, job_id)
    victim, survivor = (first, second) if pid_of(job) == first.pid else (second, first)
    dead = f"{socket.gethostname()}:{victim.pid}"
    victim.kill()
    victim.wait(timeout=10)
    bound = 2 * 0.5 + 2 + 3
    again = wait_until(
        lambda: (j := service.get(job_id))["status"] == "running" and j["worker"].endswith(f":{survivor.pid}") and j,
        bound,
        0.05,
        "the job to run again on the live worker",
    )
    assert again["worker"] != dead
    log = service.worker_log.read_text()
    assert f"worker {dead} stopped renewing its lease; requeued" in log
    wait_until(lambda: f"worker {dead} (host" in service.worker_log.read_text(), 10, what="the gone worker logged")
    with session_scope(service.settings.database) as session:
        gone = session.get_one(Worker, dead)
        assert gone.stop_reason == "gone" and gone.current_job_id is None
    assert service.wait(job_id, timeout=60)["status"] == "succeeded"


def test_sigterm_lets_a_job_finish_within_the_grace_period(stack: Callable[..., Stack]) -> None:
    service = stack().service
    worker = service.start_worker(SKIPSTEP_SHUTDOWN_GRACE_SECONDS="60")
    job_id = service.submit()["id"]
    running_step(service, job_id)
    worker.terminate()
    assert worker.wait(timeout=60) == 0
    job = service.get(job_id)
    assert job["status"] == "succeeded" and job["worker"].endswith(f":{worker.pid}")


def test_sigterm_past_the_grace_period_hands_the_job_back_at_once(stack: Callable[..., Stack]) -> None:
    """Past the grace period the job stops at a step boundary and is queued again right away (no lease to
    wait out), and the attempt is not counted against it."""
    service = stack(SKIPSTEP_JOB_LEASE_SECONDS="30").service
    leaving = service.start_worker(SKIPSTEP_SHUTDOWN_GRACE_SECONDS="0.5")
    job_id = service.submit(**LONG_JOB)["id"]
    running_step(service, job_id)
    leaving.terminate()
    # With a 30 s lease, only a hand-back can requeue the job this soon.
    wait_until(lambda: service.get(job_id)["status"] == "queued", 15, 0.05, "the job to be handed back")
    assert leaving.wait(timeout=30) == 0
    assert row(service, job_id).attempts == 0
    staying = service.start_worker()
    done = service.wait(job_id, timeout=60)
    assert done["status"] == "succeeded" and done["worker"].endswith(f":{staying.pid}")
    assert row(service, job_id).attempts == 1
    assert [run.outcome for run in runs(service, job_id)] == ["handed_back", "succeeded"]


def test_the_database_briefly_unreachable(stack: Callable[..., Stack]) -> None:
    """The API answers 503 in the JSON error shape while PostgreSQL is unreachable and recovers by itself;
    the worker retries through the outage and loses no job."""
    with fresh_database() as direct:
        port = int(direct.rsplit(":", 1)[1].split("/")[0])
        proxy = TcpProxy(port)
        try:
            made = stack(database_url=direct.replace(f":{port}/", f":{proxy.port}/"))
            service = made.service
            service.start_worker()
            job_id = service.submit(**LONG_JOB)["id"]
            running_step(service, job_id)
            proxy.cut()
            with service.client() as client:
                down = client.get(f"/jobs/{job_id}")
            assert down.status_code == 503
            assert down.json()["error"]["code"] == "unavailable"
            time.sleep(1.0)  # an outage shorter than the lease (2 s): the worker keeps its job
            proxy.restore()
            done = service.wait(job_id, timeout=120)
            assert done["status"] == "succeeded", done["error"]
            assert service.wait(service.submit()["id"], timeout=60)["status"] == "succeeded"
        finally:
            proxy.close()


def test_storage_down_at_upload_is_retried_then_fails_without_server_details(
    stack: Callable[..., Stack], s3_endpoint: str
) -> None:
    proxy = TcpProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    try:
        s3 = s3_settings(f"http://127.0.0.1:{proxy.port}", "skipstep-durable")
        service = stack(**s3).service
        first = service.start_worker(SKIPSTEP_STORAGE_ATTEMPTS="3", SKIPSTEP_STORAGE_RETRY_SECONDS="1")
        proxy.cut()
        failed = service.wait(service.submit(webhook_url="http://127.0.0.1:9/hook")["id"], timeout=120)
        assert failed["status"] == "failed" and failed["error"]["code"] == "storage_failed"
        assert failed["error"]["message"] == "the video could not be stored after 3 attempts"
        with service.client() as client:
            [event] = client.get(f"/jobs/{failed['id']}/deliveries").json()["deliveries"]
        assert event["event_type"] == "job.failed"  # recorded with the failure (this stack sends no webhooks)
        assert "storing the video failed (try 2)" in service.worker_log.read_text()

        # Down for the first try only: the retry stores it.
        proxy.cut()
        job_id = service.submit()["id"]
        first_try = f"job {job_id}: storing the video failed (try 1)"
        wait_until(lambda: first_try in service.worker_log.read_text(), 120, 0.05, "a failed first upload")
        proxy.restore()
        assert service.wait(job_id, timeout=60)["status"] == "succeeded"

        # A long outage with many tries: the waits stop doubling at the longest wait, so the video is stored soon
        # after the store is back (doubling alone would wait 4 s before the fifth try, 8 s before the sixth).
        first.terminate()
        assert first.wait(timeout=60) == 0
        service.start_worker(
            SKIPSTEP_STORAGE_ATTEMPTS="20", SKIPSTEP_STORAGE_RETRY_SECONDS="0.5", SKIPSTEP_STORAGE_RETRY_MAX_SECONDS="1"
        )
        proxy.cut()
        job_id = service.submit()["id"]
        fifth_try = f"job {job_id}: storing the video failed (try 5)"
        wait_until(lambda: fifth_try in service.worker_log.read_text(), 120, 0.05, "five failed uploads")
        tries = [line for line in service.worker_log.read_text().splitlines() if f"job {job_id}: storing" in line]
        moments = [datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f") for line in tries]
        assert max(later - earlier for earlier, later in itertools.pairwise(moments[2:])) < timedelta(seconds=3)
        proxy.restore()
        assert service.wait(job_id, timeout=60)["status"] == "succeeded"
    finally:
        proxy.close()


def test_up_restarts_a_child_that_dies_and_keeps_queued_jobs_across_down_and_up(
    settings: Settings, wan_tiny: object, tmp_path: Path
) -> None:
    """`skipstep up` (embedded default) restarts its API when it is killed, without touching the rest; jobs
    queued when the service goes down run after the next `up`, the running one handed back at shutdown."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(settings.presets_dir)
    env = {name: value for name, value in os.environ.items() if not name.startswith("SKIPSTEP_")}
    env |= {"SKIPSTEP_HOME": str(home), "SKIPSTEP_DEVICE": "cpu", "SKIPSTEP_SHUTDOWN_GRACE_SECONDS": "0.5"}
    env |= {"SKIPSTEP_HEARTBEAT_SECONDS": "0.5", "SKIPSTEP_JOB_LEASE_SECONDS": "2", "OMP_NUM_THREADS": "1"}
    embedded = Embedded(home, env, tmp_path / "up.log")
    first = embedded.up()
    try:
        api_pid = int(embedded.log().split("started api (pid ")[1].split(")")[0])
        os.kill(api_pid, signal.SIGKILL)
        wait_until(lambda: f"api (pid {api_pid}) exited" in embedded.log(), 10, what="the crash to be noticed")
        wait_until(embedded.ready, 60, 0.2, "the API to be restarted")
        jobs = [embedded.submit(LONG_JOB)] + [embedded.submit(SMALL_JOB | {"seed": seed}) for seed in range(3)]
        wait_until(lambda: embedded.get(jobs[0])["status"] == "running", 60, what="the first job to run")
        embedded.down()
        assert first.wait(timeout=30) == 0
    finally:
        embedded.kill(first)
    second = embedded.up()
    try:
        for job_id in jobs:
            final = wait_until(lambda j=job_id: embedded.finished(j), 180, 0.2, f"job {job_id} to finish")
            assert final["status"] == "succeeded", final
        embedded.down()
    finally:
        embedded.kill(second)


class Embedded:
    """`skipstep up` and `skipstep down` as a user runs them, on a home of the test's own."""

    def __init__(self, home: Path, env: dict[str, str], log_path: Path) -> None:
        self.home, self.env, self.log_path = home, env, log_path
        self.url = ""
        self.command = [sys.executable, "-m", "core.cli"]

    def up(self) -> subprocess.Popen[bytes]:
        """`skipstep up` on a free port, in a process group of its own, so that a failed test can stop all it
        started."""
        process, port = start_up(self.command, self.env, self.log_path)
        self.url = f"http://127.0.0.1:{port}"
        wait_until(self.ready, 120, 0.2, "skipstep up")
        return process

    def down(self) -> None:
        result = subprocess.run([*self.command, "down"], env=self.env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """Stop `skipstep up` and every process it started, if a failed test left them running."""
        stop_group(process)

    def log(self) -> str:
        return self.log_path.read_text()

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {(self.home / 'api-key').read_text().strip()}"}

    def submit(self, fields: dict) -> str:
        response = httpx.post(f"{self.url}/jobs", json={"prompt": "a fox"} | fields, headers=self.headers())
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def get(self, job_id: str) -> dict:
        return httpx.get(f"{self.url}/jobs/{job_id}", headers=self.headers()).json()

    def finished(self, job_id: str) -> dict | None:
        job = self.get(job_id)
        return job if job["status"] in ("succeeded", "failed", "canceled") else None


def test_fair_share_across_keys(stack: Callable[..., Stack]) -> None:
    """One key's queue delays another key's single job by at most the job already running on the worker; within
    a key a higher priority goes first; the queue positions the API reports are the order in which jobs start."""
    service = stack().service
    service.start_worker()
    alice_first = service.submit(**LONG_JOB)["id"]
    running_step(service, alice_first)
    alice_rest = [service.submit(**TINY_JOB, seed=seed)["id"] for seed in range(5)]
    alice_urgent = service.submit(**TINY_JOB, seed=9, priority=5)["id"]
    bob = service.submit("bob", **TINY_JOB)["id"]
    assert service.get(bob, "bob")["queue_position"] == 1
    assert service.get(alice_urgent)["queue_position"] == 2
    assert [service.get(job_id)["queue_position"] for job_id in alice_rest] == [3, 4, 5, 6, 7]
    for job_id in [alice_urgent, *alice_rest]:
        assert service.wait(job_id, timeout=120)["status"] == "succeeded"
    assert service.wait(bob, key="bob", timeout=120)["status"] == "succeeded"
    order = [alice_first, bob, alice_urgent, *alice_rest]
    started = {job_id: row(service, job_id).started_at for job_id in order}
    assert sorted(started, key=started.__getitem__) == order

"""A worker spanning several devices (`skipstep worker --gpus`), run for real: two CPU ranks over gloo behind the API,
on a service of its own (its own database and Redis). The group is one worker to the service, makes the frames of a
single-process worker, stops every rank where a cancel stops rank 0, and a rank killed mid-job restarts the group
and the job is retried and finished once."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from faults import Stack
from service import SMALL_JOB, Service, wait_until
from sqlalchemy import select

from core.db import Job, JobRun, session_scope
from core.settings import Settings
from core.storage import storage_from

# Adaptive skips (the teacache signal is reduced across the ranks) and a fixed seed.
JOB = SMALL_JOB | {"seed": 11, "cache": {"strategy": "teacache", "params": {"threshold": 0.4}}}
# Long enough to be caught mid-run: a step boundary every fraction of a second.
LONG_JOB = SMALL_JOB | {"num_inference_steps": 30}
STARTED = re.compile(r"started rank 0 pid (\d+), rank 1 pid (\d+)")


class Group:
    """``skipstep worker --model wan-tiny --gpus cpu,cpu`` in its own process group, and its ranks' pids."""

    def __init__(self, service: Service) -> None:
        self.service, self.log = service, service.worker_log
        command = [sys.executable, "-m", "core.cli", "worker", "--model", "wan-tiny", "--gpus", "cpu,cpu"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command, env=service.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        service.processes.append(self.process)

    def ranks(self, generation: int = 1) -> tuple[int, int]:
        """The pids of the ``generation``-th group's ranks, once its rank 0 has loaded the model and registered."""

        def started() -> tuple[int, int] | None:
            found = STARTED.findall(self.log.read_text())
            return (int(found[generation - 1][0]), int(found[generation - 1][1])) if len(found) >= generation else None

        leader, follower = wait_until(started, 30, 0.1, f"group {generation} to start")
        registered = f"(worker {socket.gethostname()}:{leader})"
        wait_until(lambda: registered in self.log.read_text(), 120, 0.2, f"group {generation} to load the model")
        return leader, follower


def video(service: Service, job: dict) -> bytes:
    with session_scope(service.settings.database) as session:
        key = session.get_one(Job, uuid.UUID(job["id"])).video_key
    assert key is not None
    return storage_from(Settings(storage_dir=Path(service.env["SKIPSTEP_STORAGE_DIR"]))).get(key)


def runs(service: Service, job_id: str) -> list[tuple[int, str | None, str]]:
    with session_scope(service.settings.database) as session:
        query = select(JobRun).where(JobRun.job_id == uuid.UUID(job_id)).order_by(JobRun.attempt)
        return [(run.attempt, run.outcome, run.worker_id) for run in session.scalars(query)]


def test_a_two_rank_group_is_one_worker_with_two_devices_and_makes_the_single_process_video(
    stack: Callable[..., Stack],
) -> None:
    service = stack().service
    single = service.start_worker()
    alone = service.wait(service.submit(**JOB)["id"], timeout=120)
    assert alone["status"] == "succeeded", alone
    single.terminate()
    single.wait(timeout=60)

    group = Group(service)
    leader, follower = group.ranks()
    with service.client("admin") as client:
        model = next(m for m in client.get("/models").json() if m["name"] == "wan-tiny")
        listed = [w for w in client.get("/workers").json() if w["alive"]]
        page = client.get("/admin").text
    assert model["workers"]["live"] == 1 and model["workers"]["device_count"] == 2
    assert model["workers"]["devices"] == [f"{socket.gethostname()}/cpu+cpu (ulysses)"]
    assert [(w["id"], w["devices"], w["parallelism"]) for w in listed] == [
        (f"{socket.gethostname()}:{leader}", ["cpu", "cpu"], "ulysses")
    ]
    assert "cpu + cpu" in page and "ulysses, 2 devices" in page

    together = service.wait(service.submit(**JOB)["id"], timeout=120)
    assert together["status"] == "succeeded", together
    assert together["worker"] == f"{socket.gethostname()}:{leader}"
    assert together["metrics"]["branches"] == alone["metrics"]["branches"]
    assert video(service, together) == video(service, alone)

    # A cancel stops rank 0 at a step boundary, and rank 1 at the same one: the group takes the next job.
    long = service.submit(**LONG_JOB)["id"]
    wait_until(lambda: (service.get(long).get("progress") or {}).get("step", 0) >= 2, 120, 0.05, "the long job to run")
    with service.client() as client:
        assert client.post(f"/jobs/{long}/cancel").status_code in (200, 202)
    assert service.wait(long, timeout=60)["status"] == "canceled"
    after = service.wait(service.submit(**JOB)["id"], timeout=120)
    assert after["status"] == "succeeded" and video(service, after) == video(service, alone)
    assert group.process.poll() is None and STARTED.findall(group.log.read_text()) == [(str(leader), str(follower))]


def test_a_rank_killed_mid_job_restarts_the_group_and_the_job_is_retried_and_finished_once(
    stack: Callable[..., Stack],
) -> None:
    service = stack().service
    group = Group(service)
    leader, follower = group.ranks()
    job_id = service.submit(**LONG_JOB)["id"]
    wait_until(
        lambda: (service.get(job_id).get("progress") or {}).get("step", 0) >= 2, 120, 0.05, "the job to run on rank 0"
    )
    os.kill(follower, signal.SIGKILL)
    # The supervisor kills rank 0 (by pid) and starts a new group, whose rank 0 takes the job back once its
    # lease lapses (2 s here).
    wait_until(lambda: "restarting the group" in group.log.read_text(), 10, 0.1, "the supervisor to notice the death")
    new_leader, _ = group.ranks(generation=2)
    with pytest.raises(ProcessLookupError):
        os.kill(leader, 0)  # rank 0 did not outlive its group
    done = service.wait(job_id, timeout=120)
    assert done["status"] == "succeeded", done
    assert done["worker"] == f"{socket.gethostname()}:{new_leader}"
    first, second = f"{socket.gethostname()}:{leader}", f"{socket.gethostname()}:{new_leader}"
    assert runs(service, job_id) == [(1, "abandoned", first), (2, "succeeded", second)]
    with session_scope(service.settings.database) as session:
        row = session.get_one(Job, uuid.UUID(job_id))
        assert (row.attempts, row.status.value) == (2, "succeeded")

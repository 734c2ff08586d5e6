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

import pytest
from faults import Stack
from service import SMALL_JOB, Service, wait_until
from sqlalchemy import select

from core.cli import parser
from core.db import Job, JobRun, session_scope
from core.errors import SkipstepError
from core.settings import Settings
from core.supervisor import assign_gpus, gpu_workers
from core.worker_group import parse_devices, rank_env

# Adaptive skips (the teacache signal is reduced across the ranks) and a fixed seed.
JOB = SMALL_JOB | {"seed": 11, "cache": {"strategy": "teacache", "params": {"threshold": 0.4}}}
# Long enough to be caught mid-run: a step boundary every fraction of a second.
LONG_JOB = SMALL_JOB | {"num_inference_steps": 16}
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


def runs(service: Service, job_id: str) -> list[tuple[int, str | None, str]]:
    with session_scope(service.settings.database) as session:
        query = select(JobRun).where(JobRun.job_id == uuid.UUID(job_id)).order_by(JobRun.attempt)
        return [(run.attempt, run.outcome, run.worker_id) for run in session.scalars(query)]


def test_a_two_rank_group_is_one_worker_with_two_devices_and_makes_the_single_process_video(
    stack: Callable[..., Stack],
) -> None:
    # Every cached job is sampled for a fidelity receipt: its uncached re-run runs on both ranks while the group is
    # idle, and gives way (on both) to the next job.
    service = stack(SKIPSTEP_RECEIPT_SAMPLE_RATE="1").service
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
    # The frames, bit for bit (the MP4's bytes are not a fingerprint: x264's threads vary them from run to run).
    assert together["metrics"]["frames_sha256"] == alone["metrics"]["frames_sha256"]
    engines = [job["metrics"]["engine"] for job in (alone, together)]
    assert [(engine["devices"], engine["parallelism"]) for engine in engines] == [(1, None), (2, "ulysses")]

    # A cancel stops rank 0 at a step boundary, and rank 1 at the same one: the group takes the next job.
    long = service.submit(**LONG_JOB)["id"]
    wait_until(lambda: (service.get(long).get("progress") or {}).get("step", 0) >= 2, 120, 0.05, "the long job to run")
    with service.client() as client:
        assert client.post(f"/jobs/{long}/cancel").status_code in (200, 202)
    assert service.wait(long, timeout=60)["status"] == "canceled"
    after = service.wait(service.submit(**JOB)["id"], timeout=120)
    assert after["status"] == "succeeded" and after["metrics"]["frames_sha256"] == alone["metrics"]["frames_sha256"]
    receipt = f"job {together['id']}: receipt PSNR"
    wait_until(lambda: receipt in group.log.read_text(), 120, 0.2, "the group's receipt re-run")
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


def test_up_groups_gpus_into_workers_spanning_several() -> None:
    assert assign_gpus("0,1,2,3", ["wan"], 2) == [("0,1", "wan"), ("2,3", "wan")]
    assert assign_gpus("0,1,2,3", ["wan", "ltx"], 2) == [("0,1", "wan"), ("2,3", "ltx")]
    assert assign_gpus("0=ltx,1,2,3=wan", ["wan", "ltx"], 2) == [("0,1", "ltx"), ("2,3", "wan")]
    for spec, per_worker, problem in [
        ("0,1,2", 2, "3 GPUs do not make workers of 2 GPUs each"),
        ("0=wan,1=ltx", 2, "one worker spans GPUs 0,1: name one model"),
        ("0,1", 2, "no GPU left for ltx"),
    ]:
        with pytest.raises(SkipstepError, match=problem):
            assign_gpus(spec, ["wan", "ltx"], per_worker)
    env = {"SKIPSTEP_DEVICE": "cuda", "PATH": ""}
    command = [sys.executable, "-m", "core.cli", "worker"]
    children = gpu_workers(command, assign_gpus("0,1,2", ["wan", "ltx"], 1)[:1] + [("1,2", "ltx")], env)
    assert [(child.name, child.command[3:], child.env.get("CUDA_VISIBLE_DEVICES")) for child in children] == [
        ("worker wan on GPU 0", ["worker", "--model", "wan"], "0"),
        # The group's supervisor pins each rank itself.
        ("worker ltx on GPUs 1,2", ["worker", "--model", "ltx", "--gpus", "1,2"], None),
    ]
    parser(Settings()).parse_args(children[1].command[3:])


def test_each_rank_meets_on_loopback_and_runs_on_its_own_device() -> None:
    assert parse_devices("2,3") == ["2", "3"] and parse_devices("cpu, cpu") == ["cpu", "cpu"]
    for spec, problem in [("0", "two at least"), ("0,0", "names one twice"), ("cpu,0", "'cpu' is not a GPU")]:
        with pytest.raises(SkipstepError, match=problem):
            parse_devices(spec)
    env = rank_env({"PATH": ""}, ["2", "3"], 1, 29500)
    assert env == {
        "PATH": "",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "2",
        "CUDA_VISIBLE_DEVICES": "2,3",
        "SKIPSTEP_DEVICE": "cuda:1",
    }
    assert rank_env({}, ["cpu", "cpu"], 0, 29500)["SKIPSTEP_DEVICE"] == "cpu"


def test_parallelism_is_set_for_every_model_or_per_model() -> None:
    assert Settings().parallelism_of("wan") == "ulysses"
    assert Settings(parallelism="ring").parallelism_of("wan") == "ring"
    per_model = Settings(parallelism="cfg,wan-14b=ring")
    assert (per_model.parallelism_of("wan-14b"), per_model.parallelism_of("wan")) == ("ring", "cfg")
    with pytest.raises(ValueError, match="'tensor' is not one of ulysses, ring, cfg"):
        Settings(parallelism="wan=tensor")

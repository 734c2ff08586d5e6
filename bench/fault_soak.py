"""Soak the service as it is deployed on one machine, with faults: `skipstep up` runs the API, one GPU worker per
model (wan-tiny on the CPU, under two model names) and the webhooks worker, and its own supervisor restarts what
dies; the bench never restarts a child itself.

The infrastructure is the bench's own, each on a free loopback port: a PostgreSQL cluster (initdb into a temporary
directory), a redis-server, and a moto S3 server. moto keeps nothing across a restart: after its outage the bench
creates the bucket again, as a persistent volume would have kept it (videos stored before are gone, which no
figure here reads).

Faults, in turn, each --rounds times: SIGKILL of a worker, SIGTERM of a worker, SIGSTOP of a worker for longer than
its lease and three heartbeats (the other worker's sweep marks it gone), then SIGCONT; the broker wiped (FLUSHALL);
SIGKILL of the API; a restart of the PostgreSQL cluster; the S3 server stopped for --s3-outage seconds, then
started again; `skipstep down` then `skipstep up`. Clients submit tiny jobs, alternating the two models, keeping a
small backlog, with an Idempotency-Key, retrying through outages as the SDK does; a few are canceled.

Per fault it measures when the faulted part was back (the process restarted and registered, the server answering,
SIGCONT sent) and the recovery: from then until every model has finished a job again. The bound is the lease plus
two heartbeats. The jobs queued or running at each fault are followed to the end: lost (not finished once the
queue has drained, or failed) and run twice (more than one run of a job reached its end) must both be 0.

    PYTHONPATH=$PWD nice -n 5 .venv/bin/python bench/fault_soak.py --jobs 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import random
import re
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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import boto3
import httpx
import psycopg
import redis
from sqlalchemy import func, select

import core
from core.db import Job, JobRun, Worker, session_scope

MODELS = ("wan-tiny", "wan-tiny-b")
# The smallest wan-tiny shape, the fewest steps, no CFG, one prompt (encoded once per worker): the soak measures
# the service, not the model.
JOB = {
    "prompt": "a fox in the snow",
    "width": 16,
    "height": 16,
    "num_frames": 1,
    "num_inference_steps": 2,
    "guidance_scale": 1.0,  # one CFG branch
}
STRATEGIES = ({"strategy": "none"}, {"strategy": "easycache", "params": {"threshold": 0.4, "warmup_steps": 1}})
FAULTS = (
    "kill_worker",
    "term_worker",
    "stop_worker",
    "flush_broker",
    "kill_api",
    "restart_postgres",
    "stop_s3",
    "down_up",
)
FINISHED = ("succeeded", "failed", "canceled")
HEARTBEAT, LEASE = 1.0, 5.0
BOUND = LEASE + 2 * HEARTBEAT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def now() -> datetime:
    return datetime.now(UTC)


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"waited {timeout:g} s for {what}")


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class Postgres:
    """A PostgreSQL cluster of the soak's own: initdb into ``root``, served on a free loopback port."""

    def __init__(self, root: Path) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        self.bin = bins[-1] if bins else Path(os.path.dirname(shutil.which("pg_ctl") or "pg_ctl"))
        self.data, self.log = root / "pgdata", root / "postgres.log"
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            root.parent.chmod(0o755)  # the postgres user must reach its directory
            shutil.chown(root, "postgres")
        subprocess.run(
            as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"]),
            check=True,
            capture_output=True,
        )
        self.options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off -c max_connections=200"
        self.start()
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute("CREATE DATABASE skipstep")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/skipstep"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", *args]),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        # The server's output goes to its log: pg_ctl exits once it accepts connections.
        self._ctl("start", "-o", self.options, "-l", str(self.log))

    def restart(self) -> None:
        self._ctl("stop", "-m", "fast")
        self.start()

    def stop(self) -> None:
        subprocess.run(
            as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
        )


class Broker:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        root.mkdir()
        binary = shutil.which("redis-server") or "redis-server"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen([*command, "--dir", str(root)], stdout=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis.from_url(self.url)
        wait_for(self._answers, 30, "redis-server")

    def _answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def flush(self) -> None:
        self.client.flushall()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class S3Server:
    """moto in server mode, as its own process, so that it can be stopped and started again on its port."""

    BUCKET = "skipstep-soak"

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (root / "s3.log").open("ab")
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        command = [
            sys.executable,
            "-c",
            "from moto.server import main; main()",
            "-H",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._answers, 60, "the S3 server")
        client = boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="soak", aws_secret_access_key="soak"
        )
        client.create_bucket(Bucket=self.BUCKET)

    def _answers(self) -> bool:
        try:
            httpx.get(self.url, timeout=1)
            return True
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


STARTED = re.compile(r"skipstep up: started (.+?) \(pid (\d+)\)")


class Service:
    """`skipstep up` and `skipstep down` as an operator runs them, on the soak's infrastructure."""

    def __init__(self, root: Path, database: str, broker: str, s3: str) -> None:
        self.root, self.database = root, database
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "up.log"
        home = root / "home"
        self.env = {name: value for name, value in os.environ.items() if not name.startswith("SKIPSTEP_")} | {
            "SKIPSTEP_HOME": str(home),
            "SKIPSTEP_DEVICE": "cpu",
            "SKIPSTEP_MODELS": f"{MODELS[0]},{MODELS[1]}=wan-tiny",
            "SKIPSTEP_DATABASE_URL": database,
            "SKIPSTEP_BROKER_URL": broker,
            "SKIPSTEP_STORAGE_BACKEND": "s3",
            "SKIPSTEP_S3_ENDPOINT_URL": s3,
            "SKIPSTEP_S3_BUCKET": S3Server.BUCKET,
            "SKIPSTEP_S3_ACCESS_KEY_ID": "soak",
            "SKIPSTEP_S3_SECRET_ACCESS_KEY": "soak",
            "SKIPSTEP_HEARTBEAT_SECONDS": str(HEARTBEAT),
            "SKIPSTEP_JOB_LEASE_SECONDS": str(LEASE),
            "SKIPSTEP_REDISPATCH_SECONDS": str(LEASE),
            "SKIPSTEP_SHUTDOWN_GRACE_SECONDS": "2",
            # Ride out the S3 outage instead of failing the videos stored meanwhile; a store that is back is used
            # within 2 s.
            "SKIPSTEP_STORAGE_ATTEMPTS": "60",
            "SKIPSTEP_STORAGE_RETRY_SECONDS": "0.5",
            "SKIPSTEP_STORAGE_RETRY_MAX_SECONDS": "2",
            "SKIPSTEP_WEBHOOK_ALLOW_PRIVATE": "true",
            # One key submits every job of the soak: its per-key limits are not what this measures.
            "SKIPSTEP_RATE_PER_SECOND": "0",
            "SKIPSTEP_MAX_ACTIVE_JOBS": "0",
            "OMP_NUM_THREADS": "1",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.ups = 0

    def prepare(self) -> None:
        """Build the preset once, so that the two workers of the first `up` do not both build it."""
        code = "from core.models.presets import ensure_preset; from core.settings import get_settings as g; "
        code += "ensure_preset('wan-tiny', g().presets_dir)"
        subprocess.run([sys.executable, "-c", code], env=self.env, check=True)

    def up(self) -> datetime:
        """`skipstep up`; when it answered and every model's worker had registered."""
        since = now()
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "core.cli", "up", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.ups += 1
        wait_for(self.ready, 300, "skipstep up to answer", 0.2)
        for model in MODELS:
            wait_for(lambda m=model: self.worker_since(m, since), 300, f"a {model} worker to register", 0.2)
        return now()

    def down(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "core.cli", "down"], env=self.env, capture_output=True, text=True, timeout=180
        )
        if result.returncode != 0:
            raise RuntimeError(f"skipstep down failed: {result.stderr}")
        if self.process is not None:
            self.process.wait(timeout=60)

    def stop(self) -> None:
        """At the end, or after a failure: `down`, then kill what is left of the process group."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.down()
        except (RuntimeError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def pid(self, child: str) -> int:
        """The pid of the named child (api, worker MODEL, webhooks) that `up` started last."""
        pids = [int(pid) for name, pid in STARTED.findall(self.log_path.read_text()) if name == child]
        return pids[-1]

    def worker_since(self, model: str, since: datetime, other_than: int | None = None) -> Worker | None:
        """A live worker of ``model`` that registered after ``since``."""
        with session_scope(self.database) as session:
            query = select(Worker).where(
                Worker.model == model,
                Worker.started_at > since,
                Worker.stopped_at.is_(None),
                Worker.stop_reason.is_(None),
            )
            if other_than is not None:
                query = query.where(Worker.pid != other_than)
            return session.scalars(query.order_by(Worker.started_at.desc()).limit(1)).first()

    def stop_reason(self, pid: int) -> str | None:
        with session_scope(self.database) as session:
            query = select(Worker.stop_reason).where(Worker.pid == pid).order_by(Worker.started_at.desc()).limit(1)
            return session.scalar(query)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False


class Clients:
    """Submit jobs keeping a small backlog, retrying through outages with an Idempotency-Key; cancel a few."""

    def __init__(self, service: Service, key: str, jobs: int, backlog: int, cancel_share: float, seed: int) -> None:
        self.service, self.jobs, self.backlog, self.cancel_share = service, jobs, backlog, cancel_share
        self.http = httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        self.rng = random.Random(seed)
        self.accepted: list[str] = []
        self.canceled_by_client: set[str] = set()
        self.retries = 0
        self.stopped = threading.Event()
        self.faults_over = threading.Event()

    def run(self) -> None:
        """At least ``jobs`` jobs, and more until the faults are over: recovery is read from jobs finishing."""
        index = 0
        while index < self.jobs or not self.faults_over.is_set():
            while (
                not self.stopped.is_set() and len(self.accepted) - finished_count(self.service.database) >= self.backlog
            ):
                time.sleep(0.2)
            if self.stopped.is_set():
                return
            self.submit(index)
            index += 1
            if self.rng.random() < self.cancel_share:
                self.cancel(self.rng.choice(self.accepted[-10:]))

    def submit(self, index: int) -> None:
        body = {
            "seed": index,
            "model": MODELS[index % len(MODELS)],
            "cache": STRATEGIES[(index // len(MODELS)) % len(STRATEGIES)],
            **JOB,
        }
        headers = {"Idempotency-Key": f"soak-{index}"}
        while not self.stopped.is_set():
            try:
                response = self.http.post("/jobs", json=body, headers=headers)
                if response.status_code == 202:
                    self.accepted.append(response.json()["id"])
                    return
                if response.status_code < 500:
                    raise RuntimeError(f"job {index} refused: {response.status_code} {response.text}")
            except httpx.TransportError:
                pass
            self.retries += 1
            time.sleep(0.2)

    def cancel(self, job_id: str) -> None:
        try:
            if self.http.post(f"/jobs/{job_id}/cancel").status_code == 202:
                self.canceled_by_client.add(job_id)
        except httpx.TransportError:
            pass


def finished_count(database: str) -> int:
    try:
        with session_scope(database) as session:
            return session.scalar(select(func.count()).where(Job.status.in_(FINISHED))) or 0
    except Exception:
        return 0  # the database is restarting


def in_flight(database: str) -> set[uuid.UUID]:
    with session_scope(database) as session:
        return set(session.scalars(select(Job.id).where(Job.status.in_(("queued", "running")))))


def each_model_finished_since(database: str, since: datetime) -> bool:
    try:
        with session_scope(database) as session:
            models = session.scalars(
                select(Job.model).where(Job.status == "succeeded", Job.finished_at > since).distinct()
            ).all()
    except Exception:
        return False
    return set(models) >= set(MODELS)


@dataclass
class Fault:
    kind: str
    target: str
    at: datetime
    back_seconds: float = 0.0
    recovery_seconds: float = 0.0
    jobs: set[uuid.UUID] = field(default_factory=set)
    note: str = ""


class Soak:
    def __init__(self, service: Service, postgres: Postgres, broker: Broker, s3: S3Server, args: argparse.Namespace):
        self.service, self.postgres, self.broker, self.s3, self.args = service, postgres, broker, s3, args
        self.faults: list[Fault] = []
        self.turn = 0

    def inject(self, kind: str) -> Fault:
        """Inject one fault; returns it once the faulted part is back and every model has finished a job again."""
        service = self.service
        model = MODELS[self.turn % len(MODELS)]
        self.turn += 1
        target = f"worker {model}" if kind.endswith("_worker") else kind
        fault = Fault(kind, target, now(), jobs=in_flight(service.database))
        if kind in ("kill_worker", "term_worker", "stop_worker"):
            pid = service.pid(f"worker {model}")
            fault.target = f"worker {model} (pid {pid})"
            if kind == "stop_worker":
                os.kill(pid, signal.SIGSTOP)
                # Past its lease, until the other worker's sweep has marked it gone (three missed heartbeats).
                time.sleep(LEASE + HEARTBEAT)
                try:
                    wait_for(lambda: service.stop_reason(pid) == "gone", 60, "the frozen worker marked gone", 0.2)
                    fault.note = "marked gone"
                except TimeoutError:
                    fault.note = "not marked gone"
                fault.note += f" after {(now() - fault.at).total_seconds():.0f} s frozen"
                os.kill(pid, signal.SIGCONT)
                back = now()
            else:
                os.kill(pid, signal.SIGKILL if kind == "kill_worker" else signal.SIGTERM)
                row = wait_for(
                    lambda: service.worker_since(model, fault.at, other_than=pid), 300, "the worker back", 0.2
                )
                back = row.started_at
        elif kind == "flush_broker":
            self.broker.flush()
            back = now()
        elif kind == "kill_api":
            pid = service.pid("api")
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: service.pid("api") != pid and service.ready(), 300, "the API back", 0.1)
            back = now()
        elif kind == "restart_postgres":
            self.postgres.restart()
            back = now()
        elif kind == "stop_s3":
            self.s3.stop()
            time.sleep(self.args.s3_outage)
            self.s3.start()
            back = now()
        elif kind == "down_up":
            service.down()
            back = service.up()
        else:
            raise ValueError(kind)
        fault.back_seconds = (back - fault.at).total_seconds()
        wait_for(lambda: each_model_finished_since(service.database, back), 600, f"recovery from {kind}", 0.1)
        fault.recovery_seconds = (now() - back).total_seconds()
        self.faults.append(fault)
        return fault


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="times each kind of fault is injected")
    parser.add_argument("--gap", type=float, default=15, help="seconds of undisturbed running between faults")
    parser.add_argument("--backlog", type=int, default=12, help="jobs queued or running that clients keep up")
    parser.add_argument("--s3-outage", type=float, default=30)
    parser.add_argument("--cancel-share", type=float, default=0.02)
    parser.add_argument("--drain-seconds", type=float, default=600, help="how long to wait for the last jobs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the logs and data directory")
    parser.add_argument("--only", help="comma-separated fault kinds to inject (default: all)")
    args = parser.parse_args()
    code = Path(core.__file__).resolve().parent.parent
    if code != Path.cwd().resolve():
        raise SystemExit(f"run from the checkout being measured with PYTHONPATH=$PWD: core is imported from {code}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"code: {code} at {commit}", flush=True)

    root = Path(tempfile.mkdtemp(prefix="skipstep-soak-"))
    postgres = Postgres(root / "postgres")
    broker: Broker | None = None
    s3: S3Server | None = None
    service: Service | None = None
    clients: Clients | None = None
    try:
        broker, s3 = Broker(root / "redis"), S3Server(root)
        service = Service(root, postgres.url, broker.url, s3.url)
        print(
            f"postgres :{postgres.port}, redis :{broker.port}, s3 :{s3.port}, api :{service.port}; logs in {root}",
            flush=True,
        )
        service.prepare()
        service.up()
        # The key `skipstep up` creates on a service that has none.
        raw_key = (Path(service.env["SKIPSTEP_HOME"]) / "api-key").read_text().strip()
        clients = Clients(service, raw_key, args.jobs, args.backlog, args.cancel_share, args.seed)
        started = time.monotonic()
        submitter = threading.Thread(target=clients.run, daemon=True)
        submitter.start()
        soak = Soak(service, postgres, broker, s3, args)
        kinds = args.only.split(",") if args.only else FAULTS
        schedule = [kind for _ in range(args.rounds) for kind in kinds]
        for number, kind in enumerate(schedule, start=1):
            time.sleep(args.gap)
            fault = soak.inject(kind)
            print(
                f"fault {number}/{len(schedule)}: {kind} ({fault.target}) back in {fault.back_seconds:.1f} s, "
                f"recovered {fault.recovery_seconds:.1f} s after; {len(fault.jobs)} jobs in flight"
                + (f"; {fault.note}" if fault.note else "")
                + f" [{finished_count(service.database)} jobs finished]",
                flush=True,
            )
        clients.faults_over.set()
        submitter.join()
        drain_until = time.monotonic() + args.drain_seconds
        while finished_count(service.database) < len(clients.accepted) and time.monotonic() < drain_until:
            time.sleep(0.5)
        report(service.database, clients, soak.faults, time.monotonic() - started, args)
    finally:
        if clients is not None:
            clients.stopped.set()
        for stop in (service and service.stop, s3 and s3.stop, broker and broker.stop, postgres.stop):
            if stop:
                try:
                    stop()
                except Exception as exc:  # the rest must still be stopped
                    print(f"cleanup: {exc}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def report(database: str, clients: Clients, faults: list[Fault], elapsed: float, args: argparse.Namespace) -> None:
    accepted = {uuid.UUID(job_id) for job_id in clients.accepted}
    with session_scope(database) as session:
        jobs = {job.id: (job.status.value, job.error_code) for job in session.scalars(select(Job))}
        runs = list(session.scalars(select(JobRun)))
    completions = Counter(run.job_id for run in runs if run.outcome in ("succeeded", "superseded"))
    outcomes = Counter(run.outcome for run in runs)
    statuses = Counter(jobs[job_id][0] for job_id in accepted if job_id in jobs)
    failed = Counter(jobs[job_id][1] for job_id in accepted if jobs[job_id][0] == "failed")

    def lost(ids: set[uuid.UUID]) -> int:
        return sum(1 for job_id in ids if jobs.get(job_id, ("", None))[0] not in ("succeeded", "canceled"))

    def twice(ids: set[uuid.UUID]) -> int:
        return sum(1 for job_id in ids if completions[job_id] > 1)

    print()
    print(
        f"fault soak: {len(accepted)} jobs, {len(faults)} faults, {len(MODELS)} workers under `skipstep up`, "
        f"{elapsed:.0f} s; lease {LEASE:g} s, heartbeat {HEARTBEAT:g} s, bound {BOUND:g} s"
    )
    print(f"- accepted: {len(accepted)} (unique ids; {clients.retries} submit retries with an Idempotency-Key)")
    print(f"- succeeded: {statuses['succeeded']}")
    print(f"- failed: {statuses['failed']} {dict(failed) if failed else ''}".rstrip())
    print(f"- canceled: {statuses['canceled']} (cancels accepted: {len(clients.canceled_by_client)})")
    print(f"- lost (not succeeded or canceled): {lost(accepted)}")
    print(f"- run twice to completion: {twice(accepted)}")
    print(f"- runs by outcome: {dict(sorted(outcomes.items()))}")
    print("- per fault kind: count; back (fault until the part is back) max; recovery (back until every model")
    print("  finished a job again) p50 / max, within the bound; jobs in flight at the faults; of those lost, run twice")
    by_kind: dict[str, list[Fault]] = defaultdict(list)
    for fault in faults:
        by_kind[fault.kind].append(fault)
    for kind in FAULTS:
        done = by_kind.get(kind, [])
        if not done:
            continue
        recoveries = [fault.recovery_seconds for fault in done]
        within = sum(1 for seconds in recoveries if seconds <= BOUND)
        ids = set().union(*(fault.jobs for fault in done))
        notes = ", ".join(fault.note for fault in done if fault.note)
        print(
            f"  - {kind}: {len(done)}x; back max {max(f.back_seconds for f in done):.1f} s; recovery p50 "
            f"{statistics.median(recoveries):.1f} s, max {max(recoveries):.1f} s, {within}/{len(done)} within "
            f"{BOUND:g} s; {len(ids)} jobs in flight, lost {lost(ids)}, run twice {twice(ids)}"
            + (f"; {notes}" if notes else "")
        )


if __name__ == "__main__":
    raise SystemExit(main())

"""Submit throughput and latency of the API under concurrent clients: starts uvicorn (--workers N) on the
given PostgreSQL database and Redis, then C clients, each with its own API key, make N submits in all
(POST /jobs, then one GET /jobs/{id} of the job just made), and the database is checked afterwards for lost
and duplicated jobs. Then, with --polls, the clients poll the jobs they made (GET /jobs/{id}) as a fleet of
pollers does: once plainly, then conditionally (If-None-Match with the last ETag, the plain polls' at first: 304
where the API supports it), with the API processes' CPU time per request. No GPU worker runs unless --busy-worker
starts one (wan-tiny, on the same cores); --described first publishes the model's description to the catalogue, as
its workers do once they have loaded it (a deployment's steady state).

    .venv/bin/python bench/service_load.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench \
        --broker-url redis://127.0.0.1:6379/9 --submits 2000 --concurrency 16 --api-workers 2 --polls 5000

The database must be empty or a bench database of this script (it is migrated here). Rate and job-count
limits stay on, set high enough never to refuse, so that their cost is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import select

from core.contract.models import describe
from core.db import ApiKey, Job, session_scope
from core.db.migrate import upgrade
from core.jobs import catalogue
from core.keys import create_key, hash_key
from core.settings import Settings

RAMP = 0.02
JOB = {"width": 64, "height": 64, "num_frames": 9, "num_inference_steps": 6}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ms(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] * 1000


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the API exited ({process.returncode})")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the API did not become ready")


async def client_loop(
    url: str, key: str, run: str, numbers: asyncio.Queue[int], results: dict[str, list], delay: float
) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    await asyncio.sleep(delay)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        while True:
            try:
                number = numbers.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            try:
                response = await client.post("/jobs", json={"prompt": f"load {run} {number}", "seed": number, **JOB})
            except httpx.TransportError as exc:
                results["errors"].append(f"submit {number}: {exc.__class__.__name__}")
                continue
            results["submit"].append(time.perf_counter() - started)
            if response.status_code != 202:
                results["errors"].append(f"submit {number}: {response.status_code} {response.text[:200]}")
                continue
            job_id = response.json()["id"]
            results["accepted"].append(job_id)
            started = time.perf_counter()
            poll = await client.get(f"/jobs/{job_id}")
            results["poll"].append(time.perf_counter() - started)
            if poll.status_code != 200:
                results["errors"].append(f"poll {job_id}: {poll.status_code}")


async def load(url: str, keys: list[str], run: str, submits: int) -> tuple[dict[str, list], float]:
    numbers: asyncio.Queue[int] = asyncio.Queue()
    for number in range(submits):
        numbers.put_nowait(number)
    results: dict[str, list] = {"submit": [], "poll": [], "accepted": [], "errors": []}
    started = time.perf_counter()
    # Clients arrive RAMP seconds apart, as they would; connected in one burst, the API process that wakes
    # first accepts every connection (asyncio accepts up to 100 per wake-up) and the others idle.
    await asyncio.gather(
        *(client_loop(url, key, run, numbers, results, index * RAMP) for index, key in enumerate(keys))
    )
    return results, time.perf_counter() - started


async def poll_loop(
    url: str,
    key: str,
    job_ids: list[str],
    count: asyncio.Queue[int],
    results: dict[str, list],
    conditional: bool,
    tags: dict[str, str],
) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        index = 0
        while True:
            try:
                count.get_nowait()
            except asyncio.QueueEmpty:
                return
            job_id = job_ids[index % len(job_ids)]
            index += 1
            extra = {"If-None-Match": tags[job_id]} if conditional and job_id in tags else {}
            started = time.perf_counter()
            response = await client.get(f"/jobs/{job_id}", headers=extra)
            results["latency"].append(time.perf_counter() - started)
            results[str(response.status_code)].append(1)
            if "etag" in response.headers:
                tags[job_id] = response.headers["etag"]


async def polls(
    url: str, keys: list[str], jobs: dict[str, list[str]], total: int, conditional: bool, tags: dict[str, str]
) -> tuple[dict[str, list], float]:
    count: asyncio.Queue[int] = asyncio.Queue()
    for number in range(total):
        count.put_nowait(number)
    results: dict[str, list] = {"latency": [], "200": [], "304": []}
    started = time.perf_counter()
    await asyncio.gather(
        *(poll_loop(url, key, jobs[key], count, results, conditional, tags) for key in keys if jobs[key])
    )
    return results, time.perf_counter() - started


async def cancel_all(url: str, jobs: dict[str, list[str]]) -> None:
    async def cancel(key: str, job_ids: list[str]) -> None:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            for job_id in job_ids:
                await client.post(f"/jobs/{job_id}/cancel")

    await asyncio.gather(*(cancel(key, job_ids) for key, job_ids in jobs.items()))


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children (uvicorn's worker processes)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=100, help="submits made and not counted, first")
    parser.add_argument("--busy-worker", action="store_true", help="run a wan-tiny worker taking the jobs")
    parser.add_argument(
        "--described", action="store_true", help="publish the model's description first, as its workers do"
    )
    parser.add_argument("--polls", type=int, default=0, help="GET /jobs/{id} polls per mode after the submits")
    parser.add_argument(
        "--cancel-before-polls", action="store_true", help="cancel the jobs first: poll finished jobs, not queued ones"
    )
    args = parser.parse_args()

    upgrade(args.database_url)
    with session_scope(args.database_url) as session:
        keys = [create_key(session, f"bench-{uuid.uuid4().hex[:6]}")[1] for _ in range(args.concurrency)]
        if args.described:
            settings = Settings()
            model = settings.default_model
            catalogue.publish(session, model, describe(settings.model_sources[model], settings.presets_dir), "bench")
    home = Path(tempfile.mkdtemp(prefix="skipstep-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "SKIPSTEP_HOME": str(home),
        "SKIPSTEP_DATABASE_URL": args.database_url,
        "SKIPSTEP_BROKER_URL": args.broker_url,
        "SKIPSTEP_PUBLIC_URL": url,
        "SKIPSTEP_DEVICE": "cpu",
        "SKIPSTEP_RATE_PER_SECOND": "100000",
        "SKIPSTEP_RATE_BURST": "100000",
        "SKIPSTEP_MAX_ACTIVE_JOBS": str(10 * (args.submits + args.warmup)),
        "OMP_NUM_THREADS": "1",
    }
    (home / "videos").mkdir()
    command = [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(args.api_workers), "--log-level", "warning"]
    processes = [start(command, env, home / "api.log")]
    try:
        wait_ready(url, processes[0])
        if args.busy_worker:
            worker = [sys.executable, "-m", "core.cli", "worker", "--model", "wan-tiny"]
            processes.append(start(worker, env, home / "worker.log"))
        asyncio.run(load(url, keys, f"warmup-{uuid.uuid4().hex[:6]}", args.warmup))
        run = uuid.uuid4().hex[:8]
        results, seconds = asyncio.run(load(url, keys, run, args.submits))
        polled = []
        if args.polls:
            jobs = owned_jobs(args.database_url, keys, run)
            if args.cancel_before_polls:
                asyncio.run(cancel_all(url, jobs))
            tags: dict[str, str] = {}  # the plain polls' tags are the conditional polls' first If-None-Match
            for conditional in (False, True):
                before = cpu_seconds(processes[0].pid)
                figures, took = asyncio.run(polls(url, keys, jobs, args.polls, conditional, tags))
                polled.append((conditional, figures, took, cpu_seconds(processes[0].pid) - before))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)

    with session_scope(args.database_url) as session:
        rows = session.execute(select(Job.id, Job.prompt).where(Job.prompt.like(f"load {run} %"))).all()
    stored = {str(job_id) for job_id, _ in rows}
    accepted = set(results["accepted"])
    lost = len(accepted - stored)
    duplicated = len(rows) - len({prompt for _, prompt in rows})
    print(
        f"{args.submits} submits, {args.concurrency} clients, {args.api_workers} API processes, "
        f"{'busy' if args.busy_worker else 'no'} worker{', model described' if args.described else ''}"
        + (f", polls of {'canceled' if args.cancel_before_polls else 'queued'} jobs" if args.polls else "")
    )
    print(f"throughput      {len(results['submit']) / seconds:7.1f} submits/s ({seconds:.1f} s)")
    print(
        f"POST /jobs      p50 {ms(results['submit'], 0.5):6.1f} ms  p99 {ms(results['submit'], 0.99):6.1f} ms"
        f"  mean {statistics.mean(results['submit']) * 1000:6.1f} ms"
    )
    print(f"GET /jobs/{{id}}  p50 {ms(results['poll'], 0.5):6.1f} ms  p99 {ms(results['poll'], 0.99):6.1f} ms")
    print(f"accepted {len(accepted)}, stored {len(stored)}, lost {lost}, duplicated {duplicated}")
    print(f"errors {len(results['errors'])}" + (f": {results['errors'][:3]}" if results["errors"] else ""))
    for conditional, figures, took, cpu in polled:
        done = len(figures["latency"])
        print(
            f"{'conditional' if conditional else 'plain':11} GETs  {done / took:7.1f}/s  "
            f"p50 {ms(figures['latency'], 0.5):6.1f} ms  p99 {ms(figures['latency'], 0.99):6.1f} ms  "
            f"200: {len(figures['200'])}  304: {len(figures['304'])}  API CPU {cpu / done * 1000:5.2f} ms/request"
        )


def owned_jobs(database_url: str, keys: list[str], run: str) -> dict[str, list[str]]:
    """Each client's jobs of this run, by its raw key."""
    by_hash = {hash_key(key): key for key in keys}
    with session_scope(database_url) as session:
        rows = session.execute(
            select(ApiKey.key_hash, Job.id)
            .join(ApiKey, ApiKey.id == Job.owner_id)
            .where(Job.prompt.like(f"load {run} %"))
        ).all()
    jobs: dict[str, list[str]] = {key: [] for key in keys}
    for key_hash, job_id in rows:
        jobs[by_hash[key_hash]].append(str(job_id))
    return jobs


if __name__ == "__main__":
    main()

"""What one request costs the API, one at a time: database statements and Redis commands per request, and the
API's CPU time per request, for a submit, a full GET of a queued job and a conditional GET (304) of it. Requests go
straight into the ASGI application in this process (no HTTP server or client to pay for), one at a time, on the given
PostgreSQL database and Redis.

    .venv/bin/python bench/request_cost.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench \
        --broker-url redis://127.0.0.1:6379/9 [--requests 300]

The database must be empty or a bench database (it is migrated here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

JOB = {"width": 64, "height": 64, "num_frames": 9, "num_inference_steps": 6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--requests", type=int, default=300, help="of each kind")
    args = parser.parse_args()
    os.environ |= {
        "SKIPSTEP_DATABASE_URL": args.database_url,
        "SKIPSTEP_BROKER_URL": args.broker_url,
        "SKIPSTEP_RATE_PER_SECOND": "100000",
        "SKIPSTEP_RATE_BURST": "100000",
        "SKIPSTEP_MAX_ACTIVE_JOBS": str(100 * args.requests),
    }
    # Imported after the environment is set: the settings are read once per process.
    import redis
    from sqlalchemy import event

    from api.app import app
    from core.db import engine_for, session_scope
    from core.db.migrate import upgrade
    from core.keys import create_key

    upgrade(args.database_url)
    with session_scope(args.database_url) as session:
        key = create_key(session, f"cost-{uuid.uuid4().hex[:6]}")[1]
    statements = 0

    def count(*_: object) -> None:
        nonlocal statements
        statements += 1

    event.listen(engine_for(args.database_url), "before_cursor_execute", count)
    broker = redis.Redis.from_url(args.broker_url)
    authorization = (b"authorization", f"Bearer {key}".encode())

    async def call(method: str, path: str, body: bytes = b"", *headers: tuple[bytes, bytes]) -> Answer:
        """One request straight into the ASGI application, as uvicorn hands it over."""
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [authorization, (b"host", b"bench"), (b"content-type", b"application/json"), *headers],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
        }
        sent = False
        answer = Answer()

        async def receive() -> dict:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                answer.status = message["status"]
                answer.headers = {name.decode(): value.decode() for name, value in message["headers"]}
            elif message["type"] == "http.response.body":
                answer.body += message.get("body", b"")

        await app(scope, receive, send)
        return answer

    async def measure(name: str, request: Callable[[int], Awaitable[object]]) -> None:
        nonlocal statements
        for number in range(20):  # warm-up: caches, pools, statement compilation
            await request(number)
        commands = broker.info("stats")["total_commands_processed"]
        statements, cpu, wall = 0, time.process_time(), []
        for number in range(args.requests):
            started = time.perf_counter()
            await request(number)
            wall.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu
        redis_commands = broker.info("stats")["total_commands_processed"] - commands - 1
        print(
            f"{name:16} {statements / args.requests:5.2f} statements  {redis_commands / args.requests:5.2f} Redis "
            f"commands  {cpu / args.requests * 1000:6.2f} ms CPU  p50 {statistics.median(wall) * 1000:6.2f} ms"
        )

    job_ids: list[str] = []
    tags: dict[str, str] = {}

    async def submit(number: int) -> None:
        body = json.dumps({"prompt": f"cost {number}", "seed": number, **JOB}).encode()
        answer = await call("POST", "/jobs", body)
        assert answer.status == 202, answer.body
        job_ids.append(json.loads(answer.body)["id"])

    async def full_get(number: int) -> None:
        job_id = job_ids[number % len(job_ids)]
        answer = await call("GET", f"/jobs/{job_id}")
        assert answer.status == 200, answer.body
        tags[job_id] = answer.headers["etag"]

    async def conditional_get(number: int) -> None:
        job_id = job_ids[number % len(job_ids)]
        answer = await call("GET", f"/jobs/{job_id}", b"", (b"if-none-match", tags[job_id].encode()))
        assert answer.status == 304, answer.status

    async def run() -> None:
        async with app.router.lifespan_context(app):
            await measure("POST /jobs", submit)
            await measure("GET /jobs/{id}", full_get)
            await measure("GET, 304", conditional_get)

    asyncio.run(run())


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


if __name__ == "__main__":
    main()

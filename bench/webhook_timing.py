"""Webhook timings: the transport on loopback (a delivered POST; a read timeout against a receiver that answers
late, as a ratio of the timeout), and, with --api-url, a running service's delivery latency: a job's
finished_at to the receiver holding the request. The service must allow private addresses
(SKIPSTEP_WEBHOOK_ALLOW_PRIVATE=true), as the receiver listens on loopback; run it with the worker warm and idle.

    .venv/bin/python bench/webhook_timing.py [--repeat 20] [--api-url http://127.0.0.1:8000 --jobs 5]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from core.settings import get_settings
from core.webhooks.transport import Target, post

TINY_JOB = {"width": 32, "height": 32, "num_frames": 5, "num_inference_steps": 2}
LATE_SECONDS = 1.0


class Receiver(ThreadingHTTPServer):
    arrivals: dict[str, float]


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        arrived = time.time()
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.arrivals[self.path] = arrived
        if self.path == "/late":
            time.sleep(LATE_SECONDS)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def summary(samples: list[float]) -> str:
    return f"median {1000 * statistics.median(samples):7.1f} ms  max {1000 * max(samples):7.1f} ms  (n={len(samples)})"


def transport(receiver: Receiver, repeat: int) -> None:
    port = receiver.server_address[1]

    def target(path: str) -> Target:
        return Target("http", "127.0.0.1", port, path, ("127.0.0.1",), "127.0.0.1")

    delivered = [post(target("/ok"), {}, b"{}", 2, 2).duration_seconds for _ in range(repeat)]
    read_timeout = 0.2
    late = [post(target("/late"), {}, b"{}", 2, read_timeout).duration_seconds for _ in range(max(3, repeat // 4))]
    print(f"POST delivered (200)           {summary(delivered)}")
    print(f"read timeout {read_timeout} s (reply after {LATE_SECONDS} s)  {summary(late)}")
    print(f"  read timeout taken / set: median {statistics.median(late) / read_timeout:.2f}x")


def delivery_latency(receiver: Receiver, api_url: str, api_key: str, jobs: int) -> None:
    port = receiver.server_address[1]
    latencies = []
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30) as client:
        for seed in range(jobs):
            path = f"/hook/{seed}-{time.monotonic_ns()}"
            body = {"prompt": "webhook probe", "seed": seed, "webhook_url": f"http://127.0.0.1:{port}{path}"}
            job = client.post("/jobs", json=body | TINY_JOB).raise_for_status().json()
            deadline = time.monotonic() + 120
            while job["status"] in ("queued", "running") or path not in receiver.arrivals:
                if time.monotonic() > deadline:
                    raise SystemExit(f"job {job['id']} ({job['status']}): no webhook within 120 s")
                time.sleep(0.02)
                job = client.get(f"/jobs/{job['id']}").raise_for_status().json()
            latencies.append(receiver.arrivals[path] - datetime.fromisoformat(job["finished_at"]).timestamp())
    print(f"finished_at -> webhook received {summary(latencies)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    settings = get_settings()
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--api-url", help="also measure a running service's delivery latency")
    parser.add_argument("--api-key", default=settings.api_key)
    parser.add_argument("--jobs", type=int, default=5)
    args = parser.parse_args()

    receiver = Receiver(("127.0.0.1", 0), Handler)
    receiver.arrivals = {}
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        transport(receiver, args.repeat)
        if args.api_url:
            key = args.api_key or (settings.home / "api-key").read_text().strip()
            delivery_latency(receiver, args.api_url, key, args.jobs)
    finally:
        receiver.shutdown()
        receiver.server_close()


if __name__ == "__main__":
    main()

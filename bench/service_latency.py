"""Latencies of a running skipstep service: submit (POST /jobs), poll (GET /jobs/{id}), and the time
from submit to the first denoising step as the worker records it. Run with the worker warm and idle.

    .venv/bin/python bench/service_latency.py --api-url http://127.0.0.1:8000 --jobs 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

from core.settings import get_settings

SMALL_JOB = {"width": 64, "height": 64, "num_frames": 9, "num_inference_steps": 6}


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered) * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms  (n={len(ordered)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    settings = get_settings()
    parser.add_argument("--api-url", default=settings.public_url)
    parser.add_argument("--api-key", default=settings.api_key)
    parser.add_argument("--jobs", type=int, default=10)
    args = parser.parse_args()
    key = args.api_key or (settings.home / "api-key").read_text().strip()

    submits: list[float] = []
    polls: list[float] = []
    first_steps: list[float] = []
    with httpx.Client(base_url=args.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for seed in range(args.jobs):
            started = time.perf_counter()
            response = client.post("/jobs", json={"prompt": "latency probe", "seed": seed, **SMALL_JOB})
            submits.append(time.perf_counter() - started)
            response.raise_for_status()
            job = response.json()
            while job["status"] in ("queued", "running"):
                started = time.perf_counter()
                job = client.get(f"/jobs/{job['id']}").json()
                polls.append(time.perf_counter() - started)
                time.sleep(0.05)
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job['id']} {job['status']}: {job['error']}")
            first_steps.append(job["metrics"]["timings"]["submit_to_denoising"])

    print(f"POST /jobs                 {percentiles(submits)}")
    print(f"GET /jobs/{{id}}             {percentiles(polls)}")
    print(f"submit -> denoising        {percentiles(first_steps)}")


if __name__ == "__main__":
    main()

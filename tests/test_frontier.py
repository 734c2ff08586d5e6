"""Choosing by quality, end to end on wan-tiny: a frontier measured by `skipstep frontier` into the service's
database, served by GET /models; `auto` jobs through the job API and a real worker (the predicted setting runs, or
no cache with the reason); fidelity receipts on the worker's idle time that meet the target, fold into the frontier
and show on the dashboard (Chromium)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page
from service import Service, isolated_service, s3_settings, wait_until

from core.contract.frontier import TIERS, Frontier, FrontierPoint, Target, choose, mark_pareto
from core.settings import Settings
from skipstep import Client

# A tiny grid, one prompt, a tiny shape: seconds per run, not minutes.
TINY = {"width": 32, "height": 32, "num_frames": 5, "num_inference_steps": 4}
SETTINGS = ("magcache:threshold=0.5,max_skip_steps=3", "fbcache:threshold=0.3", "taylorseer:warmup_steps=1,interval=2")


@pytest.fixture(scope="module")
def quality(
    settings: Settings, wan_tiny: object, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """The service on its own database and its own Redis (the session's service has a wan-tiny worker on the shared
    one, which would take this service's jobs and find no such row), its worker sampling every cached job for a
    receipt, and the frontier of wan-tiny at the small job shape measured by the CLI into that database."""
    logs = tmp_path_factory.mktemp("frontier-logs")
    values = {"SKIPSTEP_RECEIPT_SAMPLE_RATE": "1", **s3_settings(s3_endpoint, "skipstep-frontier")}
    with isolated_service(settings, logs, **values) as service:
        prompts = logs / "prompts.txt"
        prompts.write_text("a red fox running through snow\n")
        size = ["--width", "32", "--height", "32", "--num-frames", "5", "--steps", "4"]
        grid = [arg for setting in SETTINGS for arg in ("--setting", setting)]
        command = [sys.executable, "-m", "core.cli", "frontier", "--model", "wan-tiny", *size, *grid]
        measured = subprocess.run(
            [*command, "--prompts", str(prompts)], env=service.env, capture_output=True, text=True, timeout=600
        )
        assert measured.returncode == 0, measured.stderr
        assert "stored the frontier of wan-tiny at 32x32x5, 4 steps" in measured.stdout
        service.start_worker()
        yield service


def frontier_of(service: Service) -> dict[str, Any]:
    with service.client() as client:
        models = client.get("/models").json()
    (model,) = [m for m in models if m["name"] == "wan-tiny"]
    (frontier,) = model["frontiers"]
    return frontier


def receipt_of(service: Service, job_id: str) -> dict[str, Any]:
    def measured() -> dict[str, Any] | None:
        job = service.get(job_id)
        fidelity = (job["metrics"] or {}).get("fidelity")
        return job if fidelity and fidelity["basis"] == "receipt" else None

    return wait_until(measured, 600, 0.2, f"job {job_id}'s receipt")


def test_models_serve_the_measured_frontier(quality: Service) -> None:
    frontier = frontier_of(quality)
    assert (frontier["width"], frontier["height"], frontier["num_frames"], frontier["num_inference_steps"]) == (
        32,
        32,
        5,
        4,
    )
    assert {p["strategy"] for p in frontier["points"]} == {"magcache", "fbcache", "taylorseer"}
    for point in frontier["points"]:
        assert point["total_calls"] == 8 and 0 < point["computed_calls"] < 8
        assert point["speedup"] > 0 and 0 < point["psnr"] <= point["psnr_mean"] and point["samples"] == 1
    assert any(p["pareto"] for p in frontier["points"])


def test_an_auto_job_runs_the_predicted_setting_and_its_receipt_meets_the_target(quality: Service) -> None:
    points = frontier_of(quality)["points"]
    target = min(p["psnr"] for p in points) - 5  # every setting meets it: auto takes the fastest
    fastest = max((p for p in points if p["speedup"] > 1), key=lambda p: p["speedup"])
    job = quality.submit(
        **TINY,
        cache={"strategy": "auto", "target": {"min_psnr": target}},
        webhook_url="http://127.0.0.1:9/hook",
        seed=7,
    )
    auto = job["expected"]["auto"]
    assert (auto["strategy"], auto["params"], auto["point"]) == (fastest["strategy"], fastest["params"], fastest["id"])
    assert auto["predicted_speedup"] == round(fastest["speedup"], 4)
    assert auto["predicted_psnr"] == round(fastest["psnr"], 3) and auto["frontier_shape"] == "32x32x5-4"
    assert job["input"]["cache"]["strategy"] == fastest["strategy"]

    job = receipt_of(quality, job["id"])
    assert job["status"] == "succeeded"
    metrics = job["metrics"]
    assert metrics["strategy"] == fastest["strategy"]
    assert fastest["params"].items() <= metrics["params"].items()
    fidelity = metrics["fidelity"]
    assert fidelity["psnr"] >= target and fidelity["predicted_psnr"] == fastest["psnr"]
    # Another prompt and seed than the frontier's: a shortfall is judged against the margin (1 dB by default).
    assert fidelity["shortfall"] is (fidelity["psnr"] < fidelity["predicted_psnr"] - 1.0)
    with quality.client() as client:
        events = [d["event_type"] for d in client.get(f"/jobs/{job['id']}/deliveries").json()["deliveries"]]
        scrape = client.get("/metrics").text
    assert "job.fidelity" in events
    assert 'skipstep_fidelity_receipts_total{model="wan-tiny"}' in scrape


def test_skipstep_submit_and_the_sdk_name_a_target_and_get_the_setting_auto_chose(quality: Service) -> None:
    points = frontier_of(quality)["points"]
    fastest = max((p for p in points if p["speedup"] > 1), key=lambda p: p["speedup"])
    floor = min(p["psnr"] for p in points) - 5
    size = ["--width", "32", "--height", "32", "--num-frames", "5", "--steps", "4"]
    command = [sys.executable, "-m", "core.cli", "submit", "--model", "wan-tiny", "--prompt", "a fox", *size]
    command += ["--api-url", quality.url]
    env = quality.env | {"SKIPSTEP_API_KEY": quality.keys["alice"]}
    submitted = subprocess.run(
        [*command, "--min-psnr", f"{floor:.3f}"], env=env, capture_output=True, text=True, timeout=120
    )
    assert submitted.returncode == 0, submitted.stderr
    queued, chose = submitted.stdout.splitlines()
    job = quality.get(queued.split()[1])
    auto = job["expected"]["auto"]
    assert {k: v for k, v in auto["target"].items() if v is not None} == {"min_psnr": round(floor, 3)}
    assert auto["point"] == fastest["id"]
    assert (job["input"]["cache"]["strategy"], job["input"]["cache"]["params"]) == (
        fastest["strategy"],
        fastest["params"],
    )
    assert chose.startswith(f"auto chose {fastest['strategy']} ") and f"{fastest['speedup']:g}x" in chose
    assert chose.endswith(auto["reason"])

    refused = subprocess.run(
        [*command, "--cache", "magcache", "--tier", "high"], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and "cache" in refused.stderr and "only with strategy 'auto'" in refused.stderr

    with Client(quality.url, quality.keys["alice"]) as client:
        by_sdk = client.jobs.create("a fox", target=Target(min_psnr=floor), **TINY)
        lossless = client.jobs.create("a fox", target={"tier": "lossless"}, **TINY)
    with quality.client() as client:
        for job_id in (job["id"], str(by_sdk.id), str(lossless.id)):
            client.post(f"/jobs/{job_id}/cancel")  # the worker's time goes to the other tests' jobs
    assert by_sdk.expected and by_sdk.expected.auto and by_sdk.expected.auto.point == fastest["id"]
    assert lossless.expected and lossless.expected.auto and lossless.expected.auto.strategy == "none"
    assert lossless.input.cache.strategy == "none"


def test_an_auto_job_no_frontier_covers_runs_uncached_and_says_why(quality: Service) -> None:
    job = quality.submit(**TINY | {"num_inference_steps": 3}, cache={"strategy": "auto", "target": {"tier": "high"}})
    auto = job["expected"]["auto"]
    assert auto["strategy"] == "none" and auto["point"] is None
    assert "no frontier covers this job" in auto["reason"] and "not 3" in auto["reason"]
    done = quality.wait(job["id"], timeout=600)
    assert done["status"] == "succeeded" and done["metrics"]["strategy"] == "none"

    lossless = quality.submit(**TINY, cache={"strategy": "auto", "target": {"tier": "lossless"}})
    assert lossless["expected"]["auto"]["strategy"] == "none"
    assert lossless["expected"]["auto"]["reason"].startswith("lossless")


def test_auto_refuses_a_request_without_a_target_or_with_two_kinds(quality: Service) -> None:
    with quality.client() as client:
        for cache in (
            {"strategy": "auto"},
            {"strategy": "auto", "target": {"min_psnr": 30, "deadline_seconds": 2}},
            {"strategy": "magcache", "target": {"min_psnr": 30}},
        ):
            response = client.post("/jobs", json={"prompt": "p", **TINY, "cache": cache})
            assert response.status_code == 422, response.text
            assert response.json()["error"]["fields"][0]["field"].startswith("cache")


def test_a_receipt_updates_the_frontier_and_the_dashboard_shows_it(quality: Service, page: Page) -> None:
    before = {p["id"]: p for p in frontier_of(quality)["points"]}
    (point,) = [p for p in before.values() if p["strategy"] == "fbcache"]
    job = quality.submit(**TINY, cache={"strategy": "fbcache", "params": point["params"]}, seed=11)
    job = receipt_of(quality, job["id"])
    psnr = job["metrics"]["fidelity"]["psnr"]
    after = {p["id"]: p for p in frontier_of(quality)["points"]}[point["id"]]
    assert after["receipts"] == point["receipts"] + 1 and after["samples"] == point["samples"] + 1
    assert after["psnr"] == pytest.approx(min(point["psnr"], psnr))

    page.goto(f"{quality.url}/admin/login")
    page.fill("#key", quality.keys["admin"])
    page.click("form button[type=submit]")
    page.wait_for_selector("#dashboard")
    chart = page.locator(".frontier-model[data-model='wan-tiny'] svg.frontier[data-shape='32x32x5-4']")
    assert chart.locator("circle.point").count() == len(before)
    assert chart.locator("polyline.front").count() <= 1
    mark = chart.locator("circle.point.receipted[data-setting^='fbcache']")
    assert int(mark.get_attribute("data-receipts") or 0) == after["receipts"]
    assert (
        page.locator(".frontier-model[data-model='wan-tiny'] [data-receipts]")
        .first.inner_text()
        .startswith("Receipts, last 24 h:")
    )


def point(name: str, speedup: float, psnr: float, ssim: float = 0.9) -> FrontierPoint:
    return FrontierPoint(
        id=name,
        strategy=name,
        params={},
        computed_calls=10,
        total_calls=20,
        speedup=speedup,
        denoise_seconds=10 / speedup,
        baseline_denoise_seconds=10,
        psnr=psnr,
        psnr_mean=psnr + 1,
        ssim=ssim,
        ssim_mean=ssim,
        samples=3,
    )


FRONTIER = Frontier(
    model="m",
    width=64,
    height=64,
    num_frames=9,
    num_inference_steps=6,
    guidance_scale=5,
    measured_at="2026-12-05T00:00:00Z",
    points=[point("a", 3.0, 22, 0.8), point("b", 2.0, 30, 0.95), point("c", 1.5, 36, 0.98), point("d", 1.4, 33)],
)


def test_choose_takes_the_fastest_setting_meeting_the_target_or_the_best_within_a_deadline() -> None:
    assert choose(FRONTIER, Target(min_psnr=29)).strategy == "b"
    assert choose(FRONTIER, Target(min_psnr=29, min_ssim=0.97)).strategy == "c"
    for tier in ("high", "balanced", "fast"):
        minimum = TIERS[tier]
        by_tier = choose(FRONTIER, Target(tier=tier))
        by_numbers = choose(FRONTIER, Target(min_psnr=minimum.psnr, min_ssim=minimum.ssim))
        assert by_tier.strategy == by_numbers.strategy != "" and by_tier.target.tier == tier
    assert choose(FRONTIER, Target(min_psnr=40)).strategy == "none"
    within = choose(FRONTIER, Target(deadline_seconds=6), uncached_seconds=10)
    assert (within.strategy, within.predicted_denoise_seconds) == ("b", 5.0)
    assert choose(FRONTIER, Target(deadline_seconds=1), uncached_seconds=10).strategy == "a"
    assert choose(FRONTIER, Target(deadline_seconds=20), uncached_seconds=10).strategy == "none"
    assert [p.pareto for p in mark_pareto(FRONTIER.points)] == [True, True, True, False]


def test_tiers_are_ordered_and_documented_as_they_are() -> None:
    high, balanced, fast = TIERS["high"], TIERS["balanced"], TIERS["fast"]
    assert high.psnr > balanced.psnr > fast.psnr and high.ssim >= balanced.ssim >= fast.ssim
    described = Target.model_fields["tier"].description or ""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name, minimum in (("high", high), ("balanced", balanced), ("fast", fast)):
        assert f"{name} (PSNR >= {minimum.psnr:g} dB, SSIM >= {minimum.ssim:g})" in described
        assert f"`{name}`: PSNR >= {minimum.psnr:g} dB and SSIM >= {minimum.ssim:g}" in readme


def test_a_choice_never_comes_from_a_missing_frontier() -> None:
    fallback = choose(None, Target(min_psnr=20), why_none="none measured for m")
    assert fallback.strategy == "none" and "none measured for m" in fallback.reason

"""The admin dashboard in a real headless Chromium against the real service (uvicorn, Celery worker,
PostgreSQL, Redis, S3 server): log in, watch jobs change live, filter, open a job and its video."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page
from service import FINISHED, SLOW_JOB, Service, fresh_database, wait_until
from sqlalchemy.orm import Session

from core.db import Job, JobStatus, session_scope, utcnow
from core.db.migrate import upgrade
from core.jobs import dashboard, repository
from core.keys import create_key

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(autouse=True)
def no_csp_violations(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every page a browser test opens works under its Content-Security-Policy: Chromium reports each thing the
    policy refused (an inline script or style, a fetch, a video from elsewhere) on the console."""
    if "page" not in request.fixturenames:
        yield
        return
    page: Page = request.getfixturevalue("page")
    refused: list[str] = []
    page.on(
        "console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None
    )
    yield
    assert refused == []


# wait_for_function predicates here are functions: a bare expression is eval'd in the page at each poll, which
# the dashboard's Content-Security-Policy (no 'unsafe-eval') refuses.


def log_in(page: Page, service: Service, key: str) -> None:
    page.goto(f"{service.url}/admin?refresh=1")
    assert "/admin/login" in page.url
    page.fill("#key", service.keys[key])
    page.click("form button[type=submit]")


def row_statuses(page: Page, job_ids: list[str]) -> dict[str, str | None]:
    return page.evaluate(
        "ids => Object.fromEntries(ids.map(id => [id, "
        "document.querySelector(`tr[data-job-id='${id}']`)?.dataset.status ?? null]))",
        job_ids,
    )


def test_admin_key_required(page: Page, service: Service) -> None:
    log_in(page, service, "alice")
    assert page.locator("#login-error").inner_text().startswith("This API key is valid, but it is not an admin key")
    assert not [c for c in page.context.cookies() if c["name"] == "skipstep_admin"]

    with httpx.Client(base_url=service.url, timeout=30) as client:
        assert client.get("/admin/api/overview").status_code == 401
        assert client.get("/admin", follow_redirects=False).headers["location"].startswith("/admin/login")
        alice = {"Authorization": f"Bearer {service.keys['alice']}"}
        assert client.get("/admin/api/overview", headers=alice).status_code == 403
        assert client.get("/admin", headers=alice).status_code == 403
        admin = {"Authorization": f"Bearer {service.keys['admin']}"}
        overview = client.get("/admin/api/overview", headers=admin)
    assert overview.status_code == 200
    assert set(overview.json()["counters"]) == {
        "queued",
        "running",
        "succeeded",
        "failed",
        "canceled",
        "finished_last_hour",
    }
    assert set(overview.json()["html"]) == {"counters", "jobs", "workers", "queue", "models", "storage"}


def test_pages_and_answers_carry_security_headers(service: Service) -> None:
    admin = {"Authorization": f"Bearer {service.keys['admin']}"}
    with httpx.Client(base_url=service.url, timeout=30) as client:
        answers = {
            "/admin": client.get("/admin", headers=admin),
            "/admin/login": client.get("/admin/login"),
            "/admin/api/overview": client.get("/admin/api/overview", headers=admin),
            "/admin/static/dashboard.js": client.get("/admin/static/dashboard.js"),
            "/jobs": client.get("/jobs", headers={"Authorization": f"Bearer {service.keys['alice']}"}),
            "/jobs unauthenticated": client.get("/jobs"),
            "/healthz": client.get("/healthz"),
            "/docs": client.get("/docs"),
        }
    for name, response in answers.items():
        assert response.status_code in (200, 401), (name, response.status_code)
        assert response.headers["x-content-type-options"] == "nosniff", name
        assert response.headers["x-frame-options"] == "DENY", name
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"], name
    for name in ("/admin", "/admin/login", "/admin/api/overview"):
        policy = dict(
            part.strip().split(" ", 1) for part in answers[name].headers["content-security-policy"].split(";")
        )
        assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'", name
        assert policy["style-src"] == "'self'" and policy["base-uri"] == "'none'", name
        # The job page's video redirects to the S3 store: its origin may serve media, nothing else.
        assert policy["media-src"] == f"'self' {service.env['SKIPSTEP_S3_ENDPOINT_URL']}", name
    assert answers["/jobs"].headers["content-security-policy"].startswith("default-src 'none';")
    docs = answers["/docs"]
    nonce = docs.text.split('<script nonce="', 1)[1].split('"', 1)[0]
    assert f"script-src 'self' 'nonce-{nonce}'" in docs.headers["content-security-policy"]
    assert "<script>" not in docs.text


def test_dashboard_live_filters_and_job_page(page: Page, service: Service) -> None:
    log_in(page, service, "admin")
    page.wait_for_selector("#dashboard")
    cookie = next(c for c in page.context.cookies() if c["name"] == "skipstep_admin")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.evaluate("window.notReloaded = true")

    # Jobs submitted after the page opened appear and move on without a reload. The worker runs one
    # job at a time, so the later ones wait in the queue long enough to be seen there; the last one
    # is made longer so that it is seen unfinished even where jobs run fast.
    jobs = [
        service.submit(cache={"strategy": "none"}),
        service.submit(cache={"strategy": "magcache", "params": {"threshold": 0.24, "max_skip_steps": 3}}),
        service.submit(cache={"strategy": "easycache", "params": {"threshold": 0.4}}, num_inference_steps=16),
    ]
    ids = [job["id"] for job in jobs]
    seen: dict[str, list[str]] = {job_id: [] for job_id in ids}

    def all_finished() -> bool:
        for job_id, status in row_statuses(page, ids).items():
            if status and (not seen[job_id] or seen[job_id][-1] != status):
                seen[job_id].append(status)
        return all(statuses[-1:] and statuses[-1] in FINISHED for statuses in seen.values())

    wait_until(all_finished, 180, 0.1, f"the dashboard to show the jobs finished (seen so far: {seen})")
    errors = {job_id: service.get(job_id)["error"] for job_id in ids}
    assert all(statuses[-1] == "succeeded" for statuses in seen.values()), (seen, errors)
    assert page.evaluate("window.notReloaded") is True
    assert any({"queued", "running"} & set(statuses[:-1]) for statuses in seen.values()), seen
    per_hour = page.locator("[data-counter='per-hour'] .value")
    wait_until(lambda: int(per_hour.inner_text()) >= len(ids), 30, 0.2, "the jobs-per-hour counter")
    page.reload()  # for the screenshot: the strategy summary refreshes less often than the table
    page.wait_for_selector("table.summary")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)

    # Filtering by strategy goes into the URL and leaves only that strategy's jobs.
    magcache_id = ids[1]
    page.select_option("select[name=strategy]", "magcache")
    page.wait_for_function("() => location.search.includes('strategy=magcache')")
    only_magcache = """id => {
        const rows = [...document.querySelectorAll('tr[data-job-id]')];
        return rows.some(row => row.dataset.jobId === id)
            && rows.every(row => row.querySelector('td.strategy').dataset.strategy === 'magcache');
    }"""
    page.wait_for_function(only_magcache, arg=magcache_id)
    assert page.locator(f"tr[data-job-id='{ids[0]}']").count() == 0
    page.reload()
    assert page.locator("select[name=strategy]").input_value() == "magcache"
    page.wait_for_function(only_magcache, arg=magcache_id)
    assert page.locator("table.summary tr[data-strategy='magcache']").count() == 1

    # The job page: schedule strip (one cell per step and CFG branch) and the MP4 playing.
    page.click(f"tr[data-job-id='{magcache_id}'] td.id a")
    page.wait_for_url(f"**/admin/jobs/{magcache_id}")
    job = service.get(magcache_id, key="admin")
    steps = job["input"]["num_inference_steps"]
    assert page.locator(".strip .cell").count() == steps * 2
    assert page.locator(".strip .cell.computed").count() == job["progress"]["computed_calls"]
    cond = page.locator(".strip-row[data-branch='cond'] .cell")
    marks = "".join("C" if "computed" in (cond.nth(i).get_attribute("class") or "") else "." for i in range(steps))
    assert marks == job["metrics"]["branches"]["cond"]["schedule"]
    assert page.locator("svg rect.step").count() == steps
    page.wait_for_function("() => document.getElementById('video').readyState > 0")
    src = page.eval_on_selector("#video", "video => video.currentSrc")
    video = page.request.get(src)
    assert video.status == 200 and video.headers["content-type"] == "video/mp4"
    assert video.body()[4:8] == b"ftyp"
    page.screenshot(path=ARTIFACTS / "job.png", full_page=True)

    # Logging out ends the session: the JSON refuses, the pages send to the login form.
    page.click("text=Log out")
    page.wait_for_url("**/admin/login")
    assert page.evaluate("fetch('/admin/api/overview').then(r => r.status)") == 401
    page.goto(f"{service.url}/admin")
    assert "/admin/login" in page.url


# Every fetch the page makes, counted in the page itself: a check of what was (not) requested needs no waiting.
COUNT_FETCHES = """
window.overviewFetches = 0;
const originalFetch = window.fetch;
window.fetch = (resource, ...rest) => {
    if (String(resource).includes('/admin/api/overview')) window.overviewFetches += 1;
    return originalFetch(resource, ...rest);
};
"""


def test_a_hidden_tab_stops_refreshing_and_catches_up_when_shown(page: Page, service: Service) -> None:
    """On the page's own clock, driven by the test: hidden for ten refresh intervals, not one request."""
    page.clock.install()
    page.add_init_script(COUNT_FETCHES)
    log_in(page, service, "admin")  # refresh=1: every second
    page.wait_for_selector("#dashboard")
    fetches = lambda: page.evaluate("window.overviewFetches")  # noqa: E731
    before = fetches()
    page.clock.run_for(3_000)
    wait_until(lambda: fetches() > before, 30, 0.1, "a refresh while the tab is visible")

    set_visibility = """state => {
        Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => state});
        document.dispatchEvent(new Event('visibilitychange'));
    }"""
    page.evaluate(set_visibility, "hidden")
    assert page.locator("#live-state").inner_text().startswith("Paused")
    hidden_at = fetches()
    page.clock.run_for(10_000)
    assert fetches() == hidden_at
    page.evaluate(set_visibility, "visible")
    assert fetches() == hidden_at + 1  # at once, without waiting for the next interval


def dashboard_rows(page: Page) -> list[str]:
    return page.evaluate("[...document.querySelectorAll('table.jobs tr[data-job-id]')].map(r => r.dataset.jobId)")


def test_search_sort_and_paging_are_kept_in_the_url(page: Page, service: Service) -> None:
    word = f"zebra{uuid.uuid4().hex[:8]}"
    with session_scope(service.settings.database) as session:
        owner = create_key(session, f"seeder-{word}")[0]
        jobs = [str(job.id) for job in add_jobs(session, owner.id, 60, word=word)]
    matching = [job_id for index, job_id in enumerate(jobs) if index % 10]  # every tenth says lighthouse
    by_speedup = matching[::-1]  # speedups grow with the index

    log_in(page, service, "admin")
    page.wait_for_selector("#dashboard")
    page.fill("input[name=q]", word)
    page.wait_for_function("word => new URLSearchParams(location.search).get('q') === word", arg=word)
    wait_until(lambda: dashboard_rows(page) == matching[:50], 30, 0.1, "the search results")

    page.click("table.jobs a.sort:has-text('Speedup')")
    page.wait_for_function("() => new URLSearchParams(location.search).get('sort') === 'speedup'")
    wait_until(lambda: dashboard_rows(page) == by_speedup[:50], 30, 0.1, "the rows sorted by speedup")

    page.click("a[rel=next]")
    page.wait_for_function("() => new URLSearchParams(location.search).has('after')")
    wait_until(lambda: dashboard_rows(page) == by_speedup[50:], 30, 0.1, "the second page")
    query = page.evaluate("location.search")
    assert f"q={word}" in query and "sort=speedup" in query

    page.reload()  # the URL alone brings back the same view
    page.wait_for_selector("#dashboard")
    assert page.locator("input[name=q]").input_value() == word
    assert dashboard_rows(page) == by_speedup[50:]
    page.click("a[rel=prev]")
    wait_until(lambda: dashboard_rows(page) == by_speedup[:50], 30, 0.1, "the first page again")


def test_workers_and_queue_panels(page: Page, service: Service) -> None:
    worker = service.wait(service.submit()["id"])["worker"]
    # A job for a model no worker serves stays queued: the queue panel shows it as the oldest waiting.
    with session_scope(service.settings.database) as session:
        owner = create_key(session, f"queued-{uuid.uuid4().hex[:6]}")[0]
        [waiting] = add_jobs(
            session, owner.id, 1, model="ltx-tiny", status=JobStatus.queued, finished_at=None, speedup=None
        )
        waiting_id = str(waiting.id)

    log_in(page, service, "admin")
    page.wait_for_selector("#dashboard")
    row = page.locator(f"tr[data-worker='{worker}']")
    assert row.get_attribute("class") == "alive"
    assert row.locator(".badge").inner_text() == "alive"
    assert row.locator("td.model").inner_text() == "wan-tiny"
    assert page.locator("[data-queue-depth]").inner_text() == "1 job"
    assert page.locator(f"[data-fragment=queue] a[href$='/admin/jobs/{waiting_id}']").count() == 1

    with service.client("admin") as admin:
        assert admin.post(f"/jobs/{waiting_id}/cancel").status_code == 202
    # The live refresh (every second) empties the panel without a reload.
    page.wait_for_function("() => document.querySelector('[data-queue-depth]').textContent.trim() === '0 jobs'")


def add_jobs(session: Session, owner_id: uuid.UUID, count: int, word: str = "fox", **fields: Any) -> list[Job]:
    """``count`` succeeded jobs a minute apart, newest first: every third one magcache, speedups 1.00 upwards,
    every tenth prompt with "lighthouse" instead of ``word``."""
    now = utcnow()
    jobs = [
        Job(
            **{
                "owner_id": owner_id,
                "model": "wan-tiny",
                "status": JobStatus.succeeded,
                "prompt": f"job number {index} " + ("lighthouse" if index % 10 == 0 else word),
                "width": 64,
                "height": 64,
                "num_frames": 9,
                "num_inference_steps": 6,
                "guidance_scale": 5.0,
                "seed": index,
                "fps": 16,
                "cache_strategy": "magcache" if index % 3 == 0 else "none",
                "created_at": now - timedelta(minutes=index),
                "finished_at": now - timedelta(minutes=index) + timedelta(seconds=5),
                "speedup": 1 + index / 100,
            }
            | fields
        )
        for index in range(count)
    ]
    session.add_all(jobs)
    session.flush()
    return jobs


@pytest.fixture
def filled() -> Iterator[Session]:
    """120 jobs on a migrated PostgreSQL database (the production schema and collation)."""
    with fresh_database() as url:
        upgrade(url)
        with session_scope(url) as session:
            add_jobs(session, create_key(session, "owner")[0].id, 120)
        with session_scope(url) as session:
            yield session


def seeds(page: dashboard.JobPage) -> list[int]:
    return [int(row.prompt.split()[2]) for row in page.rows]


def test_keyset_pages_forward_and_back(filled: Session) -> None:
    newest = dashboard.JobFilter()
    first = dashboard.jobs_page(filled, newest, limit=50)
    second = dashboard.jobs_page(filled, newest, after=first.next_cursor, limit=50)
    third = dashboard.jobs_page(filled, newest, after=second.next_cursor, limit=50)
    assert seeds(first) == list(range(50)) and first.prev_cursor is None
    assert seeds(second) == list(range(50, 100))
    assert seeds(third) == list(range(100, 120)) and third.next_cursor is None
    assert seeds(dashboard.jobs_page(filled, newest, before=third.prev_cursor, limit=50)) == seeds(second)
    # Walking back past the start shows the first page whole.
    shifted = dashboard.jobs_page(
        filled, newest, after=dashboard.encode_cursor(first.rows[9], dashboard.Sort.created), limit=50
    )
    assert seeds(shifted)[0] == 10
    back = dashboard.jobs_page(filled, newest, before=shifted.prev_cursor, limit=50)
    assert seeds(back) == seeds(first) and back.prev_cursor is None

    oldest = dashboard.JobFilter(descending=False)
    assert seeds(dashboard.jobs_page(filled, oldest, limit=5)) == [119, 118, 117, 116, 115]
    by_speedup = dashboard.JobFilter(sort=dashboard.Sort.speedup, strategy="magcache")
    top = dashboard.jobs_page(filled, by_speedup, limit=3)
    assert seeds(top) == [117, 114, 111] and top.window_applied is False
    assert seeds(dashboard.jobs_page(filled, by_speedup, after=top.next_cursor, limit=2)) == [108, 105]


def test_search_by_prompt_and_id(filled: Session) -> None:
    found = dashboard.jobs_page(filled, dashboard.JobFilter(search="LightHouse"), limit=50)
    assert seeds(found) == list(range(0, 120, 10))
    some = found.rows[3]
    by_id = dashboard.jobs_page(filled, dashboard.JobFilter(search=str(some.id)))
    assert [row.id for row in by_id.rows] == [some.id]
    by_prefix = dashboard.jobs_page(filled, dashboard.JobFilter(search=some.id.hex[:8]))
    assert some.id in [row.id for row in by_prefix.rows]
    with pytest.raises(repository.CursorError):
        dashboard.jobs_page(filled, dashboard.JobFilter(), after="not-a-cursor")


def test_job_page_follows_the_job_by_its_events(page: Page, service: Service) -> None:
    job = service.submit(**SLOW_JOB)
    service.wait(job["id"], statuses=("running",))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    log_in(page, service, "admin")
    page.wait_for_selector("#dashboard")
    page.goto(f"{service.url}/admin/jobs/{job['id']}")
    page.wait_for_selector("#job-progress")
    page.evaluate("window.sameDocument = true")
    loads = requests.count(f"{service.url}/admin/jobs/{job['id']}")

    # Steps update the line in place, from the event stream: no reload, no polling.
    first = page.inner_text("#job-progress")
    page.wait_for_function("text => document.getElementById('job-progress').textContent !== text", arg=first)
    assert page.evaluate("window.sameDocument") is True
    assert requests.count(f"{service.url}/admin/jobs/{job['id']}") == loads
    assert f"{service.url}/jobs/{job['id']}/events" in requests

    # A change of status (here a cancel) reloads the page, rendered by the server.
    with service.client("admin") as client:
        assert client.post(f"/jobs/{job['id']}/cancel").status_code == 202
    page.wait_for_selector(".badge.big.s-canceled")
    assert page.evaluate("window.sameDocument") is None

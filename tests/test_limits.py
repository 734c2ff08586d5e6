"""Limits and hostile input on the real service: job sizes, per-key request rate (shared by two API
processes through Redis), jobs in flight, body size, control characters, out-of-range cursors and dates,
and the JSON answer (with a request id) to anything unexpected."""

from __future__ import annotations

import base64
import logging
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from service import SMALL_JOB, Service, free_port, stop_process, wait_until
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from api.app import create_app
from core.db import Job, engine_for, session_scope
from core.keys import create_key
from core.settings import Settings
from core.storage import LocalStorage, StorageError, storage_from


def job_count(service: Service) -> int:
    with session_scope(service.settings.database) as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def limited_key(service: Service, **limits: Any) -> str:
    """A new key with its own limits (columns of api_keys), as a Bearer header value."""
    with session_scope(service.settings.database) as session:
        key, raw = create_key(session, f"limited-{uuid.uuid4().hex[:6]}")
        for name, value in limits.items():
            setattr(key, name, value)
    return raw


def client(service: Service, raw_key: str, url: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=url or service.url, headers={"Authorization": f"Bearer {raw_key}"}, timeout=30)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# Job sizes


def test_jobs_over_the_default_ceilings_are_refused_naming_each_field(service: Service) -> None:
    before = job_count(service)
    big = {"prompt": "a fox", "width": 1920, "height": 1920, "num_frames": 257, "num_inference_steps": 200}
    with service.client() as alice:
        response = alice.post("/jobs", json=big)
    assert response.status_code == 422
    error = error_of(response)
    rules = {field["field"]: field["rule"] for field in error["fields"]}
    assert set(rules) == {"width", "height", "num_frames", "num_inference_steps"}
    assert "at most 399360 pixels" in rules["width"]
    assert rules["num_frames"] == "must be at most 81"
    assert rules["num_inference_steps"] == "must be at most 50"
    assert job_count(service) == before


def test_the_largest_default_shapes_are_accepted_in_both_orientations(service: Service) -> None:
    # Checked against the ceilings, then canceled: nothing of this size runs on the test worker.
    with service.client() as alice:
        for width, height in ((832, 480), (480, 832)):
            shape = {"width": width, "height": height, "num_frames": 81, "num_inference_steps": 50}
            response = alice.post("/jobs", json={"prompt": "a fox"} | shape)
            assert response.status_code == 202, response.text
            assert alice.post(f"/jobs/{response.json()['id']}/cancel").status_code == 202


def test_a_keys_own_ceilings_replace_the_global_ones(service: Service) -> None:
    raw = limited_key(service, max_pixels=64 * 64, max_frames=9, max_cost=64 * 64 * 9 * 4)
    with client(service, raw) as capped:
        wide = capped.post("/jobs", json={"prompt": "a fox", **SMALL_JOB, "width": 128})
        costly = capped.post("/jobs", json={"prompt": "a fox", **SMALL_JOB, "num_inference_steps": 5})
    assert wide.status_code == 422
    assert {field["field"] for field in error_of(wide)["fields"]} == {"width", "height"}
    assert costly.status_code == 422
    [cost] = error_of(costly)["fields"]
    assert cost["field"] == "num_inference_steps"
    assert cost["rule"].startswith(f"width x height x num_frames x num_inference_steps must be at most {64 * 64 * 36}")


def test_compare_counts_its_uncached_baseline_against_max_cost(service: Service) -> None:
    """A compare job costs its run plus the baseline's: over max_cost at twice the cost it is refused naming
    compare and the rule, while the same job without compare is accepted."""
    cost = 64 * 64 * 9 * 6
    raw = limited_key(service, max_cost=cost * 3 // 2)
    with client(service, raw) as capped:
        compared = capped.post("/jobs", json={"prompt": "a fox", **SMALL_JOB, "compare": True})
        alone = capped.post("/jobs", json={"prompt": "a fox", **SMALL_JOB})
        cheaper = capped.post("/jobs", json={"prompt": "a fox", **SMALL_JOB, "num_inference_steps": 4, "compare": True})
    assert compared.status_code == 422
    [rule] = error_of(compared)["fields"]
    assert rule["field"] == "compare"
    assert rule["rule"] == (
        "with compare the uncached baseline runs too: 2 x width x height x num_frames x num_inference_steps "
        f"must be at most {cost * 3 // 2} (asked {cost * 2})"
    )
    assert alone.status_code == 202, alone.text
    assert cheaper.status_code == 202, cheaper.text


# Request rate and jobs in flight


@pytest.fixture(scope="module")
def second_api(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Another API process on the same database and Redis."""
    log = (tmp_path_factory.mktemp("second-api") / "api.log").open("ab")
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=service.env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(lambda: up() or process.poll() is not None, 60, 0.2, "the second API to start")
        assert process.poll() is None, "the second API exited"
        yield url
    finally:
        stop_process(process)


def test_the_rate_limit_holds_across_api_processes(service: Service, second_api: str) -> None:
    # A slow refill, so that the test's own pace adds no token.
    raw = limited_key(service, rate_per_second=0.05, rate_burst=4)
    with client(service, raw) as first, client(service, raw, second_api) as second:
        answers = [(first if i % 2 else second).get("/jobs") for i in range(6)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 200, 429, 429]
    refused = answers[-1]
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    error = error_of(refused)
    assert error["code"] == "rate_limited"
    assert "0.05 requests per second" in error["message"]


def test_a_burst_from_one_key_does_not_limit_another(service: Service) -> None:
    raw = limited_key(service, rate_per_second=0.05, rate_burst=2)
    with client(service, raw) as noisy:
        assert [noisy.get("/jobs").status_code for _ in range(3)] == [200, 200, 429]
    with service.client("bob") as bob:
        assert bob.get("/jobs").status_code == 200


def test_admin_keys_are_not_rate_limited_by_default(service: Service) -> None:
    with session_scope(service.settings.database) as session:
        key, raw = create_key(session, f"admin-{uuid.uuid4().hex[:6]}", is_admin=True)
        key.rate_per_second, key.rate_burst = 0.05, 1
    with client(service, raw) as admin:
        assert {admin.get("/jobs").status_code for _ in range(3)} == {200}


def test_jobs_in_flight_are_capped_per_key(service: Service) -> None:
    raw = limited_key(service, max_active_jobs=2)
    slow = {"prompt": "a fox", **SMALL_JOB, "num_inference_steps": 50}
    with client(service, raw) as capped:
        taken = [capped.post("/jobs", json=slow) for _ in range(2)]
        assert [response.status_code for response in taken] == [202, 202]
        before = job_count(service)
        refused = capped.post("/jobs", json=slow)
        assert refused.status_code == 429
        assert refused.headers["retry-after"].isdigit()
        assert "2 queued or running jobs" in error_of(refused)["message"]
        assert job_count(service) == before
        for response in taken:
            capped.post(f"/jobs/{response.json()['id']}/cancel")
        ids = [response.json()["id"] for response in taken]
        wait_until(
            lambda: all(capped.get(f"/jobs/{job_id}").json()["status"] == "canceled" for job_id in ids),
            60,
            0.2,
            "the capped jobs to be canceled",
        )
        assert capped.post("/jobs", json={"prompt": "a fox", **SMALL_JOB}).status_code == 202


def test_the_in_flight_cap_holds_under_concurrent_submits(service: Service, second_api: str) -> None:
    # 40 submits at once through two API processes, against a cap of 5: a check-then-insert lets more through.
    raw = limited_key(service, max_active_jobs=5, rate_per_second=0)
    slow = {"prompt": "a fox", **SMALL_JOB, "num_inference_steps": 50}
    start = threading.Barrier(40)

    def submit(index: int) -> httpx.Response:
        with client(service, raw, second_api if index % 2 else None) as caller:
            start.wait(timeout=30)
            return caller.post("/jobs", json=slow)

    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(submit, range(40)))
    accepted = [answer.json()["id"] for answer in answers if answer.status_code == 202]
    refused = [answer for answer in answers if answer.status_code == 429]
    try:
        assert (len(accepted), len(refused)) == (5, 35), [answer.status_code for answer in answers]
        assert all("max_active_jobs" in error_of(answer)["message"] for answer in refused)
        assert all(answer.headers["retry-after"].isdigit() for answer in refused)
    finally:
        with client(service, raw) as caller:
            for job_id in accepted:
                caller.post(f"/jobs/{job_id}/cancel")


# Body size


def raw_exchange(service: Service, head: bytes, body: bytes) -> bytes:
    """Sends a request head and part of its body, then reads what the server answers before the rest."""
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as connection:
        connection.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = connection.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


def test_a_body_declared_too_large_is_refused_before_it_is_sent(service: Service) -> None:
    head = (
        b"POST /jobs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {service.keys['alice']}\r\nContent-Length: 100000000\r\n\r\n".encode()
    )
    answer = raw_exchange(service, head, b'{"prompt": "')
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_a_streamed_body_is_refused_once_it_passes_the_limit(service: Service) -> None:
    head = (
        b"POST /jobs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {service.keys['alice']}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    )
    chunk = b"x" * 8192
    body = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(9))  # 72 KiB, unfinished
    answer = raw_exchange(service, head, body)
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_a_body_under_the_limit_is_read(service: Service) -> None:
    with service.client() as alice:
        response = alice.post("/jobs", json={"prompt": "x" * 2001, **SMALL_JOB})
    assert response.status_code == 422  # the prompt's own length rule, so the body reached the route
    assert error_of(response)["fields"][0]["field"] == "prompt"


# Control characters, cursors, dates


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_control_characters_in_body_text_are_refused(service: Service, field: str) -> None:
    before = job_count(service)
    body = {"prompt": "a fox", **SMALL_JOB} | {field: "a fox\u0000 in snow"}
    with service.client() as alice:
        response = alice.post("/jobs", json=body)
    assert response.status_code == 422
    assert [f["field"] for f in error_of(response)["fields"]] == [field]
    assert job_count(service) == before


def test_tabs_and_line_breaks_are_text(service: Service) -> None:
    with service.client() as alice:
        response = alice.post("/jobs", json={"prompt": "a fox\n\tin snow\r\n", **SMALL_JOB})
    assert response.status_code == 202, response.text


def test_a_literal_backslash_u_is_not_a_control_character(service: Service) -> None:
    with service.client() as alice:
        response = alice.post("/jobs", json={"prompt": "a fox \\u0000 in snow", **SMALL_JOB})
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("path", "key", "field"),
    [
        ("/jobs?strategy=mag%00cache", "alice", "strategy"),
        ("/jobs?cursor=%01", "alice", "cursor"),
        ("/admin?q=fox%00", "admin", "q"),
        ("/admin/api/overview?strategy=%1b", "admin", "strategy"),
    ],
)
def test_control_characters_in_query_parameters_are_refused(service: Service, path: str, key: str, field: str) -> None:
    with service.client(key) as caller:
        response = caller.get(path)
    assert response.status_code == 422
    assert [f["field"] for f in error_of(response)["fields"]] == [field]


def test_control_characters_in_a_form_are_refused(service: Service) -> None:
    form = {"key": service.keys["admin"], "next": "/admin\u0000"}
    with httpx.Client(base_url=service.url, timeout=30) as browser:
        response = browser.post("/admin/login", data=form)
    assert response.status_code == 422
    assert [f["field"] for f in error_of(response)["fields"]] == ["next"]


def test_a_cursor_that_overflows_in_utc_is_refused(service: Service) -> None:
    cursor = base64.urlsafe_b64encode(f"0001-01-01T00:00:00+14:00|{uuid.uuid4()}".encode()).decode()
    with service.client() as alice:
        response = alice.get("/jobs", params={"cursor": cursor})
    assert response.status_code == 422
    assert error_of(response)["fields"][0]["field"] == "cursor"


@pytest.mark.parametrize("query", ["to=9999-12-31", "from=0001-01-01"])
def test_dashboard_dates_at_the_ends_of_the_calendar_are_refused(service: Service, query: str) -> None:
    with service.client("admin") as admin:
        page = admin.get(f"/admin?{query}")
        data = admin.get(f"/admin/api/overview?{query}")
    assert (page.status_code, data.status_code) == (422, 422)
    assert "between 0001-01-02 and 9999-12-30" in error_of(data)["message"]


def test_every_response_carries_a_request_id(service: Service) -> None:
    with service.client() as alice:
        given = alice.get("/jobs", headers={"X-Request-ID": "trace-123"})
        made = alice.get("/jobs")
        odd = alice.get("/jobs", headers={"X-Request-ID": "not a valid id!"})
    assert given.headers["x-request-id"] == "trace-123"
    assert len(made.headers["x-request-id"]) == 32
    assert odd.headers["x-request-id"] != "not a valid id!"


# Unexpected errors, readiness, SQL parameters


def test_an_unexpected_error_answers_the_json_shape_with_the_request_id_it_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app()

    @app.get("/explode")
    def explode() -> None:
        raise RuntimeError("secret internal detail")

    with TestClient(app, raise_server_exceptions=False) as test_client, caplog.at_level(logging.ERROR):
        response = test_client.get("/explode")
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    error = error_of(response)
    assert error["code"] == "internal"
    assert request_id in error["message"]
    assert "secret" not in response.text
    assert any(request_id in record.getMessage() for record in caplog.records)


def test_readyz_names_the_dependency_that_is_down_without_its_error(
    service: Service, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """The broker and the storage down are named and leave the process ready; the database down makes it not
    ready. No address or path shows."""
    closed = free_port()
    missing = tmp_path / "no-such-dir"
    script = (
        "from fastapi.testclient import TestClient\n"
        "from api.app import app\n"
        "r = TestClient(app).get('/readyz')\n"
        "print(r.status_code, r.text)\n"
    )

    def readyz(**env: str) -> tuple[str, str]:
        run = subprocess.run(
            [sys.executable, "-c", script], env=service.env | env, capture_output=True, text=True, timeout=120
        )
        code, _, body = run.stdout.strip().partition(" ")
        assert code, run.stderr
        return code, body

    code, body = readyz(
        SKIPSTEP_BROKER_URL=f"redis://127.0.0.1:{closed}/0",
        SKIPSTEP_STORAGE_BACKEND="local",
        SKIPSTEP_STORAGE_DIR=str(missing),
    )
    assert code == "200"
    assert '"broker":"unreachable"' in body and '"storage":"unreachable"' in body and '"database":"ok"' in body
    assert str(closed) not in body and str(missing) not in body
    code, body = readyz(SKIPSTEP_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{closed}/nothing")
    assert code == "503" and '"database":"unreachable"' in body and str(closed) not in body


def test_sql_errors_never_show_bound_parameters(service: Service) -> None:
    with pytest.raises(DBAPIError) as raised, engine_for(service.settings.database).connect() as connection:
        connection.execute(text("SELECT 1 / 0 WHERE :prompt <> ''"), {"prompt": "my secret prompt"})
    assert "my secret prompt" not in str(raised.value)


def test_storage_errors_name_no_server_path_or_address(tmp_path: Any) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(StorageError) as local:
        LocalStorage(missing).check()
    assert str(tmp_path) not in str(local.value)
    closed = free_port()
    settings = Settings(
        home=tmp_path,
        storage_backend="s3",
        s3_endpoint_url=f"http://127.0.0.1:{closed}",
        s3_access_key_id="test",
        s3_secret_access_key="test",
    )
    store = storage_from(settings)
    with pytest.raises(StorageError) as remote:
        store.check()
    assert str(closed) not in str(remote.value) and "127.0.0.1" not in str(remote.value)


def test_an_upload_the_store_answers_with_an_error_is_a_storage_error(tmp_path: Any, s3_endpoint: str) -> None:
    """An error answer to an upload (here the bucket is gone, as on a store restarted without its data) is a
    StorageError, which the worker retries, naming the server's code and no local path."""
    settings = Settings(
        home=tmp_path,
        storage_backend="s3",
        s3_endpoint_url=s3_endpoint,
        s3_bucket=f"missing-{uuid.uuid4().hex[:8]}",
        s3_access_key_id="test",
        s3_secret_access_key="test",
    )
    video = tmp_path / "video.mp4"
    video.write_bytes(b"\x00" * 64)
    with pytest.raises(StorageError) as refused:
        storage_from(settings).put("videos/x/1.mp4", video)
    assert "NoSuchBucket" in str(refused.value)
    assert str(tmp_path) not in str(refused.value)

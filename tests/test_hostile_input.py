"""Bodies, headers and cursors built to break the API, one class each, against the real API on PostgreSQL: every
one answers a 4xx naming the field (OpenAI's shape and a 400 under /v1) and stores nothing."""

from __future__ import annotations

import base64
import json
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from service import SMALL_JOB, Service
from sqlalchemy import func, select

from core.db import Job, session_scope

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="openai")

JOB = {"prompt": "a fox", **SMALL_JOB}


def job_count(service: Service) -> int:
    with session_scope(service.settings.database) as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def post_json(service: Service, path: str, text: str, key: str = "alice") -> httpx.Response:
    with service.client(key) as caller:
        return caller.post(path, content=text.encode(), headers={"Content-Type": "application/json"})


def fields_of(response: httpx.Response) -> list[str]:
    error = response.json()["error"]
    return [field["field"] for field in error["fields"]]


@pytest.fixture
def unchanged(api_alone: Service) -> Iterator[None]:
    before = job_count(api_alone)
    yield
    assert job_count(api_alone) == before


@pytest.fixture
def client(api_alone: Service) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{api_alone.url}/v1", api_key=api_alone.keys["alice"], max_retries=0) as client:
        yield client


# Lone UTF-16 surrogates: valid JSON escapes, no text PostgreSQL can store.


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "a fox \\ud800 in snow"}, "prompt"),
        ({"negative_prompt": "\\udfff"}, "negative_prompt"),
        ({"model": "wan\\ud83d"}, "model"),
        ({"webhook_url": "http://example.com/\\ud800"}, "webhook_url"),
        ({"cache": {"strategy": "magcache", "profile": "p\\udc00"}}, "cache.profile"),
        ({"cache": {"strategy": "magcache", "params": {"note\\ud800": 1}}}, "cache.params"),
    ],
)
def test_lone_surrogates_are_refused_in_every_text_field(
    api_alone: Service, unchanged: None, body: dict[str, Any], field: str
) -> None:
    # json.dumps would escape the backslash; the escapes must reach the server as JSON escapes.
    text = json.dumps(JOB | body).replace("\\\\u", "\\u")
    response = post_json(api_alone, "/jobs", text)
    assert response.status_code == 422, response.text
    assert fields_of(response) == [field]
    assert "surrogate" in response.json()["error"]["message"]


# Numbers a JSON column cannot hold.


@pytest.mark.parametrize("number", ["1e309", "-1e309", "NaN", "Infinity"])
def test_non_finite_numbers_are_refused(api_alone: Service, unchanged: None, number: str) -> None:
    text = json.dumps(JOB | {"cache": {"strategy": "magcache", "params": {"threshold": 0}}})
    response = post_json(api_alone, "/jobs", text.replace('"threshold": 0', f'"threshold": {number}'))
    assert response.status_code == 422, response.text
    assert fields_of(response) == ["cache.params.threshold"]
    assert response.json()["error"]["fields"][0]["rule"] == "must be a finite number"


# Nesting: deeper than the rule allows, and deeper than the interpreter's stack.


@pytest.mark.parametrize("depth", [40, 30_000])
def test_deep_nesting_is_refused(api_alone: Service, unchanged: None, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    text = json.dumps(JOB | {"cache": {"strategy": "magcache", "params": {"threshold": 0}}})
    response = post_json(api_alone, "/jobs", text.replace('"threshold": 0', f'"threshold": {nested}'))
    assert response.status_code == 422, response.text
    assert "nested at most 32 levels deep" in response.json()["error"]["message"]


# Multipart, as the openai package sends POST /v1/videos.


@pytest.mark.parametrize(("character", "name"), [("\x00", "NUL"), ("\x1b", "ESC")])
def test_control_characters_in_a_multipart_body_are_refused(
    client: openai.OpenAI, unchanged: None, character: str, name: str
) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.videos.create(prompt=f"a fox{character}in snow", size="64x64", seconds="1")
    assert error.value.status_code == 400, name
    assert error.value.param == "prompt"
    assert "control characters" in error.value.message


def test_non_finite_numbers_in_multipart_nested_fields_are_refused(
    api_alone: Service, client: openai.OpenAI, unchanged: None
) -> None:
    cache = {"strategy": "magcache", "params": {"threshold": float("inf")}}  # the openai package sends "inf"
    with pytest.raises(openai.BadRequestError) as error:
        client.videos.create(prompt="a fox", size="64x64", seconds="1", extra_body={"cache": cache})
    assert "finite number" in error.value.message, error.value.body
    form = {"prompt": "a fox", "cache[strategy]": "magcache", "cache[params][threshold]": "1e309"}
    with api_alone.client() as caller:
        response = caller.post("/v1/videos", files={name: (None, value) for name, value in form.items()})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "cache.params.threshold"


# Mistyped /v1/videos fields.


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"seconds": ["1"]}, "seconds"),
        ({"seconds": {"value": 1}}, "seconds"),
        ({"seconds": "²"}, "seconds"),
        ({"size": "6" * 5000 + "x64"}, "size"),
        ({"size": 64}, "size"),
        ({"fps": [16], "seconds": "1"}, "fps"),
    ],
)
def test_mistyped_video_fields_are_refused(
    api_alone: Service, unchanged: None, body: dict[str, Any], param: str
) -> None:
    response = post_json(api_alone, "/v1/videos", json.dumps({"prompt": "a fox"} | body))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")


def test_a_form_field_given_as_a_value_and_as_nested_fields_is_refused(api_alone: Service, unchanged: None) -> None:
    for form in (
        {"prompt": "a fox", "cache": "magcache", "cache[strategy]": "magcache"},
        {"prompt": "a fox", "cache[strategy]": "magcache", "cache": "magcache"},
        {"prompt": "a fox", "cache[params]": "1", "cache[params][threshold]": "0.1"},
    ):
        with api_alone.client() as caller:
            response = caller.post("/v1/videos", files={name: (None, value) for name, value in form.items()})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "cache"


# Headers and cursors.


@pytest.mark.parametrize("event_id", ["9" * 5000, "²", "١٢"])
def test_a_last_event_id_that_is_not_an_event_id_is_refused(api_alone: Service, event_id: str) -> None:
    job = api_alone.submit()
    with api_alone.client() as caller:
        response = caller.get(f"/jobs/{job['id']}/events", headers={"Last-Event-ID": event_id.encode()})
        caller.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 422, response.text
    assert fields_of(response) == ["Last-Event-ID"]


@pytest.mark.parametrize("moment", ["2025-06-01T12:00:00", "2025-06-01\x0012:00:00+00:00"])
def test_a_cursor_with_a_naive_or_nul_date_is_refused(api_alone: Service, moment: str) -> None:
    cursor = base64.urlsafe_b64encode(f"{moment}|{uuid.uuid4()}".encode()).decode()
    with api_alone.client() as alice, api_alone.client("admin") as admin:
        listed = alice.get("/jobs", params={"cursor": cursor})
        dashboard = admin.get("/admin/api/overview", params={"after": cursor})
    assert listed.status_code == 422, listed.text
    assert fields_of(listed) == ["cursor"]
    assert dashboard.status_code == 422, dashboard.text

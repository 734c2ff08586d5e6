"""/metrics on the real API (uvicorn, PostgreSQL, Redis) is read only by the addresses SKIPSTEP_METRICS_ALLOW lists
or with the bearer token SKIPSTEP_METRICS_TOKEN, the way Prometheus sends it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from service import Service, fresh_database, launch

from core.settings import Settings

TOKEN = "metrics-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def guarded(settings: Settings, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """An API whose allow-list leaves out loopback, where the tests run: only the token opens /metrics."""
    with fresh_database() as database_url:
        logs = tmp_path_factory.mktemp("metrics-logs")
        service = launch(
            settings, database_url, redis_url, logs, SKIPSTEP_METRICS_TOKEN=TOKEN, SKIPSTEP_METRICS_ALLOW="10.0.0.0/8"
        )
        try:
            yield service
        finally:
            service.stop()


def test_metrics_need_the_token_outside_the_allowed_addresses(guarded: Service) -> None:
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        anonymous = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"})
        api_key = client.get("/metrics", headers={"Authorization": f"Bearer {guarded.keys['admin']}"})
        scraper = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    for refused in (anonymous, wrong, api_key):
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == 'Bearer realm="metrics"'
        assert "skipstep_" not in refused.text
        assert "SKIPSTEP_METRICS_TOKEN" in refused.json()["error"]["message"]
    assert scraper.status_code == 200
    assert "skipstep_queue_depth" in scraper.text


def test_metrics_refuse_an_address_off_the_list_when_no_token_is_set(
    settings: Settings, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with fresh_database() as database_url:
        service = launch(
            settings, database_url, redis_url, tmp_path_factory.mktemp("logs"), SKIPSTEP_METRICS_ALLOW="10.0.0.0/8"
        )
        try:
            refused = httpx.get(f"{service.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        finally:
            service.stop()
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == "/metrics is not open to this address (SKIPSTEP_METRICS_ALLOW)"


def test_metrics_are_open_to_loopback_by_default(api_alone: Service) -> None:
    assert Settings().metrics_allow == "127.0.0.0/8,::1/128" and Settings().metrics_token is None
    assert httpx.get(f"{api_alone.url}/metrics", timeout=30).status_code == 200  # the tests connect from loopback


def test_an_allow_list_entry_that_is_not_an_address_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match=r"SKIPSTEP_METRICS_ALLOW: 'example\.com' is not an IP address"):
        Settings(metrics_allow="10.0.0.0/8,example.com")

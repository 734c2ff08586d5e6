"""/docs in a real headless Chromium against the real API: Swagger UI renders from files the app serves itself,
with no request leaving this machine, shows the Authorize button for the bearer key and, in POST /jobs's request
body, each cache strategy's parameters with their defaults."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Locator, Page
from service import Service

LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where the screenshots go: $DOCS_SCREENSHOTS if set (to look at them afterwards), else the test's tmp_path."""
    folder = Path(os.environ.get("DOCS_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def schema_node(scope: Locator, title: str) -> Locator:
    """The schema (a property, a oneOf variant) titled ``title`` directly under ``scope`` in Swagger UI's view."""
    head = scope.page.locator(":scope > .json-schema-2020-12-head .json-schema-2020-12__title", has_text=title)
    return scope.locator("article.json-schema-2020-12", has=head).first


def expand(node: Locator) -> Locator:
    node.locator(".json-schema-2020-12-accordion").first.click()
    return node


def default_shown(node: Locator) -> str:
    text = node.locator(":scope > .json-schema-2020-12-body > .json-schema-2020-12-keyword--default").inner_text()
    return "".join(text.split())


def clip_to(page: Page, element: Locator) -> dict[str, float]:
    """The page from its top down to the bottom of ``element``, as a screenshot clip."""
    box = element.bounding_box()
    assert box is not None
    scroll = page.evaluate("window.scrollY")
    return {"x": 0, "y": 0, "width": page.viewport_size["width"], "height": scroll + box["y"] + box["height"]}


def outside(requests: list[str]) -> list[str]:
    return [
        url
        for url in requests
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).hostname not in LOCAL_HOSTS
    ]


def test_docs_render_offline_with_authorize_and_strategy_parameters(
    page: Page, api_alone: Service, screenshots: Path
) -> None:
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    refused: list[str] = []  # what the page's Content-Security-Policy refused, as Chromium reports it
    page.on(
        "console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None
    )
    page.goto(f"{api_alone.url}/docs")
    # Swagger UI's script and style come from the app: a CDN would show here before anything renders.
    assert outside(requests) == []
    assert f"{api_alone.url}/docs/assets/swagger-ui-bundle.js" in requests

    authorize = page.locator(".swagger-ui button.authorize")
    authorize.wait_for()
    assert authorize.inner_text().strip() == "Authorize"

    submit = page.locator("#operations-jobs-jobs-create")
    submit.locator(".opblock-summary-control").click()
    body = submit.locator(".opblock-section-request-body")
    body.wait_for()
    assert "Submit a generation job" in submit.locator(".opblock-summary").inner_text()
    page.screenshot(path=screenshots / "docs-screenshot.png", full_page=True, clip=clip_to(page, body))

    body.get_by_role("tab", name="Schema").click()
    cache = expand(schema_node(body, "cache"))
    one_of = cache.locator(".json-schema-2020-12-keyword--oneOf")
    one_of.locator(".json-schema-2020-12-accordion").first.click()
    magcache = expand(schema_node(one_of, "CacheMagcache"))
    params = schema_node(magcache, "params")
    params.locator(".json-schema-2020-12-expand-deep-button").first.click()
    assert default_shown(schema_node(params, "threshold")) in ("Default0.12", "Default=0.12")
    assert default_shown(schema_node(params, "max_skip_steps")) in ("Default2", "Default=2")
    body.screenshot(path=screenshots / "docs-screenshot-magcache.png")

    assert outside(requests) == []
    assert f"{api_alone.url}/openapi.json" in requests
    assert refused == []

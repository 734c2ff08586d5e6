"""The OpenAPI document is complete and true: every status a route's code can answer with is documented with
the one error shape, the bearer scheme is on every route that needs a key, operation ids are readable, the
webhook requests are described, every field and parameter has a description and an example, and every
response and response header an example, that fits its schema; and a client generated from the served
document works against a live stack."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi.routing import RouteContext
from service import SMALL_JOB, Service

from api.app import app
from api.deps import get_session
from api.openapi import OPERATIONS, api_routes, documented_status, endpoint_name, error_ref

SCHEMA = app.openapi()
# Errors documented with a body of their own rather than the error shape, and why.
OWN_SHAPE = {("health-ready", "503"): "readiness answers its checks, each one named, in the 503 too"}


def answered_statuses(function: Callable[..., Any], seen: set[Callable[..., Any]]) -> set[int]:
    """Every ``status.HTTP_<code>_...`` a function's source names (raised, returned or set), following the calls
    it makes to functions of its own module."""
    function = inspect.unwrap(function)
    module = sys.modules[function.__module__]
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    statuses = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "status":
            if not node.attr.startswith("HTTP_"):
                continue
            statuses.add(int(node.attr.split("_")[1]))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            callee = getattr(module, node.func.id, None)
            if inspect.isfunction(callee) and callee.__module__ == module.__name__ and callee not in seen:
                seen.add(callee)
                statuses |= answered_statuses(callee, seen)
    return statuses


def code_paths(route: RouteContext) -> set[int]:
    """What the route's code and its dependencies' code can answer with, and what the app adds to every route:
    422 for a parameter or body that breaks a rule, 503 when the database is unreachable, 500 for the rest."""
    tree = [route.dependant]
    for dependant in tree:
        tree.extend(dependant.dependencies)
    statuses = {500}
    for dependant in tree:
        if dependant.call is not None:
            statuses |= answered_statuses(dependant.call, set())
        if dependant.call is get_session:
            statuses.add(503)
        params = (dependant.path_params, dependant.query_params, dependant.header_params, dependant.body_params)
        if any(params):
            statuses.add(422)
    return statuses


def operation(route: RouteContext) -> dict[str, Any]:
    [method] = route.methods or ()
    return SCHEMA["paths"][route.path_format][method.lower()]


ROUTES = api_routes(app)


@pytest.mark.parametrize("route", ROUTES, ids=[endpoint_name(r) for r in ROUTES])
def test_every_status_the_code_answers_with_is_documented_with_the_error_shape(route: RouteContext) -> None:
    documented = operation(route)["responses"]
    answered = {documented_status(route, code) for code in code_paths(route)}
    assert {str(code) for code in answered} <= set(documented), (route.path_format, answered, sorted(documented))
    for code, response in documented.items():
        if int(code) < 400 or (operation(route)["operationId"], code) in OWN_SHAPE:
            continue
        assert response["content"]["application/json"]["schema"] == {"$ref": error_ref(route)}, (
            route.path_format,
            code,
        )
        assert response["description"]


@pytest.mark.parametrize("route", ROUTES, ids=[endpoint_name(r) for r in ROUTES])
def test_every_route_has_a_readable_operation_id_and_summary(route: RouteContext) -> None:
    assert endpoint_name(route) in OPERATIONS, f"add {endpoint_name(route)} to api.openapi.OPERATIONS"
    documented = operation(route)
    assert (documented["operationId"], documented["summary"]) == OPERATIONS[endpoint_name(route)]


def test_operation_ids_are_unique_and_the_jobs_ones_are_named_for_clients() -> None:
    ids = [op["operationId"] for path in SCHEMA["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    assert {"jobs-create", "jobs-get", "jobs-list", "jobs-cancel", "jobs-video"} <= set(ids)


def test_the_bearer_scheme_is_on_every_route_that_needs_a_key() -> None:
    assert SCHEMA["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`skipstep keys create`), as `Authorization: Bearer <key>`.",
    }
    for route in ROUTES:
        documented = operation(route)
        if route.path_format == "/metrics":  # its own token, or none from an allowed address
            assert documented["security"] == [{"metricsToken": []}, {}]
            assert "WWW-Authenticate" in documented["responses"]["401"]["headers"]
        elif "401" in documented["responses"]:
            assert documented["security"] == [{"bearerAuth": []}], route.path_format
            assert "WWW-Authenticate" in documented["responses"]["401"]["headers"]
        else:
            assert "security" not in documented, route.path_format
    assert "HTTPValidationError" not in SCHEMA["components"]["schemas"]


def references(node: Any) -> set[str]:
    if isinstance(node, dict):
        return {node["$ref"]} if "$ref" in node else set().union(*(references(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(references(value) for value in node))
    return set()


def test_every_reference_resolves() -> None:
    """A body a route reads itself (openapi_extra) names its schema by reference: Swagger UI shows nothing for
    one that is not in the components."""
    components = SCHEMA["components"]["schemas"]
    dangling = sorted(ref for ref in references(SCHEMA) if ref.removeprefix("#/components/schemas/") not in components)
    assert dangling == []


def test_headers_are_documented() -> None:
    create = SCHEMA["paths"]["/jobs"]["post"]
    [idempotency] = [p for p in create["parameters"] if p["name"].lower() == "idempotency-key"]
    assert "409" in idempotency["description"]
    assert set(create["responses"]["202"]["headers"]) == {"Location", "Idempotent-Replayed", "X-Request-ID"}
    video = SCHEMA["paths"]["/jobs/{job_id}/video"]["get"]
    assert "Location" in video["responses"]["307"]["headers"]
    assert "no video" in video["responses"]["404"]["description"]
    assert "Retry-After" in create["responses"]["503"]["headers"]
    for path in SCHEMA["paths"].values():
        for documented in path.values():
            assert all("X-Request-ID" in response["headers"] for response in documented["responses"].values())


def test_the_webhook_requests_are_described() -> None:
    webhooks = SCHEMA["webhooks"]
    assert set(webhooks) == {"job.started", "job.succeeded", "job.failed", "job.canceled", "job.fidelity"}
    sent = webhooks["job.failed"]["post"]
    body = sent["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/WebhookEvent"}
    assert {p["name"] for p in sent["parameters"]} == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    event = SCHEMA["components"]["schemas"]["WebhookEvent"]
    assert event["properties"]["data"]["$ref"] == "#/components/schemas/JobView"


# Media types whose content is a file, with no example to show.
BINARY = {"video/mp4", "image/png"}


def misfit(example: Any, schema: dict[str, Any]) -> str | None:
    """Why an example does not fit its schema (resolving the document's $refs), or None if it does."""
    validator = jsonschema.Draft202012Validator(
        {**schema, "components": SCHEMA["components"]}, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    error = jsonschema.exceptions.best_match(validator.iter_errors(example))
    return None if error is None else f"{error.json_path}: {error.message}"


def operations() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", operation)
        for group in ("paths", "webhooks")
        for path, methods in SCHEMA[group].items()
        for method, operation in methods.items()
    ]


def test_every_schema_property_has_a_description_and_examples_that_fit() -> None:
    problems = []
    for name, component in SCHEMA["components"]["schemas"].items():
        for field, prop in (component.get("properties") or {}).items():
            where = f"{name}.{field}"
            if not prop.get("description"):
                problems.append(f"{where}: no description")
            if not prop.get("examples"):
                problems.append(f"{where}: no examples")
            problems += [f"{where}: {why}" for example in prop.get("examples", []) if (why := misfit(example, prop))]
    assert problems == []


def test_every_parameter_has_a_description_and_an_example_that_fits() -> None:
    problems = []
    for label, operation in operations():
        for parameter in operation.get("parameters", []):
            where = f"{label} {parameter['name']}"
            if not parameter.get("description"):
                problems.append(f"{where}: no description")
            if "example" not in parameter:
                problems.append(f"{where}: no example")
            elif why := misfit(parameter["example"], parameter["schema"]):
                problems.append(f"{where}: {why}")
    assert problems == []


def test_every_response_and_response_header_has_an_example_that_fits() -> None:
    problems = []
    for label, operation in operations():
        for code, response in operation["responses"].items():
            where = f"{label} {code}"
            for media, content in response.get("content", {}).items():
                if "example" not in content and media not in BINARY:
                    problems.append(f"{where} {media}: no example")
                elif (
                    "example" in content
                    and "schema" in content
                    and (why := misfit(content["example"], content["schema"]))
                ):
                    problems.append(f"{where} {media}: {why}")
            for header, described in response.get("headers", {}).items():
                if "example" not in described:
                    problems.append(f"{where} {header}: no example")
                elif why := misfit(described["example"], described["schema"]):
                    problems.append(f"{where} {header}: {why}")
    assert problems == []


def test_error_examples_answer_with_the_message_of_their_status() -> None:
    create = SCHEMA["paths"]["/jobs"]["post"]["responses"]
    invalid = create["422"]["content"]["application/json"]["example"]["error"]
    assert invalid["code"] == "invalid_request" and invalid["fields"][0]["field"] == "num_frames"
    assert create["401"]["content"]["application/json"]["example"]["error"]["code"] == "unauthorized"
    assert create["202"]["content"]["application/json"]["example"]["status"] == "queued"
    openai = SCHEMA["paths"]["/v1/videos"]["post"]["responses"]["400"]["content"]["application/json"]["example"]
    assert openai["error"] == {
        "message": "size: must be WIDTHxHEIGHT, e.g. 832x480",
        "type": "invalid_request_error",
        "param": "size",
        "code": "bad_request",
    }
    got = SCHEMA["paths"]["/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]["example"]
    assert got["status"] == "succeeded" and got["error"] is None and got["metrics"]["strategy"] == "magcache"


JOB_OPERATIONS = ("create", "get", "cancel")


def test_a_client_generated_from_the_served_schema_submits_gets_and_cancels(service: Service, tmp_path: Path) -> None:
    served = httpx.get(f"{service.url}/openapi.json", timeout=30)
    assert served.status_code == 200
    (tmp_path / "openapi.json").write_text(served.text)
    generator = Path(sys.executable).with_name("openapi-python-client")
    generated = subprocess.run(
        [str(generator), "generate", "--path", "openapi.json", "--output-path", "skipstep_client", "--meta", "none"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module("skipstep_client")
        jobs = {name: importlib.import_module(f"skipstep_client.api.jobs.jobs_{name}") for name in JOB_OPERATIONS}
        models = importlib.import_module("skipstep_client.models")
    finally:
        sys.path.remove(str(tmp_path))

    client = client_module.AuthenticatedClient(base_url=service.url, token=service.keys["alice"])
    body = models.JobRequest.from_dict({"prompt": "a generated client's fox", **SMALL_JOB, "num_inference_steps": 40})
    created = jobs["create"].sync_detailed(client=client, body=body, idempotency_key=str(uuid.uuid4()))
    assert created.status_code == 202, created.content
    job = created.parsed
    assert isinstance(job, models.JobView) and job.status.value == "queued"
    assert created.headers["location"] == f"/jobs/{job.id}"

    fetched = jobs["get"].sync(job_id=job.id, client=client)
    assert isinstance(fetched, models.JobView) and fetched.id == job.id
    canceled = jobs["cancel"].sync_detailed(job_id=job.id, client=client)
    assert canceled.status_code == 202, canceled.content
    assert canceled.parsed.cancel_requested is True or canceled.parsed.status.value == "canceled"
    assert service.wait(str(job.id))["status"] == "canceled"

    anonymous = client_module.Client(base_url=service.url)
    refused = jobs["get"].sync_detailed(job_id=job.id, client=anonymous)
    assert refused.status_code == 401
    assert isinstance(refused.parsed, models.ErrorResponse) and refused.parsed.error.code == "unauthorized"

"""The OpenAPI document as the API behaves: the bearer scheme on the routes that need a key, every error
status a route can answer with the one error shape, readable operation ids and summaries, the headers
routes read and set, the webhook requests the service sends (OpenAPI 3.1 ``webhooks``), and the request's
``cache`` as one variant per strategy with its own parameter schema and defaults.

Error statuses come from what a route depends on (a key: 401; an admin key: 403; the database: 503; any
parameter or body: 422; anything: 500); a route declares the others it answers (404, 409, ...) itself.
Examples are added last (api.openapi_examples)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Header
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api import openapi_examples
from api.deps import admin_key, current_key, get_session, metrics_reader
from api.errors import (
    OPENAI_PREFIX,
    openai_status,
)
from api.limits import rate_limit
from api.openapi_examples import ERROR_REF, OPENAI_ERROR_REF
from api.routes.openai_videos import VideoCreate
from core.contract import examples
from core.contract.frontier import Target
from core.contract.request import JobRequest
from core.contract.strategies import AUTO, STRATEGIES, CacheParams
from core.webhooks.events import WebhookEvent

BEARER = "bearerAuth"
METRICS_BEARER = "metricsToken"
REF_TEMPLATE = "#/components/schemas/{model}"

# endpoint (module.function) -> (operationId, summary). A route missing here gets ``<tag>-<function>``, and
# tests/test_openapi.py fails until it is added.
OPERATIONS: dict[str, tuple[str, str]] = {
    "api.routes.jobs.submit": ("jobs-create", "Submit a generation job"),
    "api.routes.jobs.list_jobs": ("jobs-list", "List jobs, newest first"),
    "api.routes.jobs.get_job": ("jobs-get", "Get a job"),
    "api.routes.jobs.cancel": ("jobs-cancel", "Cancel a job"),
    "api.routes.jobs.video": ("jobs-video", "Download a job's MP4"),
    "api.routes.jobs.remix": ("jobs-remix", "Remix a job: a new job with some fields replaced"),
    "api.routes.jobs.delete": ("jobs-delete", "Delete a job's video (canceling it first if it runs)"),
    "api.routes.jobs.image": ("jobs-image", "Download a job's input image (first frame)"),
    "api.routes.deliveries.list_deliveries": ("deliveries-list", "List a job's webhook deliveries"),
    "api.routes.deliveries.resend_delivery": ("deliveries-resend", "Resend a webhook delivery (admin)"),
    "api.routes.deliveries.rotate_secret": ("keys-rotate-webhook-secret", "Rotate the webhook signing secret"),
    "api.routes.events.job_events": ("jobs-events", "Follow a job's progress (server-sent events)"),
    "api.routes.openai_videos.create": ("openai-videos-create", "Create a video (OpenAI videos API)"),
    "api.routes.openai_videos.remix": ("openai-videos-remix", "Remix a video (OpenAI videos API)"),
    "api.routes.openai_videos.list_videos": ("openai-videos-list", "List videos (OpenAI videos API)"),
    "api.routes.openai_videos.retrieve": ("openai-videos-retrieve", "Get a video (OpenAI videos API)"),
    "api.routes.openai_videos.delete": ("openai-videos-delete", "Delete a video (OpenAI videos API)"),
    "api.routes.openai_videos.content": ("openai-videos-content", "Download a video's MP4 (OpenAI videos API)"),
    "api.routes.models.list_models": ("models-list", "List the configured models, their workers and queues"),
    "api.routes.workers.list_workers": ("workers-list", "List workers (admin)"),
    "api.routes.health.healthz": ("health-live", "Liveness"),
    "api.routes.health.readyz": ("health-ready", "Readiness of the database, broker and storage"),
    "api.routes.health.metrics": ("health-metrics", "Prometheus metrics"),
}

DEPENDENCY_ERRORS: dict[Callable[..., Any], dict[int, str]] = {
    current_key: {401: "No valid API key in `Authorization: Bearer <key>`."},
    admin_key: {403: "The API key is valid but not an admin key."},
    get_session: {503: "The database is unreachable right now; retry after `Retry-After` seconds."},
    rate_limit: {429: "Too many requests for this API key; retry after `Retry-After` seconds."},
    metrics_reader: {
        401: "Not an address `SKIPSTEP_METRICS_ALLOW` lists, and no or a wrong metrics token.",
        403: "Not an address `SKIPSTEP_METRICS_ALLOW` lists, and no metrics token is configured.",
    },
}
INVALID = {422: "A parameter or body field breaks a rule; `error.fields` names each one and its rule."}
TOO_LARGE = {413: "The body is over the size limit."}
UNEXPECTED = {500: "An unexpected error; the body has the same shape as every other error."}

RETRY_AFTER = "Seconds to wait before retrying."
ERROR_HEADERS = {
    "401": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}, "example": "Bearer"}},
    "429": {"Retry-After": {"description": RETRY_AFTER, "schema": {"type": "integer"}, "example": 1}},
    "503": {"Retry-After": {"description": RETRY_AFTER, "schema": {"type": "integer"}, "example": 5}},
}
LOCATION = {
    "description": "The job's URL path, `/jobs/{id}`.",
    "schema": {"type": "string"},
    "example": f"/jobs/{examples.JOB_ID}",
}
VIDEO_LOCATION = {
    "description": "A time-limited URL of the MP4 in the object store.",
    "schema": {"type": "string"},
    "example": f"https://skipstep.s3.amazonaws.com/videos/{examples.JOB_ID}/1.mp4?X-Amz-Algorithm="
    "AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20250601%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20250601T120200Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
}
REQUEST_ID = {
    "description": "The request's id (the client's `X-Request-ID` if it sent a sane one, else a new one); the "
    "log line of a failure carries it.",
    "schema": {"type": "string"},
    "example": "4f1d0c2ab8e94c7f9a3b6e5d2c1f0a9b",
}
RESPONSE_HEADERS: dict[tuple[str, str], dict[str, Any]] = {
    ("jobs-create", "202"): {
        "Location": LOCATION,
        "Idempotent-Replayed": {
            "description": "`true` when this answers a repeat of an earlier request with the same "
            "`Idempotency-Key` (the job is the one created then); absent otherwise.",
            "schema": {"type": "string", "enum": ["true"]},
            "example": "true",
        },
    },
    ("jobs-video", "307"): {"Location": VIDEO_LOCATION},
    ("jobs-image", "307"): {"Location": VIDEO_LOCATION},
    ("openai-videos-content", "307"): {"Location": VIDEO_LOCATION},
}
WEBHOOK_EVENTS = {
    "job.started": "A worker started the job (sent only when listed in `webhook_events`).",
    "job.succeeded": "The job finished with a video.",
    "job.failed": "The job failed; `data.error` says why (`generation_failed`, `storage_failed`, `timeout`, ...).",
    "job.canceled": "The job was canceled.",
    "job.fidelity": "After the job succeeded: its fidelity receipt was measured (a sampled uncached re-run with "
    "the same seed, SKIPSTEP_RECEIPT_SAMPLE_RATE); `data.metrics.fidelity` has it.",
}
WEBHOOK_DESCRIPTION = """Sent as `POST` to the job's `webhook_url`, signed as
[Standard Webhooks](https://www.standardwebhooks.com/) do with the key's webhook secret. A `2xx` answer
delivers it; other answers and timeouts are retried with backoff, a `410` stops all later events to that URL.
The same `webhook-id` is kept across retries and resends, so receivers can drop duplicates."""


def api_routes(app: FastAPI) -> list[RouteContext]:
    """The app's JSON API routes as the document shows them (full paths, the routers' dependencies included)."""
    return [
        route
        for route in iter_route_contexts(app.routes)
        if isinstance(route.original_route, APIRoute) and route.include_in_schema
    ]


def operation_id(route: APIRoute | RouteContext) -> str:
    named = OPERATIONS.get(endpoint_name(route))
    if named is not None:
        return named[0]
    tag = str(route.tags[0]) if route.tags else "api"
    return f"{tag}-{route.name.replace('_', '-')}"


def endpoint_name(route: APIRoute | RouteContext) -> str:
    return f"{route.endpoint.__module__}.{route.endpoint.__name__}"


def _tree(dependant: Dependant) -> list[Dependant]:
    """The route's dependant and all its dependencies, however deep."""
    return [dependant, *(nested for sub in dependant.dependencies for nested in _tree(sub))]


def _calls(route: RouteContext) -> set[Callable[..., Any]]:
    return {dependant.call for dependant in _tree(route.dependant) if dependant.call is not None}


def error_statuses(route: RouteContext) -> dict[int, str]:
    """The error statuses a route answers with because of what it depends on."""
    calls = _calls(route)
    statuses = dict(UNEXPECTED)
    for dependency, errors in DEPENDENCY_ERRORS.items():
        if dependency in calls:
            statuses |= errors
    kinds = ("path_params", "query_params", "header_params", "cookie_params", "body_params")
    if any(getattr(dependant, kind) for dependant in _tree(route.dependant) for kind in kinds):
        statuses |= INVALID
    if any(dependant.body_params for dependant in _tree(route.dependant)):
        statuses |= TOO_LARGE
    return statuses


def error_ref(route: APIRoute | RouteContext) -> str:
    """The error shape a route answers with: OpenAI's under its prefix, skipstep's elsewhere."""
    return OPENAI_ERROR_REF if route.path_format.startswith(OPENAI_PREFIX) else ERROR_REF


def documented_status(route: APIRoute | RouteContext, code: int) -> int:
    return openai_status(code) if route.path_format.startswith(OPENAI_PREFIX) else code


def needs_key(route: RouteContext) -> bool:
    return current_key in _calls(route)


def _complete(app: FastAPI, schema: dict[str, Any]) -> None:
    schema.setdefault("components", {})["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`skipstep keys create`), as `Authorization: Bearer <key>`.",
        },
        METRICS_BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "`SKIPSTEP_METRICS_TOKEN`, as `Authorization: Bearer <token>`; not needed from an "
            "address `SKIPSTEP_METRICS_ALLOW` lists.",
        },
    }
    for route in api_routes(app):
        for method in route.methods or ():
            operation = schema["paths"][route.path_format][method.lower()]
            named = OPERATIONS.get(endpoint_name(route))
            if named is not None:
                operation["summary"] = named[1]
            if needs_key(route):
                operation["security"] = [{BEARER: []}]
            elif metrics_reader in _calls(route):
                operation["security"] = [{METRICS_BEARER: []}, {}]  # {}: an allowed address needs no token
            responses = operation.setdefault("responses", {})
            if route.path_format.startswith(OPENAI_PREFIX):
                responses.pop("422", None)  # FastAPI's own; OpenAI's clients get a 400 instead
            for answered, description in error_statuses(route).items():
                code = documented_status(route, answered)
                declared = route.responses.get(code, {})
                response = responses.setdefault(str(code), {})
                if code == 422 or "model" not in declared:
                    response["description"] = declared.get("description", description)
                    response["content"] = {"application/json": {"schema": {"$ref": error_ref(route)}}}
            for code, headers in ERROR_HEADERS.items():
                if code in responses:
                    responses[code]["headers"] = headers
            for (operation_id_, code), headers in RESPONSE_HEADERS.items():
                if operation.get("operationId") == operation_id_:
                    responses[code]["headers"] = headers
            for response in responses.values():
                response["headers"] = response.get("headers", {}) | {"X-Request-ID": REQUEST_ID}
    # FastAPI's own validation error shape is never answered: every 422 is an ErrorResponse.
    for unused in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(unused, None)
    for path in schema.get("webhooks", {}).values():
        for operation in path.values():
            # The receiver answers a webhook: not with FastAPI's validation error, and its body is not read.
            operation["responses"].pop("422", None)
            operation["responses"]["200"].pop("content", None)
    # POST /jobs reads its body itself (JSON, or multipart with an image), so FastAPI adds no JobRequest.
    _add_models(schema["components"]["schemas"], [JobRequest, VideoCreate])
    _cache_variants(schema["components"]["schemas"])
    openapi_examples.add(schema)


def _add_models(components: dict[str, Any], models: list[type[BaseModel]]) -> None:
    """Schemas of bodies that a route reads itself (``openapi_extra``), beside FastAPI's own."""
    _, definitions = models_json_schema([(model, "validation") for model in models], ref_template=REF_TEMPLATE)
    for name, definition in definitions["$defs"].items():
        components.setdefault(name, definition)


def _cache_variants(components: dict[str, Any]) -> None:
    """``CacheSpec`` as the discriminated union it is: validation reads ``params`` with the model of the
    strategy named (core.contract.strategies), so each strategy gets a variant whose ``params`` is that model,
    with its fields, rules and defaults."""
    spec = components["CacheSpec"]
    models = [(info.Params, "validation") for info in STRATEGIES.values() if info.Params is not CacheParams]
    _, definitions = models_json_schema(models, ref_template=REF_TEMPLATE)
    components.update(definitions["$defs"])
    mapping = {}
    for name, info in STRATEGIES.items():
        variant = f"Cache{name.capitalize()}"
        params = (
            {
                "$ref": f"#/components/schemas/{info.Params.__name__}",
                "description": f"{name}'s parameters, each optional: absent ones take the default shown.",
            }
            if info.Params is not CacheParams
            else {"type": "object", "additionalProperties": False, "description": "No parameters.", "examples": [{}]}
        )
        components[variant] = {
            "title": variant,
            "description": info.summary,
            "type": "object",
            "properties": {
                "strategy": {"type": "string", "const": name, "description": "The strategy.", "examples": [name]},
                "params": params,
                "profile": spec["properties"]["profile"],
            },
            "required": ["strategy"],
            "additionalProperties": False,
        }
        mapping[name] = f"#/components/schemas/{variant}"
    _, target = models_json_schema([(Target, "validation")], ref_template="#/components/schemas/{model}")
    components.update(target["$defs"])
    components["CacheAuto"] = {
        "title": "CacheAuto",
        "description": "A target instead of a setting: the service picks the fastest setting of the model's measured "
        "frontier that meets it, and says so in the job's `expected.auto` (no cache, with the reason, where no "
        "frontier covers the job).",
        "type": "object",
        "properties": {
            "strategy": {"type": "string", "const": AUTO, "description": "auto.", "examples": [AUTO]},
            "target": {
                "$ref": "#/components/schemas/Target",
                "description": "One of: a tier, min_psnr and/or min_ssim, deadline_seconds.",
            },
        },
        "required": ["strategy", "target"],
        "additionalProperties": False,
    }
    mapping[AUTO] = "#/components/schemas/CacheAuto"
    components["CacheSpec"] = {
        "title": "CacheSpec",
        "description": "The timestep-cache strategy, its parameters (each strategy's own, every one optional "
        "with the default shown) and the calibration profile. Without `cache`, the strategy is `none`.",
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "strategy", "mapping": mapping},
    }


def _add_webhooks(app: FastAPI) -> None:
    for event, description in WEBHOOK_EVENTS.items():

        def receive(
            body: WebhookEvent,
            webhook_id: Annotated[str, Header(description="The message id, `msg_...`; the same on every retry.")],
            webhook_timestamp: Annotated[int, Header(description="Unix seconds when this attempt was signed.")],
            webhook_signature: Annotated[
                str,
                Header(
                    description="`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, space-separated; two while a "
                    "rotated secret's grace lasts."
                ),
            ],
        ) -> None:
            """Answer 2xx once stored; the body is the job as `GET /jobs/{id}` showed it when the event happened."""

        app.webhooks.add_api_route(
            event,
            receive,
            methods=["POST"],
            summary=f"{event}: {description}",
            description=WEBHOOK_DESCRIPTION,
            operation_id=f"webhook-{event.replace('.', '-')}",
            responses={200: {"description": "Delivered: any 2xx."}, 410: {"description": "Stop sending events."}},
        )


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` the complete document."""
    _add_webhooks(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _complete(app, FastAPI.openapi(app))
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

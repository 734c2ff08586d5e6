"""The OpenAPI document as the API behaves: the bearer scheme on the routes that need a key, every error
status a route can answer with the one error shape, readable operation ids and summaries, the headers
routes read and set, the webhook requests the service sends (OpenAPI 3.1 ``webhooks``), and the request's
``cache`` as one variant per strategy with its own parameter schema and defaults.

Error statuses come from what a route depends on (a key: 401; an admin key: 403; the database: 503; any
parameter or body: 422; anything: 500); a route declares the others it answers (404, 409, ...) itself.

Examples: every schema property carries its own (``Field(examples=...)``); a property that holds another
component gets one composed from that component's properties, and so does every response, so that one example
job reads the same everywhere. Error responses get the message the code answers with for that status."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Header
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from pydantic.json_schema import models_json_schema

from api.deps import ADMIN_ONLY, NO_KEY, admin_key, current_key, get_session
from api.errors import (
    DATABASE_DOWN,
    OPENAI_FIELDS,
    OPENAI_PREFIX,
    FieldError,
    error_response,
    openai_error_response,
    openai_status,
)
from api.limits import rate_limit, room_for_a_job
from core.contract import examples
from core.contract.strategies import STRATEGIES, CacheParams
from core.webhooks.events import WebhookEvent

BEARER = "bearerAuth"
ERROR_REF = "#/components/schemas/ErrorResponse"
OPENAI_ERROR_REF = "#/components/schemas/OpenAIErrorResponse"

# endpoint (module.function) -> (operationId, summary). A route missing here gets ``<tag>-<function>``, and
# tests/test_openapi.py fails until it is added.
OPERATIONS: dict[str, tuple[str, str]] = {
    "api.routes.jobs.submit": ("jobs-create", "Submit a generation job"),
    "api.routes.jobs.list_jobs": ("jobs-list", "List jobs, newest first"),
    "api.routes.jobs.get_job": ("jobs-get", "Get a job"),
    "api.routes.jobs.cancel": ("jobs-cancel", "Cancel a job"),
    "api.routes.jobs.video": ("jobs-video", "Download a job's MP4"),
    "api.routes.deliveries.list_deliveries": ("deliveries-list", "List a job's webhook deliveries"),
    "api.routes.deliveries.resend_delivery": ("deliveries-resend", "Resend a webhook delivery (admin)"),
    "api.routes.deliveries.rotate_secret": ("keys-rotate-webhook-secret", "Rotate the webhook signing secret"),
    "api.routes.events.job_events": ("jobs-events", "Follow a job's progress (server-sent events)"),
    "api.routes.openai_videos.create": ("openai-videos-create", "Create a video (OpenAI videos API)"),
    "api.routes.openai_videos.list_videos": ("openai-videos-list", "List videos (OpenAI videos API)"),
    "api.routes.openai_videos.retrieve": ("openai-videos-retrieve", "Get a video (OpenAI videos API)"),
    "api.routes.openai_videos.delete": ("openai-videos-delete", "Cancel a video's job (OpenAI videos API)"),
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
    room_for_a_job: {429: "This API key has as many unfinished jobs as it may; retry once some finish."},
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
    ("openai-videos-content", "307"): {"Location": VIDEO_LOCATION},
}
# Each request parameter, by its name in any route or webhook: what the route's code does not describe, and
# an example.
PARAMETERS: dict[str, dict[str, Any]] = {
    "idempotency-key": {
        "description": "Makes the submit safe to retry: the same key with the same body answers with the job "
        "created the first time (and `Idempotent-Replayed: true`); with a different body, 409. Scoped to the API "
        "key.",
        "example": "9e1c07f2-5d3b-4b8e-a6f4-0c2d8e7b1a35",
    },
    "job_id": {"description": "The job's id, as `POST /jobs` answered it.", "example": examples.JOB_ID},
    "video_id": {"description": "The video's id: its skipstep job's id.", "example": examples.JOB_ID},
    "delivery_id": {
        "description": "The delivery's id, from `GET /jobs/{job_id}/deliveries`.",
        "example": examples.DELIVERY_ID,
    },
    "status": {"description": "Only jobs in this status.", "example": "succeeded"},
    "strategy": {"description": "Only jobs run with this cache strategy.", "example": "magcache"},
    "cursor": {
        "description": "The previous page's `next_cursor`; absent: the first page.",
        "example": "MjAyNS0wNi0wMVQxMjowMDowMCswMDowMHwzZjZjMWEyZS04YjRkLTRjMWUtOWE1Ny0yZDBlNmYxYjljODQ=",
    },
    "limit": {"description": "How many per page.", "example": 20},
    "after": {"description": "The previous page's `last_id`; absent: the first page.", "example": examples.JOB_ID},
    "order": {"description": "`desc`, newest first: the only order.", "example": "desc"},
    "variant": {"description": "`video`, the MP4: the only variant made.", "example": "video"},
    "last-event-id": {
        "description": "The id of the last event received (an EventSource sends it when it reconnects): the "
        "stream resumes after it.",
        "example": "4",
    },
    "grace_hours": {"example": 24},
    "webhook-id": {"example": examples.WEBHOOK_ID},
    "webhook-timestamp": {"example": 1748779278},
    "webhook-signature": {"example": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="},
}

# What a composed example of a component sets apart from its properties' first examples, so that it is an
# object that can happen (the example job has succeeded, so it has no queue position and no error), or where
# its properties' examples are not its own (the example Bounds are a width's).
STATES: dict[str, dict[str, Any]] = {
    "LimitsView": {
        "num_frames": {"min": 1, "max": 257, "rule": "4k+1"},
        "num_inference_steps": {"min": 2, "max": 200, "rule": None},
    },
    "JobView": {"queue_position": None, "status_detail": None, "estimated_start_at": None, "error": None},
    "Video": {"error": None},
    "AttemptView": {"error": None, "next_attempt_at": None},
    "DeliveryView": {"next_attempt_at": None, "resend_of": None},
    "WorkerStatus": {"stopped_at": None, "stop_reason": None},
}
QUEUED = {
    "status": "queued",
    "started_at": None,
    "finished_at": None,
    "queue_position": 1,
    "estimated_start_at": "2025-06-01T12:00:05Z",
    "progress": None,
    "result": None,
    "metrics": None,
    "worker": None,
    "links": {
        "self": examples.JOB_URL,
        "cancel": f"{examples.JOB_URL}/cancel",
        "video": None,
        "deliveries": f"{examples.JOB_URL}/deliveries",
    },
}
# And what a response's example sets apart from its schema's composed example, by (operationId, status).
RESPONSE_STATES: dict[tuple[str, str], dict[str, Any]] = {
    ("jobs-create", "202"): QUEUED,
    ("jobs-cancel", "202"): QUEUED
    | {
        "status": "canceled",
        "finished_at": "2025-06-01T12:00:02Z",
        "cancel_requested": True,
        "queue_position": None,
        "estimated_start_at": None,
    },
    ("openai-videos-create", "200"): {"status": "queued", "completed_at": None, "progress": 0},
}
# The message each error status answers with, where every route says the same; the others by (operationId,
# status), and the OpenAI routes' 404 names a video.
ERROR_MESSAGES: dict[int, str] = {
    401: NO_KEY,
    403: ADMIN_ONLY,
    404: f"job {examples.JOB_ID} not found",
    413: "the request body must be at most 65536 bytes",
    429: "rate limit: at most 20 requests per second (bursts of 200) for this API key; retry in 1 s",
    500: "an unexpected error occurred; quote request id 4f1d0c2ab8e94c7f9a3b6e5d2c1f0a9b when reporting it",
    503: DATABASE_DOWN,
}
OPERATION_ERRORS: dict[tuple[str, int], str] = {
    ("jobs-create", 409): f"Idempotency-Key was already used for job {examples.JOB_ID} with a different request body",
    ("jobs-cancel", 409): f"job {examples.JOB_ID} has already finished (succeeded)",
    ("jobs-video", 404): f"job {examples.JOB_ID} has no video (status running)",
    ("jobs-events", 429): "this API key already holds 8 open event streams",
    ("deliveries-resend", 404): f"delivery {examples.DELIVERY_ID} of job {examples.JOB_ID} not found",
    ("deliveries-resend", 409): f"delivery {examples.DELIVERY_ID} is still pending",
}
OPENAI_NOT_FOUND = f"video {examples.JOB_ID} not found"
# The field a 422 (OpenAI: 400) names, where it is not the route's first id or bounded parameter.
INVALID_FIELDS: dict[str, tuple[str, str]] = {
    "jobs-create": ("num_frames", "must be 4k+1 (e.g. 9, 17, 33) for wan models"),
    "openai-videos-create": ("size", "must be WIDTHxHEIGHT, e.g. 832x480"),
}
NOT_A_UUID = "Input should be a valid UUID, invalid group count: expected 5, found 2"

WEBHOOK_EVENTS = {
    "job.started": "A worker started the job (sent only when listed in `webhook_events`).",
    "job.succeeded": "The job finished with a video.",
    "job.failed": "The job failed; `data.error` says why (`generation_failed`, `storage_failed`, `timeout`, ...).",
    "job.canceled": "The job was canceled.",
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
        }
    }
    for route in api_routes(app):
        for method in route.methods or ():
            operation = schema["paths"][route.path_format][method.lower()]
            named = OPERATIONS.get(endpoint_name(route))
            if named is not None:
                operation["summary"] = named[1]
            if needs_key(route):
                operation["security"] = [{BEARER: []}]
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
    # FastAPI's own validation error shape is never answered: every 422 is an ErrorResponse.
    for unused in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(unused, None)
    for path in schema.get("webhooks", {}).values():
        for operation in path.values():
            # The receiver answers a webhook: not with FastAPI's validation error, and its body is not read.
            operation["responses"].pop("422", None)
            operation["responses"]["200"].pop("content", None)
    _cache_variants(schema["components"]["schemas"])
    _add_examples(schema)


def _add_examples(schema: dict[str, Any]) -> None:
    """Examples where the code gives none: a property holding a component, a parameter, a response."""
    components = schema["components"]["schemas"]
    for name, component in components.items():
        example = composed(name, components) if "properties" in component else {}
        for field, prop in (component.get("properties") or {}).items():
            if "examples" not in prop and _refers(prop):
                prop["examples"] = [example[field]]
    for operation in _operations(schema):
        for parameter in operation.get("parameters", []):
            parameter.update(PARAMETERS.get(parameter["name"].lower(), {}))
        for code, response in operation.get("responses", {}).items():
            for content in response.get("content", {}).values():
                if "schema" in content and "example" not in content and "examples" not in content:
                    content["example"] = response_example(operation, code, response, content["schema"], components)


def _operations(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Every operation of the document, the webhook requests' included."""
    return [
        operation
        for group in ("paths", "webhooks")
        for path in schema.get(group, {}).values()
        for operation in path.values()
    ]


def _refers(schema: Any) -> bool:
    """Whether a schema holds a component (a $ref, however deep)."""
    if isinstance(schema, dict):
        return "$ref" in schema or any(_refers(value) for value in schema.values())
    if isinstance(schema, list):
        return any(_refers(value) for value in schema)
    return False


def example_of(schema: dict[str, Any], components: dict[str, Any]) -> Any:
    """An example of a schema: its own first example, else one composed from its parts (a component from its
    properties' examples and its ``STATES``, a union from its first variant that is not null, an array from
    one item). None where a part has no example, which the document's test reports."""
    if "example" in schema:
        return schema["example"]
    if schema.get("examples"):
        return schema["examples"][0]
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return (
            composed(name, components) if "properties" in components[name] else example_of(components[name], components)
        )
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    variants = [variant for variant in schema.get("anyOf", schema.get("oneOf", [])) if variant.get("type") != "null"]
    if variants:
        return example_of(variants[0], components)
    if schema.get("type") == "array":
        return [example_of(schema.get("items", {}), components)]
    if schema.get("type") == "object":
        return {}
    return schema.get("default")


def composed(name: str, components: dict[str, Any]) -> dict[str, Any]:
    """A component's example: its properties' examples, and its ``STATES``."""
    properties = components[name]["properties"]
    return {field: example_of(prop, components) for field, prop in properties.items()} | STATES.get(name, {})


def response_example(
    operation: dict[str, Any], code: str, response: dict[str, Any], schema: dict[str, Any], components: dict[str, Any]
) -> Any:
    """A response's example: an error's with the message the code answers with, else its schema's."""
    if schema.get("$ref") in (ERROR_REF, OPENAI_ERROR_REF):
        return error_example(operation, int(code), response["description"], openai=schema["$ref"] == OPENAI_ERROR_REF)
    example = example_of(schema, components)
    changes = RESPONSE_STATES.get((operation["operationId"], code))
    return example | changes if changes else example


def error_example(operation: dict[str, Any], code: int, description: str, openai: bool) -> dict[str, Any]:
    """The body the app answers an error with, as api.errors makes it; the message is the response's
    description where neither table has one."""
    fields = None
    if code in (400, 422):
        field, rule = invalid_field(operation)
        message, fields = f"{field}: {rule}", [FieldError(field=field, rule=rule)]
    elif openai and code == 404:
        message = OPENAI_NOT_FOUND
    else:
        message = OPERATION_ERRORS.get((operation["operationId"], code)) or ERROR_MESSAGES.get(code, description)
    if openai:
        param = OPENAI_FIELDS.get(fields[0].field, fields[0].field) if fields else None
        answer = openai_error_response(code, message, param)
    else:
        answer = error_response(code, message, fields)
    return json.loads(answer.body)


def invalid_field(operation: dict[str, Any]) -> tuple[str, str]:
    """The field and rule of a plausible 422: the route's own (``INVALID_FIELDS``), else its first id or bounded
    parameter's."""
    named = INVALID_FIELDS.get(operation["operationId"])
    if named is not None:
        return named
    for parameter in operation.get("parameters", []):
        for schema in parameter["schema"].get("anyOf", [parameter["schema"]]):
            if schema.get("format") == "uuid":
                return parameter["name"], NOT_A_UUID
            if "maximum" in schema:
                return parameter["name"], f"Input should be less than or equal to {schema['maximum']}"
    raise ValueError(f"add {operation['operationId']} to api.openapi.INVALID_FIELDS")


def _cache_variants(components: dict[str, Any]) -> None:
    """``CacheSpec`` as the discriminated union it is: validation reads ``params`` with the model of the
    strategy named (core.contract.strategies), so each strategy gets a variant whose ``params`` is that model,
    with its fields, rules and defaults."""
    spec = components["CacheSpec"]
    models = [(info.Params, "validation") for info in STRATEGIES.values() if info.Params is not CacheParams]
    _, definitions = models_json_schema(models, ref_template="#/components/schemas/{model}")
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

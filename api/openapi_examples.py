"""Examples in the OpenAPI document where the code gives none, and each request parameter's description.

Every schema property carries its own (``Field(examples=...)``); a property that holds another component gets
one composed from that component's properties, and so does every response, so that one example job reads the
same everywhere. Error responses get the body the app answers with for that status (api.errors)."""

from __future__ import annotations

import json
from typing import Any

from api.deps import ADMIN_ONLY, NO_KEY
from api.errors import DATABASE_DOWN, OPENAI_FIELDS, FieldError, error_response, openai_error_response
from core.contract import examples

ERROR_REF = "#/components/schemas/ErrorResponse"
OPENAI_ERROR_REF = "#/components/schemas/OpenAIErrorResponse"

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
    "wait": {"example": 30},
    "if-none-match": {
        "description": "The `ETag` of the job as last received: an unchanged job answers 304 with no body.",
        "example": '"5d41402abc4b2a76"',
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


def add(schema: dict[str, Any]) -> None:
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
    raise ValueError(f"add {operation['operationId']} to api.openapi_examples.INVALID_FIELDS")

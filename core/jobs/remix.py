"""A remix: a new job from a succeeded one, with the fields given replaced and every other one kept (the seed
and shape included), linked to its source (``jobs.remix_of``). With ``compare`` the worker measures its fidelity
against the source's frames, made again from the source's request (``worker.runner``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from core.contract.request import JobRequest
from core.contract.shapes import SIZE_FIELDS
from core.db import Job, JobStatus
from core.errors import Conflict, InvalidRequest
from core.jobs.mapping import request_of

# The model stays the source's: another model's frames are another video, not a remix.
KEPT = ("model",)


class RemixBase(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"prompt": "the same fox, in autumn leaves"},
                {"cache": {"strategy": "magcache", "params": {"threshold": 0.12}}, "compare": True},
            ]
        },
    )


# POST /jobs/{id}/remix's body: any of a job's fields, each replacing the source's; absent ones are kept.
RemixRequest = create_model(  # type: ignore[call-overload]
    "RemixRequest",
    __base__=RemixBase,
    __doc__="The fields to replace in the source job's request; every field left out keeps the source's value.",
    **{
        name: (
            field.annotation | None,
            Field(
                default=None,
                description=f"Replaces the source's. {field.description or ''}".strip(),
                examples=field.examples,
            ),
        )
        for name, field in JobRequest.model_fields.items()
        if name not in KEPT
    },
)


def remix_request(source: Job, changes: dict[str, Any]) -> JobRequest:
    """The source's request with ``changes`` in place of its fields, validated as a new job's request
    (InvalidRequest names each field at fault); Conflict if the source has no video to remix."""
    if source.status != JobStatus.succeeded:
        raise Conflict(f"job {source.id} has not succeeded ({source.status.value}): only a video can be remixed")
    kept = request_of(source).model_dump(mode="json")
    merged = kept | {name: value for name, value in changes.items() if value is not None}
    if merged["compare"]:
        reshaped = [name for name in SIZE_FIELDS if name != "num_inference_steps" and merged[name] != kept[name]]
        if reshaped:
            raise InvalidRequest("compare", f"compares frames with the source's: {', '.join(reshaped)} must stay")
    try:
        return JobRequest.model_validate(merged)
    except ValidationError as exc:
        problems = [
            (".".join(str(part) for part in error["loc"]) or "body", str(error["msg"]).removeprefix("Value error, "))
            for error in exc.errors()
        ]
        raise InvalidRequest(*problems[0], *problems[1:]) from None

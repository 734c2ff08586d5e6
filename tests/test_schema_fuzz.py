"""schemathesis against the served OpenAPI schema of the real service, with a valid API key and a bounded
number of examples per operation: no 5xx, and every response fits the schema it is documented with."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance
from service import Service
from sqlalchemy import select

from core.db import Job, JobStatus, session_scope
from core.keys import create_key

EXAMPLES = 25


@pytest.fixture(scope="module")
def fuzz_key(service: Service) -> Iterator[str]:
    """A key whose jobs stay tiny and unthrottled; its jobs are canceled afterwards."""
    with session_scope(service.settings.database) as session:
        key, raw = create_key(session, f"fuzz-{uuid.uuid4().hex[:6]}")
        key.max_pixels, key.max_frames, key.max_steps, key.rate_per_second = 64 * 64, 9, 4, 0
        key_id = key.id
    yield raw
    with session_scope(service.settings.database) as session:
        unfinished = session.scalars(
            select(Job.id).where(Job.owner_id == key_id, Job.status.in_((JobStatus.queued, JobStatus.running)))
        ).all()
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {raw}"}, timeout=30) as client:
        for job_id in unfinished:
            client.post(f"/jobs/{job_id}/cancel")


def test_no_server_error_and_responses_fit_the_schema(service: Service, fuzz_key: str) -> None:
    # Driven by hand rather than by schemathesis' pytest plugin, which does not run under this pytest.
    api = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    failures: dict[str, str] = {}
    called: set[str] = set()
    operations = [result.ok() for result in api.get_all_operations()]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def probe(case: schemathesis.Case) -> None:
            called.add(case.operation.label)
            case.call_and_validate(
                headers={"Authorization": f"Bearer {fuzz_key}"},
                checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
            )

        try:
            probe()
        except Exception as exc:
            failures[operation.label] = str(exc)[:2000]
    assert failures == {}
    assert called == {operation.label for operation in operations} and len(called) >= 10

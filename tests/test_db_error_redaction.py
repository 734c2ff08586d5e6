"""A failed statement leaves no bound value in the logs: on the real API (uvicorn, PostgreSQL, Redis), a submit
whose prompt the database refuses fails with a 500, and neither PostgreSQL's message (the value it could not
read, DETAIL's failing row, CONTEXT's fragment of the parameter) nor anything else in the API's log carries any
part of that prompt. The database's schema gets two CHECK constraints here to refuse a prompt, as a real fault
would: one that reads it as JSON (CONTEXT quotes the JSON), one that rejects the row (DETAIL shows it)."""

from __future__ import annotations

import psycopg
import pytest
from service import SMALL_JOB, fresh_database, launch

from core.db.redact import redact
from core.settings import Settings

SECRET = "Zq7xLeakProbe"


def fragments(value: str, size: int = 5) -> set[str]:
    return {value[i : i + size] for i in range(len(value) - size + 1)}


def test_a_failed_statement_leaves_no_bound_value_in_the_log(
    settings: Settings, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    logs = tmp_path_factory.mktemp("redaction-logs")
    with fresh_database() as database_url:
        service = launch(settings, database_url, redis_url, logs)
        try:
            with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as database:
                as_json_check = "CHECK (prompt NOT LIKE '{%' OR prompt::json IS NOT NULL)"
                database.execute(f"ALTER TABLE jobs ADD CONSTRAINT probe_json {as_json_check}")
                database.execute("ALTER TABLE jobs ADD CONSTRAINT probe_row CHECK (prompt NOT LIKE 'reject %')")
            with service.client("alice") as client:
                as_json = client.post("/jobs", json={**SMALL_JOB, "prompt": f'{{"{SECRET}": Infinity}}'})
                as_row = client.post("/jobs", json={**SMALL_JOB, "prompt": f"reject {SECRET}"})
        finally:
            service.stop()
    log = (logs / "api.log").read_text()
    assert as_json.status_code == 500 and as_row.status_code == 500, (as_json.text, as_row.text)
    # Both failures were logged, with what went wrong...
    assert "InvalidTextRepresentation) invalid input syntax for type json (SQLSTATE 22P02)" in log
    assert 'CheckViolation) new row for relation "jobs" violates check constraint "probe_row" (SQLSTATE 23514)' in log
    # ...and nothing of the value.
    assert [part for part in fragments(SECRET) if part in log + as_json.text + as_row.text] == []


def test_quoted_values_and_bytes_are_redacted_and_names_kept() -> None:
    assert (
        redact('invalid input syntax for type integer: "12ab"\nCONTEXT:  x')
        == 'invalid input syntax for type integer: "…"'
    )
    assert (
        redact('value "99999999999" is out of range for type integer') == 'value "…" is out of range for type integer'
    )
    assert (
        redact('invalid byte sequence for encoding "UTF8": 0xc3 0x28')
        == 'invalid byte sequence for encoding "UTF8": 0x…'
    )
    named = 'null value in column "prompt" of relation "jobs" violates not-null constraint'
    assert redact(named) == named

"""The Alembic migrations build the whole schema from an empty database, on SQLite and PostgreSQL,
and describe exactly the tables the models declare."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from core.db import Base, engine_for
from core.db.migrate import alembic_config, upgrade


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return request.getfixturevalue("postgres_url")


def test_upgrade_from_empty_matches_the_models(database: str) -> None:
    upgrade(database)
    engine = engine_for(database)
    assert {"api_keys", "jobs", "workers"} <= set(inspect(engine).get_table_names())
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_downgrade_to_empty_and_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    assert set(inspect(engine_for(url)).get_table_names()) == {"alembic_version"}
    upgrade(url)
    assert "jobs" in inspect(engine_for(url)).get_table_names()

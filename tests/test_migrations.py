"""The Alembic migrations build exactly the schema the code's tables describe, on SQLite and PostgreSQL,
and running them twice is harmless. If this fails, an upgraded server starts against a schema that
does not match its code."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import fleet_server.tables  # noqa: F401
from fleet_server.db import make_engine, migrate
from tests.pg import PostgresServer


def _diff(url: str) -> list:
    engine = make_engine(url)
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), SQLModel.metadata))


def test_sqlite_schema_matches_models(tmp_path: Path) -> None:
    assert _diff(f"sqlite:///{tmp_path / 'm.db'}") == []


@pytest.mark.postgres
def test_postgres_schema_matches_models(postgres: PostgresServer) -> None:
    assert _diff(postgres.create_database(f"edgeloop_mig_{uuid.uuid4().hex[:8]}")) == []

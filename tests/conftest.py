"""Shared fixtures: one real `picscale serve` per test module that asks for it, on the
embedded SQLite database, on a real PostgreSQL server, and with its jobs on a real
RabbitMQ."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pg import PostgresServer, start_postgres
from rabbitmq_server import RabbitServer, start_rabbitmq
from support import Server, start_server


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    pg = start_postgres()
    yield pg
    pg.close()


@pytest.fixture(scope="module")
def rabbitmq() -> Iterator[RabbitServer]:
    broker = start_rabbitmq()
    yield broker
    broker.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "rabbitmq"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    settings: dict[str, object] = {
        "login_failures_per_account": 3,
        "login_failures_per_address": 50,
    }
    if request.param == "postgresql":
        pg: PostgresServer = request.getfixturevalue("postgres")
        settings["database_url"] = pg.url
    if request.param == "rabbitmq":  # SQLite, with the jobs on a real broker
        broker: RabbitServer = request.getfixturevalue("rabbitmq")
        settings["queue_url"] = broker.url
    srv = start_server(tmp_path_factory.mktemp("picscale"), job_workers=1, **settings)
    yield srv
    srv.close()

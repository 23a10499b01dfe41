"""Shared fixtures: one real `picscale serve` per backend (on the embedded SQLite database,
on two PostgreSQL databases as two shard clusters, and on two SQLite files as two shard
clusters with its jobs on a real RabbitMQ), shared by the test modules that ask for it.

PostgreSQL and RabbitMQ start once per run (per xdist worker); each user gets a database
or a virtual host of its own on them, so nothing a test leaves behind is seen by another.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.pg import PostgresDatabase, PostgresServer, start_postgres
from tests.support.picscale_server import Server, start_server
from tests.support.rabbitmq_server import PRESET_VHOSTS, RabbitServer, RabbitVhost, start_rabbitmq


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    pg = start_postgres()
    yield pg
    pg.close()


@pytest.fixture(scope="module")
def postgres(postgres_server: PostgresServer) -> PostgresDatabase:
    """An empty database of the module's own."""
    return postgres_server.new_database()


@pytest.fixture(scope="session")
def rabbitmq_node() -> Iterator[RabbitServer]:
    broker = start_rabbitmq(vhosts=PRESET_VHOSTS)
    yield broker
    broker.close()


@pytest.fixture
def rabbitmq(rabbitmq_node: RabbitServer) -> RabbitVhost:
    """A virtual host of the test's own: no queue, exchange or message of another test.
    (A test that restarts the broker starts a node of its own: see test_queue.)"""
    return rabbitmq_node.vhost()


@pytest.fixture(scope="session", params=["sqlite", "postgresql", "rabbitmq"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Non-destructive tests share it across modules: each works as users of its own."""
    settings: dict[str, object] = {
        "login_failures_per_account": 3,
        "login_failures_per_address": 50,
    }
    data_dir = tmp_path_factory.mktemp("picscale")
    if request.param == "postgresql":  # sharded: two clusters, users spread over both
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        settings["database_url"] = f"c1={pg.new_database().url};c2={pg.new_database().url}"
    if request.param == "rabbitmq":  # two SQLite files as clusters, jobs on a real broker
        node: RabbitServer = request.getfixturevalue("rabbitmq_node")
        settings["queue_url"] = node.vhost().url
        settings["database_url"] = (
            f"c1=sqlite:///{data_dir / 'c1.db'};c2=sqlite:///{data_dir / 'c2.db'}"
        )
    srv = start_server(data_dir, job_workers=1, **settings)
    yield srv
    srv.close()


# modules whose tests time failovers and scaling under load: the Makefile runs them in a
# pass of their own, after the parallel one, with nothing else competing for the CPUs
SERIAL_MODULES = ("tests/integration/test_lab.py",)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "serial: run alone, not beside other tests (the Makefile's second pass)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SERIAL_MODULES):
            item.add_marker(pytest.mark.serial)

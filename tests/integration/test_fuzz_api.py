"""Schemathesis: inputs generated from /schema never make the server answer 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.support.api import new_user, upload, wait_ready
from tests.support.images import image_bytes
from tests.support.picscale_server import Server, start_server


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("fuzz"), job_workers=1)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def token(fuzz_server: Server) -> str:
    client, _ = new_user(fuzz_server, "fuzz")
    wait_ready(client, upload(client, image_bytes(256, 256))["id"])
    return client.headers["Authorization"]


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Server) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/schema/openapi.json")
    # logging the fuzzing client out, or deleting its account (tested in test_edge),
    # would only shorten the run
    return schema.exclude(path="/api/v1/sessions", method="DELETE").exclude(
        path="/api/v1/me", method="DELETE"
    )


def test_no_server_errors(
    api_schema: schemathesis.BaseSchema, token: str, fuzz_server: Server
) -> None:
    """Every operation, 25 generated requests each (reproducible: derandomized)."""
    failures: list[str] = []
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"Authorization": token}, checks=[not_a_server_error])

        try:
            run()
        except Exception as exc:
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:2000])
    assert operations >= 15
    assert not failures, "\n\n".join(failures)
    metrics = fuzz_server.client().get("/metrics").text
    sent = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("picscale_http_requests_total{")
    )
    assert sent > 10 * operations  # the fuzzer really sent its requests


def test_server_still_ready(fuzz_server: Server) -> None:
    assert fuzz_server.client().get("/readyz").status_code == 200
    assert Path(fuzz_server.data_dir / "picscale.db").exists()

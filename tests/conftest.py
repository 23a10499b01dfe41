"""Shared fixtures: one real `picscale serve` per test module that asks for it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import Server, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("picscale"),
        job_workers=1,
        login_failures_per_account=3,
        login_failures_per_address=50,
    )
    yield srv
    srv.close()

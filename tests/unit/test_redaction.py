"""Credentials in the forms they take in a log line (locals' reprs, errors, fields) are
replaced; what is not a credential is left alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from picscale.observability.redaction import REDACTED, redact_secrets

TOKEN = "Zq3xY8kLmN0pQrStUvWxYz1234567890abcdefGHIJK"


def _line(**event: object) -> str:
    return json.dumps(redact_secrets(None, "error", dict(event)))


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"(b'authorization', b'Bearer {TOKEN}')", TOKEN),
        (f"Authorization: Bearer {TOKEN}", TOKEN),
        ("(b'cookie', b'picscale_session=s3ss10nvalue; picscale_csrf=csrfvalue1')", "s3ss10n"),
        ("(b'cookie', b'picscale_session=s3ss10nvalue; picscale_csrf=csrfvalue1')", "csrfval"),
        ("{'username': 'bob', 'password': 'hunter2 with spaces'}", "hunter2"),
        ('b\'{"username":"bob","password":"hunter2\\\\"q"}\'', "hunter2"),
        ("b'username=bob&password=Pa55word%21&csrf_token=qqqqqqqq'", "Pa55word"),
        ("b'username=bob&password=Pa55word%21&csrf_token=qqqqqqqq'", "qqqqqqqq"),
        ("FormMultiDict([('username', 'bob'), ('password', 'sw0rdfish!!')])", "sw0rdfish"),
        (f"SessionRecord(token='{TOKEN}', user_id=3)", TOKEN[:10]),
        ("connect to postgresql://app:pg-pass-99@db:5432/picscale failed", "pg-pass-99"),
        ("redis://:redispass1@127.0.0.1:6379/0", "redispass1"),
        ("s3://pics?access_key=AKIA1&secret_key=very-secret-key", "very-secret"),
        (f"Key (token)=({TOKEN}) already exists.", TOKEN[:10]),
    ],
)
def test_credentials_in_text_are_replaced(text: str, secret: str) -> None:
    line = _line(event="unhandled_error", error=text)
    assert secret not in line, line
    assert REDACTED in line


def test_values_named_as_credentials_and_their_copies_elsewhere() -> None:
    """A token held by a variable named ``token`` is also taken out of another frame's
    repr where nothing names it, and so is a piece of it (a repr cut short)."""
    frames = [
        {"name": "resolve", "locals": {"token": repr(TOKEN), "user_id": "42"}},
        {"name": "handler", "locals": {"value": repr(TOKEN), "cut": f"'{TOKEN[:20]}'+23"}},
    ]
    line = _line(event="unhandled_error", exception=[{"frames": frames}], password=b"pw")
    assert TOKEN[:8] not in line
    assert '"user_id": "42"' in line  # the rest is kept


def test_what_is_not_a_credential_is_kept() -> None:
    event = {
        "event": "request",
        "method": "POST",
        "path": "/api/v1/sessions",
        "status": 201,
        "ms": 3.5,
        "cache": "redis://127.0.0.1:6379/0",
        "error": "SessionStoreUnavailable('the session store is down')",
    }
    assert redact_secrets(None, "info", dict(event)) == event


FAILING = f"""
import logging
import structlog
from picscale.observability.logging import configure_logging
configure_logging()

def fails(password):
    token = {TOKEN!r}
    raise ValueError(f"cannot log in with {{token}}")

for log in (structlog.get_logger().exception, logging.getLogger("lib").exception):
    try:
        fails("hunter2-hunter2")
    except ValueError:
        log("failed")
"""


def test_every_logger_goes_through_it() -> None:
    """structlog's and the standard library's (the libraries') lines alike."""
    out = subprocess.run(
        [sys.executable, "-c", FAILING], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2 and all(line["exception"][0]["frames"] for line in lines)
    assert TOKEN[:8] not in out and "hunter2" not in out

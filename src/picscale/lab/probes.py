"""How the lab asks a server on loopback how it is: a few bytes on a port, an HTTP GET."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any


def ask(port: int, message: bytes) -> bytes:
    """Send ``message`` to a loopback port; the first bytes of the answer (b"" if none)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(message)
            return s.recv(4096)
    except OSError:
        return b""


def http_ok(url: str) -> bool:
    """``url`` answers a GET with 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310
        return str(response.read().decode())


def json_at(url: str) -> tuple[int, Any]:
    """The status and JSON body of a GET (0 and {} if nothing answered)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
            return int(response.status), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (urllib.error.URLError, OSError, ValueError):
        return 0, {}


def metric_sum(text: str, prefix: str) -> float:
    """The sum of the samples of Prometheus text whose line starts with ``prefix``."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )

"""Waiting for a condition by polling it, never by a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

POLL_INTERVAL = 0.05


def wait_until(
    condition: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
        time.sleep(interval)  # polling interval of a wait loop, not a fixed sleep
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or condition}: {last_error}"
    )


async def async_wait_until(
    condition: Callable[[], Awaitable[Any]], *, within: float = 30.0, what: str = ""
) -> Any:
    """``wait_until`` for coroutines: poll until truthy, fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(POLL_INTERVAL)
    raise AssertionError(f"timed out after {within}s waiting for {what or condition}")
